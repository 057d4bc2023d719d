"""Herbarium (FGVC6 2019, FGVC7 2020, FGVC8 2021): one folder per split, in either of two layouts.

* 2020 / 2021: ``SRC/train/metadata.json`` (COCO-style; ``file_name`` such as ``images/000/00/437000.jpg``,
  relative to the folder of its metadata.json), and ``SRC/test/metadata.json``, which lists images but
  no annotations (the competition's hidden test set): it is not converted, and a warning says so.
  The files are latin-1, not UTF-8 (:func:`.layout.read_json` reads either).
* 2019: class folders, ``SRC/train/<category>/<id>.jpg`` and ``SRC/validation/<category>/<id>.jpg``
  (no JSON); ``small-train/`` is a subset of ``train/``: ignored, with a note, when ``train/`` is there,
  else converted as the train split.

The validation folder (``validation``, ``valid`` or ``val``) becomes split ``val``. Class index =
sorted category id (numeric folder names are category ids; others sort by name).
"""
from __future__ import annotations

from pathlib import Path

from .layout import (VAL_NAMES, Layout, LayoutError, Split, canonical_split, class_folders, coco_split, describe,
                     empty_class_warnings, entries, from_class_folders, read_json, relabel_coco)

METADATA = "metadata.json"
SMALL_TRAIN = "small-train"


def scan(src: str | Path) -> Layout:
    src = Path(src)
    folders, notes = _split_folders(src)
    if not folders:
        raise LayoutError(
            f"not a Herbarium tree: expected SRC/train/{METADATA} (2020, 2021) or class folders "
            f"SRC/train/<category>/<image> (2019), and/or SRC/validation/; found: {describe(src)}")
    coco = {s: d for s, d in folders.items() if (d / METADATA).is_file()}
    layout = _scan_coco(src, coco, notes) if coco else _scan_class_folders(src, folders)
    layout.warnings = notes + layout.warnings
    return layout


def _split_folders(src: Path) -> tuple[dict[str, Path], list[str]]:
    """Split name -> folder, and notes on what is left out."""
    names = class_folders(src) if src.is_dir() else []
    folders, notes = {}, []
    for name in names:
        if name == "train" or name == "test" or name.lower() in VAL_NAMES:
            split = canonical_split(name)
            if split in folders:
                raise LayoutError(f"{src} has two validation folders, {folders[split].name}/ and {name}/; keep one")
            folders[split] = src / name
    if SMALL_TRAIN in names:
        if "train" in folders:
            notes.append(f"{SMALL_TRAIN}/ is a subset of train/ and is not converted (convert it alone to use it)")
        else:
            folders["train"] = src / SMALL_TRAIN
            notes.append(f"no train/ folder: {SMALL_TRAIN}/ is converted as the train split")
    return folders, notes


def _scan_coco(src: Path, coco: dict[str, Path], notes: list[str]) -> Layout:
    splits, categories = {}, {}
    for split, folder in coco.items():
        meta = folder / METADATA
        doc = read_json(meta)[0]
        if isinstance(doc, dict) and "images" in doc and not doc.get("annotations"):
            notes.append(f"{meta} lists {len(doc['images'])} images without labels (a competition test set); "
                         f"split {split!r} is not converted")
            continue
        splits[split], cats = coco_split(meta, folder, doc)
        categories.update(cats)
    if not splits:
        raise LayoutError(f"no labelled split in {src}: every {METADATA} lacks annotations; found: {describe(src)}")
    return relabel_coco("herbarium", src, splits, categories)


def _scan_class_folders(src: Path, folders: dict[str, Path]) -> Layout:
    """Herbarium 2019: SRC/<split>/<category>/<image>."""
    folders = {s: d for s, d in folders.items() if class_folders(d)}  # 2019's test/ is flat and unlabelled
    names = sorted({c for d in folders.values() for c in class_folders(d)}, key=_category_order)
    if not names or not any(entries(folders[s] / c)[1] for s in folders for c in class_folders(folders[s])):
        raise LayoutError(f"not a Herbarium tree: no {METADATA} and no images in class folders "
                          f"SRC/<split>/<category>/<image>; found: {describe(src)}")
    index = {n: i for i, n in enumerate(names)}
    splits: dict[str, Split] = {s: from_class_folders(d, index) for s, d in folders.items()}
    classes = [{"index": i, "name": n} | ({"category_id": int(n)} if n.isdigit() else {}) for i, n in enumerate(names)]
    layout = Layout("herbarium", str(src), classes, splits)
    layout.warnings = empty_class_warnings(layout)
    return layout


def _category_order(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)
