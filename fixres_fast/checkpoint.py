"""Checkpoints: a plain model ``state_dict`` that torchvision/timm load, plus FixRes metadata.

Like timm's pretrained configs (``input_size`` / ``test_input_size``, ``crop_pct``), a checkpoint
carries its train and test resolutions and pre-processing as data, so later commands use them by
default. Files are written atomically (temporary file, fsync, rename).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

from .errors import UserError

REQUIRED_META = ("arch", "num_classes", "train_res", "test_res", "preprocessing")


def git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if rev.returncode:
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save(path: str | Path, model: torch.nn.Module, meta: dict, **state) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    doc = {"model": unwrap(model).state_dict(), "meta": meta, **state}
    with open(tmp, "wb") as f:
        torch.save(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        doc = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for a damaged or foreign file
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    meta = doc.get("meta") if isinstance(doc, dict) else None
    missing = [k for k in REQUIRED_META if not meta or k not in meta]
    if not isinstance(doc, dict) or "model" not in doc or missing:
        raise UserError(f"{path} has no fixres-fast metadata (missing: {', '.join(missing) or 'model'}); "
                        "checkpoints written by `fixres-fast train` or `adapt` carry it")
    return doc
