"""What every source layout produces: classes and, per split, (file, label) items.

A layout module (imagenet, inat, herbarium, folder) scans a source tree and
returns a :class:`Layout`. It reads no pixels; files that cannot be used
because of the layout (missing file, no annotation) are listed as skipped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

#: File suffixes read as images by the folder and ImageNet layouts (case-insensitive).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


class LayoutError(UserError):
    """SRC is not the layout that was named: says what was expected and what was found."""


@dataclass(frozen=True)
class Item:
    path: str  # absolute path of the image file
    label: int  # class index


@dataclass
class Split:
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


@dataclass
class Layout:
    kind: str  # 'imagenet', 'inat', 'herbarium' or 'folder'
    source: str
    classes: list[dict]  # index order; each has at least {'index', 'name'}
    splits: dict[str, Split]
    warnings: list[str] = field(default_factory=list)


def describe(path: Path, limit: int = 8) -> str:
    """A short listing of what is at ``path``, for error messages."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    names = sorted(os.listdir(path))
    shown = ", ".join(n + ("/" if (path / n).is_dir() else "") for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{path} holds {shown or 'nothing'}{more}"


#: What sources call their validation split; every layout stores it as ``val``, the split the jobs read.
VAL_NAMES = ("val", "validation", "valid")


def canonical_split(name: str) -> str:
    """The split name records are stored under: ``val`` for any of :data:`VAL_NAMES`, else ``name``."""
    return "val" if name.lower() in VAL_NAMES else name


def entries(folder: Path) -> tuple[list[str], list[Path], list[tuple[str, str]]]:
    """What is directly inside ``folder``, sorted: (sub-folder names, image files, unusable entries).

    Unusable entries are (path, reason): a symbolic link that loops or points nowhere. No layout walks
    deeper than its fixed levels, so a link back to a parent folder cannot make the walk endless."""
    dirs, images, bad = [], [], []
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            try:
                is_dir, is_file = e.is_dir(), e.is_file()
            except OSError as err:  # ELOOP: a symlink loop
                bad.append((e.path, f"cannot be followed: {err.strerror or err}"))
                continue
            if is_dir:
                dirs.append(e.name)
            elif is_file:
                if e.name.lower().endswith(IMAGE_SUFFIXES):
                    images.append(Path(e.path))
            elif e.is_symlink():
                bad.append((e.path, "a symbolic link to nothing (its target is missing)"))
    return sorted(dirs), sorted(images), sorted(bad)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return entries(folder)[1]


def class_folders(split_dir: Path) -> list[str]:
    return entries(split_dir)[0]


def from_class_folders(split_dir: Path, index: dict[str, int]) -> Split:
    """One split of an ImageFolder tree: ``split_dir/<class>/<image>``; unusable links are listed as skipped."""
    split = Split()
    names, _, split.skipped = entries(split_dir)
    for name in names:
        _, images, bad = entries(split_dir / name)
        split.items += [Item(str(p), index[name]) for p in images]
        split.skipped += bad
    return split


def read_json(path: Path):
    """A JSON file in the encoding it has: UTF-8 (a BOM allowed), else latin-1.

    Herbarium 2020/2021's metadata.json is latin-1, not UTF-8. Strict UTF-8 rarely decodes text in
    another encoding by accident, so it is tried first; latin-1 decodes any bytes, so it is the
    fallback (cp1252 would differ only in 0x80-0x9F, control characters in latin-1). Returns
    (document, encoding used). Plain ``json``: no object is ever constructed from the file."""
    import json

    data = path.read_bytes()
    try:
        text, encoding = data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = data.decode("latin-1"), "latin-1"
    try:
        return json.loads(text), encoding
    except ValueError as e:
        raise LayoutError(f"{path} is not valid JSON ({e}); re-download it") from None


def empty_class_warnings(layout: Layout) -> list[str]:
    """Warn for each class that has no image in any split; it keeps its index."""
    seen = {it.label for s in layout.splits.values() for it in s.items}
    return [
        f"class {c['name']!r} (index {c['index']}) has no images; its index is kept so labels stay aligned"
        for c in layout.classes
        if c["index"] not in seen
    ]


def coco_split(json_path: Path, image_root: Path, doc: dict | None = None):
    """Items of a COCO-style annotation file (iNaturalist, Herbarium); ``doc``: the file, if already read.

    Returns (split, categories) where categories maps category id -> name.
    Entries whose file is missing or that have no annotation are skipped with a reason.
    """
    doc = read_json(json_path)[0] if doc is None else doc
    if not isinstance(doc, dict):
        raise LayoutError(f"{json_path} is not a COCO-style annotation file: expected an object, found a {type(doc).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in doc:
            raise LayoutError(
                f"{json_path} is not a COCO-style annotation file: expected the keys images, "
                f"annotations and categories, found {', '.join(sorted(doc)) or 'none'}"
            )
    categories = {int(c["id"]): str(c.get("name", c["id"])) for c in doc["categories"]}
    label_of_image = {int(a["image_id"]): int(a["category_id"]) for a in doc["annotations"]}
    split = Split()
    for im in doc["images"]:
        path = image_root / im["file_name"]
        cat = label_of_image.get(int(im["id"]))
        if cat is None:
            split.skipped.append((str(path), "no annotation for this image"))
        elif not path.is_file():
            split.skipped.append((str(path), "file listed in the annotations is missing"))
        else:
            split.items.append(Item(str(path), cat))
    return split, categories


def relabel_coco(kind: str, src: Path, splits: dict[str, Split], categories: dict[int, str]) -> Layout:
    """Turn category ids into contiguous indices in sorted id order."""
    ids = sorted(categories)
    index = {c: i for i, c in enumerate(ids)}
    for split in splits.values():
        split.items = [Item(it.path, index[it.label]) for it in split.items]
    classes = [{"index": i, "name": categories[c], "category_id": c} for i, c in enumerate(ids)]
    layout = Layout(kind, str(src), classes, splits)
    layout.warnings = empty_class_warnings(layout)
    return layout
