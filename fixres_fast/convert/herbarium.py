"""Herbarium 2019 (FGVC6): ``SRC/train/metadata.json`` and ``SRC/validation/metadata.json``.

``file_name`` entries are relative to the folder of their metadata.json.
Class index = sorted category id.
"""
from __future__ import annotations

from pathlib import Path

from .layout import LayoutError, coco_split, describe, relabel_coco

SPLITS = {"train": "train", "val": "validation"}


def scan(src: str | Path):
    src = Path(src)
    found = {s: src / d / "metadata.json" for s, d in SPLITS.items() if (src / d / "metadata.json").is_file()}
    if not found:
        raise LayoutError(
            "not a Herbarium 2019 tree: expected SRC/train/metadata.json and/or SRC/validation/metadata.json; "
            f"found: {describe(src)}"
        )
    splits, categories = {}, {}
    for split, meta in found.items():
        splits[split], cats = coco_split(meta, meta.parent)
        categories.update(cats)
    return relabel_coco("herbarium", src, splits, categories)
