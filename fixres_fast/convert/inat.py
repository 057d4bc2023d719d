"""iNaturalist (2017, 2018, 2019, 2021): COCO-style ``train*.json`` / ``val*.json``.

``file_name`` entries are relative to SRC. Class index = sorted category id. iNaturalist 2021
ships two training sets, ``train.json`` (2.7M images) and ``train_mini.json`` (500k):
``train_set`` picks one; both are stored as split ``train``. An annotation file that is missing
is named in a warning (one split converted) or an error (none).
"""
from __future__ import annotations

from pathlib import Path

from .layout import Layout, LayoutError, coco_split, describe, relabel_coco

ANNOTATIONS = {
    2017: {"train": "train2017.json", "val": "val2017.json"},
    2018: {"train": "train2018.json", "val": "val2018.json"},
    2019: {"train": "train2019.json", "val": "val2019.json"},
    2021: {"train": "train.json", "val": "val.json"},
}
#: iNaturalist 2021's training sets: --train-set name -> annotation file.
TRAIN_SETS_2021 = {"train": "train.json", "train_mini": "train_mini.json"}


def annotation_files(src: Path, year: int, train_set: str | None) -> dict[str, str]:
    """Split -> annotation file name for this release and training set."""
    if year not in ANNOTATIONS:
        raise LayoutError(f"unknown iNaturalist year {year}; choose one of {', '.join(map(str, ANNOTATIONS))}")
    names = dict(ANNOTATIONS[year])
    if year != 2021:
        if train_set not in (None, "train"):
            raise LayoutError(f"--train-set {train_set} applies to iNaturalist 2021 only; {year} has one training set")
        return names
    if train_set is None:
        if not (src / "train.json").is_file() and (src / "train_mini.json").is_file():
            raise LayoutError(f"{src} has train_mini.json but no train.json: pass --train-set train_mini to convert "
                              "the mini training set (500k images), or add train.json for the full one")
        train_set = "train"
    if train_set not in TRAIN_SETS_2021:
        raise LayoutError(f"unknown --train-set {train_set!r}; choose one of {', '.join(TRAIN_SETS_2021)}")
    names["train"] = TRAIN_SETS_2021[train_set]
    return names


def scan(src: str | Path, year: int, train_set: str | None = None) -> Layout:
    src = Path(src)
    names = annotation_files(src, year, train_set)
    files = {split: src / name for split, name in names.items() if (src / name).is_file()}
    if not files:
        expected = " and ".join(names.values())
        raise LayoutError(f"not an iNaturalist {year} tree: expected {expected} in SRC; found: {describe(src)}")
    splits, categories = {}, {}
    for split, path in files.items():
        splits[split], cats = coco_split(path, src)
        categories.update(cats)
    layout = relabel_coco("inat", src, splits, categories)
    missing = [f"{names[s]} (split {s})" for s in names if s not in files]
    layout.warnings = [f"{src} has no {m}: that split is not converted" for m in missing] + layout.warnings
    return layout
