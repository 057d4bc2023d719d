"""What the jobs need to know about a data folder before loading it: classes, which backend reads it, and
the record a checkpoint keeps of it (absolute path and the manifest's SHA-256)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import torch

from .errors import UserError

SHOWN = 4  # class names (and differences) a message shows before it shortens


def dataset_info(data: str | Path) -> tuple[int, list[str]]:
    """(number of classes, class names) of a conversion's OUT folder or an ImageFolder tree."""
    data = Path(data)
    if (data / "classes.json").is_file():
        try:
            names = [c["name"] for c in json.loads((data / "classes.json").read_text(encoding="utf-8"))]
        except (ValueError, TypeError, KeyError) as e:  # bad JSON or not a list of {"name": ...}
            raise UserError(f"{data / 'classes.json'} is not the class list a conversion writes ({type(e).__name__}: "
                            f"{e}); run `fixres-fast convert ... OUT` again") from None
        if not all(isinstance(n, str) for n in names):
            raise UserError(f"{data / 'classes.json'} has class names that are not strings; run `fixres-fast convert` again")
        return len(names), names
    train = data / "train"
    if train.is_dir():
        names = sorted(p.name for p in train.iterdir() if p.is_dir())
        if names:
            return len(names), names
    raise UserError(f"{data} is neither a conversion's output (classes.json, manifest.json) nor an ImageFolder tree "
                    "(train/<class>/<image>); run `fixres-fast convert ... OUT` and pass OUT as --data")


def manifest_sha256(data: str | Path) -> str | None:
    """SHA-256 (hex) of a conversion's OUT/manifest.json; None for an ImageFolder tree (no manifest)."""
    manifest = Path(data) / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None


def data_record(data: str | Path) -> dict:
    """What a checkpoint records of the data set it was trained or adapted on."""
    return {"path": os.path.abspath(data), "manifest_sha256": manifest_sha256(data)}


def check_classes(classes: list[str] | None, num_classes: int, data: str | Path, what: str) -> None:
    """Refuse ``data`` unless its classes are ``classes`` (``what``'s, in label order; where ``classes`` is
    None, only their number is known)."""
    n, names = dataset_info(data)
    if classes is None and n == num_classes or classes == names:
        return
    if classes is None:
        raise UserError(f"{what} has {num_classes} classes, but {data} holds {n} ({_shortened(names)}); "
                        "pass the --data it was trained on")
    diffs = [i for i in range(max(len(classes), n)) if i >= len(classes) or i >= n or classes[i] != names[i]]
    shown = "; ".join(f"#{i} {_at(classes, i)} vs {_at(names, i)}" for i in diffs[:SHOWN])
    raise UserError(f"{what} was trained on {len(classes)} classes ({_shortened(classes)}), but {data} holds "
                    f"{n} ({_shortened(names)}); they differ at {len(diffs)} label(s): {shown}"
                    f"{' ...' if len(diffs) > SHOWN else ''}. Its predictions would name the wrong classes: pass "
                    "the --data it was trained on, or a checkpoint trained on these classes")


def _shortened(names: list[str]) -> str:
    if len(names) <= SHOWN:
        return ", ".join(names)
    return f"{', '.join(names[:SHOWN - 1])}, ..., {names[-1]}"


def _at(names: list[str], i: int) -> str:
    return repr(names[i]) if i < len(names) else "(none)"


def backend_for(backend: str, device: torch.device) -> str:
    """'auto': DALI on a GPU when installed, else FFCV when installed, else the torchvision reference."""
    if backend != "auto":
        return backend
    have = {name: importlib.util.find_spec(mod) is not None for name, mod in (("dali", "nvidia.dali"), ("ffcv", "ffcv"))}
    if device.type == "cuda" and have["dali"]:
        return "dali"
    return "ffcv" if have["ffcv"] else "torch"
