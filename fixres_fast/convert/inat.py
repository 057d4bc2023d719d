"""iNaturalist (2017, 2018, 2019, 2021): COCO-style ``train*.json`` / ``val*.json``.

``file_name`` entries are relative to SRC. Class index = sorted category id.
"""
from __future__ import annotations

from pathlib import Path

from .layout import LayoutError, coco_split, describe, relabel_coco

ANNOTATIONS = {
    2017: {"train": "train2017.json", "val": "val2017.json"},
    2018: {"train": "train2018.json", "val": "val2018.json"},
    2019: {"train": "train2019.json", "val": "val2019.json"},
    2021: {"train": "train.json", "val": "val.json"},
}


def scan(src: str | Path, year: int) -> Layout:
    src = Path(src)
    if year not in ANNOTATIONS:
        raise LayoutError(f"unknown iNaturalist year {year}; choose one of {', '.join(map(str, ANNOTATIONS))}")
    files = {split: src / name for split, name in ANNOTATIONS[year].items() if (src / name).is_file()}
    if not files:
        expected = " and ".join(ANNOTATIONS[year].values())
        raise LayoutError(f"not an iNaturalist {year} tree: expected {expected} in SRC; found: {describe(src)}")
    splits, categories = {}, {}
    for split, path in files.items():
        splits[split], cats = coco_split(path, src)
        categories.update(cats)
    return relabel_coco("inat", src, splits, categories)

