"""What the jobs need to know about a data folder before loading it: classes, which backend reads it, and
the record a checkpoint keeps of it (absolute path and the manifest's SHA-256)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .errors import UserError
from .records import JPEG_MAX_SIDE, MANIFEST, Manifest

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
    manifest = Path(data) / MANIFEST
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
    if set(names) < set(classes):
        raise UserError(f"{data}'s {n} classes ({_shortened(names)}) are a subset of {what}'s {len(classes)}: pass "
                        f"--classes-map FILE, a file of lines 'RECORD_CLASS MODEL_CLASS' (here e.g. '{names[0]} "
                        f"{names[0]}'), to evaluate on them")
    diffs = [i for i in range(max(len(classes), n)) if i >= len(classes) or i >= n or classes[i] != names[i]]
    shown = "; ".join(f"#{i} {_at(classes, i)} vs {_at(names, i)}" for i in diffs[:SHOWN])
    raise UserError(f"{what} was trained on {len(classes)} classes ({_shortened(classes)}), but {data} holds "
                    f"{n} ({_shortened(names)}); they differ at {len(diffs)} label(s): {shown}"
                    f"{' ...' if len(diffs) > SHOWN else ''}. Its predictions would name the wrong classes: pass "
                    "the --data it was trained on, a checkpoint trained on these classes, or --classes-map FILE to map "
                    "these classes onto the model's")


def read_classes_map(path: str | Path) -> dict[str, str]:
    """A --classes-map file: a JSON object {records' class: model's class}, or lines ``RECORD_CLASS MODEL_CLASS``
    (whitespace, comma or tab between; ``#`` comments). A model class is a name in the model's classes or an
    output index."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"classes map {path} does not exist")
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise UserError(f"{path} is not valid JSON ({e})") from None
        if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in doc.values()):
            raise UserError(f"{path} must map each records' class name to a model class name or index")
        return {str(k): str(v) for k, v in doc.items()}
    pairs = {}
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        if len(fields) != 2:
            raise UserError(f"{path}:{n}: expected RECORD_CLASS MODEL_CLASS, found {line.strip()!r}")
        pairs[fields[0]] = fields[1]
    return pairs


def resolve_classes_map(path: str | Path, model_classes: list[str] | None, num_classes: int, data) -> dict[str, int]:
    """{records' class name: the model's output index} from a --classes-map file, every record class mapped."""
    given = read_classes_map(path)
    index = {name: i for i, name in enumerate(model_classes or ())}
    resolved = {}
    for record_class, target in given.items():
        i = index.get(target, int(target) if target.isdigit() else None)
        if i is None or not 0 <= i < num_classes:
            known = f"one of the model's class names ({_shortened(model_classes)}) or " if model_classes else ""
            raise UserError(f"{path}: {record_class!r} maps to {target!r}, which is not {known}an output index "
                            f"0..{num_classes - 1}")
        resolved[record_class] = i
    check_mapped(resolved, data, f"the classes map {path}")
    return resolved


def check_mapped(cmap: dict[str, int], data, what: str) -> None:
    """Refuse ``data`` unless ``cmap`` maps every one of its classes."""
    _, names = dataset_info(data)
    unmapped = [n for n in names if n not in cmap]
    if unmapped:
        raise UserError(f"{what} does not map {len(unmapped)} of the {len(names)} classes of {data} "
                        f"({_shortened(unmapped)}); add a line for each")


def label_map(cmap: dict[str, int] | None, data) -> tuple[int, ...] | None:
    """The model's output index for each of ``data``'s labels, in label order (None: the identity)."""
    if cmap is None:
        return None
    _, names = dataset_info(data)
    return tuple(cmap[n] for n in names)


def _shortened(names: list[str]) -> str:
    if len(names) <= SHOWN:
        return ", ".join(names)
    return f"{', '.join(names[:SHOWN - 1])}, ..., {names[-1]}"


def _at(names: list[str], i: int) -> str:
    return repr(names[i]) if i < len(names) else "(none)"


def readable_by(data: str | Path) -> set[str]:
    """The backends that can read ``data``: ffcv needs a .beton; dali JPEG records (RecordIO shards, a JPEG .beton)
    or image files; torch reads them all."""
    data = Path(data)
    if not (data / MANIFEST).is_file():
        return {"dali", "torch"}  # an ImageFolder tree: image files
    manifest = Manifest.read(data)
    names = [n for s in manifest.splits.values() for n in s.names]
    beton, rec = any(n.endswith(".beton") for n in names), any(n.endswith(".rec") for n in names)
    raw = manifest.write_mode == "raw"
    return {"torch"} | ({"ffcv"} if beton else set()) | ({"dali"} if rec or (beton and not raw) else set())


def backend_for(backend: str, device: torch.device, data: str | Path) -> str:
    """'auto': of the installed backends that can read ``data`` (:func:`readable_by`), DALI on a GPU, else FFCV,
    else the torchvision reference."""
    from .loaders import installed

    if backend != "auto":
        return backend
    can = {b for b in readable_by(data) if installed(b)}
    if device.type == "cuda" and "dali" in can:
        return "dali"
    return "ffcv" if "ffcv" in can else "torch"


def stored_max_side(data: str | Path) -> int | None:
    """The ``--max-side`` (long side, pixels) the records in a conversion's OUT folder were stored with;
    None for an ImageFolder tree (or a folder that is neither), whose images are whatever size they are."""
    if not (Path(data) / MANIFEST).is_file():
        return None
    return Manifest.read(data).max_side


def check_res(spec, data: str | Path, option: str = "--res") -> int:
    """``spec.size`` (K_train or K_test), after checking that images stored in ``data`` can serve ``spec``
    without upsampling: test DA (and DA2) resizes the short side to K_test^image, which must not exceed the
    stored long side (``--max-side``); train DA resizes a RoC, a region of the stored image, to K_train, so
    K_train must not exceed it either (a RoC is at most as wide as the image). No JPEG is larger than
    JPEG_MAX_SIDE, so that bound holds for ImageFolder trees too. ``option`` names the resolution's option."""
    from .spec import TestDA, TrainFixedDA

    k = spec.size
    if k <= 0:
        raise UserError(f"{option} must be a positive number of pixels, got {k}")
    if isinstance(spec, (TestDA, TrainFixedDA)):  # train-fixed resizes the short side as test DA does
        need, ratio = spec.resize_short, spec.resize_ratio
        short = "K_test^image" if isinstance(spec, TestDA) else "K_train x resize ratio"
        what = f"{option} {k} resizes images to a short side of {short} = {need} px"
    else:
        need, ratio = k, 1.0
        what = f"{option} {k} resizes a region of each image to K_train = {k} px"
    max_side = stored_max_side(data)
    if need > JPEG_MAX_SIDE:
        here = "" if max_side is None else f"; these records (--max-side {max_side}) serve {option} {int(max_side / ratio)} or less"
        raise UserError(f"{what}, but a JPEG's sides are at most {JPEG_MAX_SIDE} px, so no conversion can store images "
                        f"that large: this resolution cannot be had; the largest that can is {option} "
                        f"{int(JPEG_MAX_SIDE / ratio)}{here}")
    if max_side is not None and need > max_side:
        raise UserError(f"{what}, but the records in {data} were stored with --max-side {max_side} (long side); "
                        f"convert again with --max-side {need} or more, or choose {option} {int(max_side / ratio)} or less")
    return k
