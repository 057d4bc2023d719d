"""Checkpoints: a plain model ``state_dict`` that torchvision/timm load, plus FixRes metadata.

Like timm's pretrained configs (``input_size`` / ``test_input_size``, ``crop_pct``), a checkpoint
carries its train and test resolutions and pre-processing as data, so later commands use them by
default, and the data set it was trained or adapted on (absolute path and the manifest's SHA-256).
Files are written atomically (temporary file, fsync, rename).

A checkpoint holds plain types only (tensors, numbers, strings, lists, tuples, dicts, None) and is
read with ``torch.load(weights_only=True)``: a file whose unpickling would call other Python objects
(which can run any code) is refused before anything in it runs.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import warnings
from pathlib import Path

import torch

from .errors import UserError

REQUIRED_META = ("arch", "num_classes", "train_res", "test_res", "preprocessing")
PLAIN = (bool, int, float, str, type(None))  # with tensors, and lists, tuples and dicts of them


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


def plain(value, where: str = "checkpoint"):
    """``value`` as plain types that ``torch.load(weights_only=True)`` reads: numpy scalars become Python
    numbers, paths strings, dataclasses dicts; anything else that is not plain is a programming error."""
    if type(value) in PLAIN or isinstance(value, torch.Tensor):  # exact types: numpy's float64 is a float
        return value
    if isinstance(value, dict):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return (list if isinstance(value, list) else tuple)(plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value), where)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a numpy scalar
        return value.item()
    raise TypeError(f"{where} is a {type(value).__name__}; a checkpoint holds only plain types")


def save(path: str | Path, model: torch.nn.Module, meta: dict, **state) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    doc = {"model": unwrap(model).state_dict(), "meta": plain(meta, "meta"), **plain(state)}
    with open(tmp, "wb") as f:
        torch.save(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint at ``path``, read without running code from it, its metadata checked."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns (on stderr) before refusing a foreign pickle protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            doc = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged, foreign or hostile file
        raise UserError(_unreadable(path, e)) from None
    meta = doc.get("meta") if isinstance(doc, dict) else None
    missing = [k for k in REQUIRED_META if not isinstance(meta, dict) or k not in meta]
    if not isinstance(doc, dict) or "model" not in doc or missing:
        raise UserError(f"{path} has no fixres-fast metadata (missing: {', '.join(missing) or 'model'}); "
                        "checkpoints written by `fixres-fast train` or `adapt` carry it")
    problem = _invalid(doc)
    if problem:
        raise UserError(f"{path} has invalid fixres-fast metadata ({problem}); checkpoints written by "
                        "`fixres-fast train` or `adapt` carry valid metadata")
    return doc


def _unreadable(path: Path, e: Exception) -> str:
    blocked = re.search(r"GLOBAL (\S+?)(?: |$)", str(e))
    if blocked:
        return (f"{path} needs arbitrary Python objects to unpickle ({blocked.group(1)}), which could run code; "
                "fixres-fast loads only plain tensors and metadata. If you trust the file, open it in Python yourself "
                "and re-save its state_dict and metadata as plain types (tensors, numbers, strings, lists, dicts)")
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    first = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")
    return (f"{path} is not a readable checkpoint: not a file torch.save wrote, or a damaged one "
            f"({type(e).__name__}: {first[:200]})")


def _positive_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def _invalid(doc: dict) -> str | None:
    """What is wrong with a checkpoint's metadata types, or None."""
    meta, weights = doc["meta"], doc["model"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()):
        return "'model' must be a state_dict: parameter names and tensors"
    if not isinstance(meta["arch"], str):
        return f"arch must be a model name, found {meta['arch']!r}"
    for key in ("num_classes", "train_res", "test_res"):
        if not _positive_int(meta[key]):
            return f"{key} must be a positive integer, found {meta[key]!r}"
    pre = meta["preprocessing"]
    if not isinstance(pre, dict) or not isinstance(pre.get("test"), dict) or not isinstance(pre.get("train", {}), dict):
        return "preprocessing must hold a 'test' (and 'train') dict"
    ratio = pre["test"].get("resize_ratio", 1.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
        return f"preprocessing.test.resize_ratio must be a positive number, found {ratio!r}"
    adaptation = meta.get("adaptation") or {}
    eq = adaptation.get("frechet") if isinstance(adaptation, dict) else None
    if not isinstance(adaptation, dict) or eq is not None and not (
            isinstance(eq, dict) and all(isinstance(eq.get(k), (int, float)) for k in ("scale", "shift"))):
        return "adaptation must be a dict, its frechet map a dict with a numeric scale and shift"
    rec = meta.get("data")
    if rec is not None and not (isinstance(rec, dict) and isinstance(rec.get("path"), str)
                                and isinstance(rec.get("manifest_sha256"), (str, type(None)))):
        return "data must be a dict of the data set's path and its manifest's SHA-256 (or None)"
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        return "classes must be a list of class names"
    return None


# --- A checkpoint against what it is used with: its own weights, the model, the data set ---------------


def load_weights(model: torch.nn.Module, doc: dict, path) -> None:
    """Load ``doc``'s weights into ``model`` (strict); a clear error where they do not fit the model its
    metadata describes."""
    meta, weights = doc["meta"], doc["model"]
    classes = meta.get("classes")
    if classes is not None and len(classes) != meta["num_classes"]:
        raise UserError(f"the checkpoint {path} is inconsistent: its metadata says {meta['num_classes']} classes "
                        f"but lists {len(classes)} class names; re-save it with matching metadata")
    own = model.state_dict()
    problems = [f"{k} has shape {tuple(weights[k].shape)}, the model's {tuple(v.shape)}"
                for k, v in own.items() if k in weights and weights[k].shape != v.shape]
    problems += [f"{k} is missing" for k in own if k not in weights]
    problems += [f"{k} is not in the model" for k in weights if k not in own]
    if problems:
        more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
        raise UserError(f"the checkpoint {path} is inconsistent: its metadata says a {meta['arch']} with "
                        f"{meta['num_classes']} classes, but its weights do not fit that model: "
                        f"{'; '.join(problems[:2])}{more}; re-save it with the metadata of the model it holds")
    model.load_state_dict(weights)


def data_set(meta: dict) -> dict | None:
    """The data set recorded in ``meta`` ({'path': absolute, 'manifest_sha256': str or None}), or None."""
    return meta.get("data")  # its form is checked by load()


def resumed_from(meta: dict) -> list:
    """Earlier settings of a run that ``train --resume-changed`` continued: {epoch, step, config, data, changed}."""
    history = meta.get("resumed_from")
    return list(history) if isinstance(history, list) else []


def data_for(doc: dict, data: str | None, path) -> str:
    """The data set to use with the checkpoint ``doc`` (read from ``path``): ``data`` when given, else the one
    it records (its path and manifest checked), else (older checkpoints) ``adaptation.data`` or ``config.data``;
    its classes checked against the checkpoint's."""
    from .data import check_classes, data_record

    meta = doc["meta"]
    rec = data_set(meta)
    if data:
        chosen = str(data)
    elif rec is not None:
        chosen = rec["path"]
        now = data_record(chosen) if Path(chosen).is_dir() else None
        if now is None:
            raise UserError(f"{path} was trained or adapted on {chosen}, which no longer exists (moved or deleted); "
                            "pass --data OUT with the data set's new place")
        if rec["manifest_sha256"] and now["manifest_sha256"] != rec["manifest_sha256"]:
            raise UserError(f"the records in {chosen} changed after {path} was trained or adapted on them (its "
                            "manifest.json's SHA-256 differs: converted again?); pass --data OUT to use them anyway")
    else:
        config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
        chosen = (meta.get("adaptation") or {}).get("data") or config.get("data")
        if not isinstance(chosen, str) or not chosen:
            raise UserError(f"{path} does not say which data set it was trained on; pass --data OUT")
    check_classes(meta.get("classes"), meta["num_classes"], chosen, f"the checkpoint {path}")
    return chosen
