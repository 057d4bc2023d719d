"""Any ImageFolder tree: ``SRC/<split>/<class>/<image>``, or ``SRC/<class>/<image>`` as one train split.

Split folders are recognised by name (train, test, and val / validation / valid, stored as split
``val``). Classes are the sorted union of class folder names over all splits, so a class missing
from one split keeps the same index everywhere. A tree that yields no image at all is refused,
saying which level held what, rather than converted to nothing.
"""
from __future__ import annotations

from pathlib import Path

from .layout import (IMAGE_SUFFIXES, VAL_NAMES, Layout, LayoutError, canonical_split, class_folders, describe, empty_class_warnings,
                     entries, from_class_folders)

SPLIT_NAMES = ("train", "test") + VAL_NAMES


def scan(src: str | Path) -> Layout:
    src = Path(src)
    if not src.is_dir():
        raise LayoutError(f"expected an ImageFolder tree SRC/<split>/<class>/<image>; {describe(src)}")
    split_dirs, warnings = _split_dirs(src)
    names = sorted({c for d in split_dirs.values() for c in class_folders(d)})
    if not names:
        raise LayoutError(
            f"expected class folders (SRC/<split>/<class>/<image> or SRC/<class>/<image>); found: {describe(src)}"
        )
    index = {n: i for i, n in enumerate(names)}
    splits = {n: from_class_folders(d, index) for n, d in split_dirs.items()}
    if not any(s.items for s in splits.values()):
        raise LayoutError(_no_images(src, split_dirs))
    layout = Layout("folder", str(src), [{"index": i, "name": n} for i, n in enumerate(names)], splits)
    layout.warnings = warnings + empty_class_warnings(layout)
    return layout


def _split_dirs(src: Path) -> tuple[dict[str, Path], list[str]]:
    """Split name -> folder; warnings name the folders beside the splits that are not converted."""
    top = class_folders(src)
    split_dirs: dict[str, Path] = {}
    for n in top:
        if n.lower() in SPLIT_NAMES:
            split = canonical_split(n.lower())
            if split in split_dirs:
                raise LayoutError(f"{src} has two folders for split {split!r}: {split_dirs[split].name}/ and {n}/; keep one")
            split_dirs[split] = src / n
    if not split_dirs:
        return {"train": src}, []
    others = [n for n in top if n.lower() not in SPLIT_NAMES]
    warnings = [f"folder {n}/ in SRC is not a split ({', '.join(SPLIT_NAMES)}) and is not converted" for n in others]
    for split, d in list(split_dirs.items()):
        if not class_folders(d) and len(split_dirs) > 1:  # e.g. a competition's flat, unlabelled test/
            warnings.append(f"{d.name}/ holds no class folders (no labels) and is not converted")
            del split_dirs[split]
    return split_dirs, warnings


def _no_images(src: Path, split_dirs: dict[str, Path]) -> str:
    """Why no image was found: most often split folders that are taken for class folders."""
    deeper = [f"{d.name}/{c}/" for d in split_dirs.values() for c in class_folders(d) if entries(d / c)[0]]
    if deeper:
        return (f"no images in {src}'s class folders, but {', '.join(deeper[:3])} hold folders: expected "
                f"SRC/<split>/<class>/<image> with split folders named {', '.join(SPLIT_NAMES)}, or SRC/<class>/<image>; "
                "rename the split folders (or convert that folder alone)")
    return f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the class folders; found: {describe(src)}"
