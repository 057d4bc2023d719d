"""What the jobs need to know about a data folder before loading it: classes, and which backend reads it."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from .errors import UserError


def dataset_info(data: str | Path) -> tuple[int, list[str]]:
    """(number of classes, class names) of a conversion's OUT folder or an ImageFolder tree."""
    data = Path(data)
    if (data / "classes.json").is_file():
        names = [c["name"] for c in json.loads((data / "classes.json").read_text())]
        return len(names), names
    train = data / "train"
    if train.is_dir():
        names = sorted(p.name for p in train.iterdir() if p.is_dir())
        if names:
            return len(names), names
    raise UserError(f"{data} is neither a conversion's output (classes.json, manifest.json) nor an ImageFolder tree "
                    "(train/<class>/<image>); run `fixres-fast convert ... OUT` and pass OUT as --data")


def readable_by(data: str | Path) -> set[str]:
    """The backends that can read ``data``: ffcv needs a .beton; dali JPEG records (RecordIO shards, a JPEG .beton)
    or image files; torch reads them all."""
    data = Path(data)
    if not (data / "manifest.json").is_file():
        return {"dali", "torch"}  # an ImageFolder tree: image files
    manifest = json.loads((data / "manifest.json").read_text())
    names = [f["name"] for s in manifest.get("splits", {}).values() for f in s.get("files", [])]
    beton, rec = any(n.endswith(".beton") for n in names), any(n.endswith(".rec") for n in names)
    raw = (manifest.get("options") or {}).get("write_mode") == "raw"
    return {"torch"} | ({"ffcv"} if beton else set()) | ({"dali"} if rec or (beton and not raw) else set())


def backend_for(backend: str, device: torch.device, data: str | Path) -> str:
    """'auto': of the backends that can read ``data`` (:func:`readable_by`), DALI on a GPU when installed, else FFCV
    when installed, else the torchvision reference."""
    if backend != "auto":
        return backend
    can = readable_by(data)
    have = {name: importlib.util.find_spec(mod) is not None for name, mod in (("dali", "nvidia.dali"), ("ffcv", "ffcv"))}
    if device.type == "cuda" and have["dali"] and "dali" in can:
        return "dali"
    return "ffcv" if have["ffcv"] and "ffcv" in can else "torch"
