"""ILSVRC-2012 layout.

``SRC/train/nXXXXXXXX/*.JPEG``; ``SRC/val`` is either class folders, or flat
files labelled by ``LOC_val_solution.csv`` (Kaggle) or by the devkit's
``ILSVRC2012_validation_ground_truth.txt`` + ``meta.mat``. Class index =
sorted wnid order (torchvision's ImageFolder order).

Kaggle's archive keeps ``LOC_val_solution.csv`` three levels above the images:
``imagenet-object-localization-challenge/LOC_val_solution.csv`` beside
``ILSVRC/Data/CLS-LOC/{train,val}``, so SRC and up to :data:`PARENT_LEVELS` folders above it are
searched; ``val_labels`` (``--val-labels FILE``) names the file outright.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from .layout import Item, Layout, LayoutError, Split, class_folders, describe, empty_class_warnings, from_class_folders, list_images

WNID = re.compile(r"^n\d{8}$")
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
SOLUTION = "LOC_val_solution.csv"
PARENT_LEVELS = 3  # folders above SRC searched for SOLUTION (Kaggle: CLS-LOC -> Data -> ILSVRC -> the archive's root)


def scan(src: str | Path, val_labels: str | Path | None = None) -> Layout:
    src = Path(src)
    train, val = src / "train", src / "val"
    if not train.is_dir() and not val.is_dir():
        raise LayoutError(
            f"not an ImageNet (ILSVRC-2012) tree: expected SRC/train/nXXXXXXXX/*.JPEG and/or SRC/val/; "
            f"found: {describe(src)}"
        )
    wnids = _train_wnids(train) if train.is_dir() else _val_class_wnids(val)
    if not wnids:
        raise LayoutError(f"no wnid class folders (nXXXXXXXX) found: {describe(train if train.is_dir() else val)}")
    index = {w: i for i, w in enumerate(wnids)}
    splits = {}
    if train.is_dir():
        splits["train"] = from_class_folders(train, index)
    if val.is_dir():
        splits["val"] = _val_split(src, val, index, Path(val_labels) if val_labels else None)
    layout = Layout("imagenet", str(src), [{"index": i, "name": w} for i, w in enumerate(wnids)], splits)
    layout.warnings = empty_class_warnings(layout)
    return layout


def _train_wnids(train: Path) -> list[str]:
    names = class_folders(train)
    bad = [n for n in names if not WNID.match(n)]
    if bad:
        raise LayoutError(
            f"SRC/train should hold only wnid folders like n01440764; found {len(bad)} others, "
            f"e.g. {', '.join(bad[:5])}. For a custom tree use `fixres-fast convert folder`."
        )
    return names


def _val_class_wnids(val: Path) -> list[str]:
    return [n for n in class_folders(val) if WNID.match(n)]


def _val_split(src: Path, val: Path, index: dict[str, int], val_labels: Path | None) -> Split:
    if val_labels is None and any(WNID.match(n) for n in class_folders(val)):
        unknown = [n for n in class_folders(val) if n not in index]
        if unknown:
            raise LayoutError(f"SRC/val has class folders that SRC/train lacks: {', '.join(unknown[:5])}")
        return from_class_folders(val, index)
    labels = _read_solution(val_labels) if val_labels else _flat_val_labels(src, val)
    split = Split()
    for p in list_images(val):
        wnid = labels.get(p.stem)
        if wnid is None:
            split.skipped.append((str(p), "no annotation for this image"))
        elif wnid not in index:
            split.skipped.append((str(p), f"annotated class {wnid} is not among the train classes"))
        else:
            split.items.append(Item(str(p), index[wnid]))
    listed = {p.stem for p in list_images(val)}
    for stem in sorted(set(labels) - listed):
        split.skipped.append((str(val / (stem + ".JPEG")), "file listed in the annotations is missing"))
    return split


def _flat_val_labels(src: Path, val: Path) -> dict[str, str]:
    """image stem -> wnid for a flat val folder."""
    above = [src.resolve().parents[k] for k in range(min(PARENT_LEVELS, len(src.resolve().parents)))]
    for csv_path in [val / SOLUTION, src / SOLUTION] + [d / SOLUTION for d in above]:
        if csv_path.is_file():
            return _read_solution(csv_path)
    for devkit in (src, src / "ILSVRC2012_devkit_t12", src / "ILSVRC2012_devkit_t12" / "data"):
        gt = devkit / GROUND_TRUTH if (devkit / GROUND_TRUTH).is_file() else devkit / "data" / GROUND_TRUTH
        if gt.is_file():
            return _devkit_labels(gt, gt.parent / "meta.mat")
    raise LayoutError(
        f"SRC/val is a flat folder, so its labels must come from {SOLUTION} (in SRC or up to {PARENT_LEVELS} folders "
        f"above it) or from the devkit (ILSVRC2012_devkit_t12/data/{GROUND_TRUTH} and meta.mat); found neither. "
        f"Pass --val-labels FILE to name {SOLUTION}. {describe(src)}"
    )


def _read_solution(csv_path: Path) -> dict[str, str]:
    """Kaggle's LOC_val_solution.csv: ImageId, PredictionString ('wnid x y x y wnid ...'; the first wnid is the label)."""
    if not csv_path.is_file():
        raise LayoutError(f"--val-labels {csv_path}: no such file")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
            raise LayoutError(f"{csv_path} is not Kaggle's {SOLUTION}: expected the columns ImageId and "
                              f"PredictionString, found {', '.join(reader.fieldnames or ()) or 'none'}")
        return {row["ImageId"]: row["PredictionString"].split()[0] for row in reader if row["PredictionString"]}


def _devkit_labels(gt: Path, meta: Path) -> dict[str, str]:
    """The devkit numbers classes by ILSVRC2012_ID (not wnid order); meta.mat maps them to wnids."""
    if not meta.is_file():
        raise LayoutError(f"found {gt} but not {meta}, which maps its ILSVRC2012_IDs to wnids")
    from scipy.io import loadmat

    synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
    wnid_of_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    ids = [int(line) for line in gt.read_text().split()]
    return {f"ILSVRC2012_val_{i + 1:08d}": wnid_of_id[k] for i, k in enumerate(ids)}
