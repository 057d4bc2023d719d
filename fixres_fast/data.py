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


def backend_for(backend: str, device: torch.device) -> str:
    """'auto': DALI on a GPU when installed, else FFCV when installed, else the torchvision reference."""
    if backend != "auto":
        return backend
    have = {name: importlib.util.find_spec(mod) is not None for name, mod in (("dali", "nvidia.dali"), ("ffcv", "ffcv"))}
    if device.type == "cuda" and have["dali"]:
        return "dali"
    return "ffcv" if have["ffcv"] else "torch"
