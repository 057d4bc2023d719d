"""Any ImageFolder tree: ``SRC/<split>/<class>/<image>``, or ``SRC/<class>/<image>`` as one train split.

Split folders are recognised by name (train, val, validation, test). Classes
are the sorted union of class folder names over all splits, so a class
missing from one split keeps the same index everywhere.
"""
from __future__ import annotations

from pathlib import Path

from .layout import Layout, LayoutError, class_folders, describe, empty_class_warnings, from_class_folders

SPLIT_NAMES = ("train", "val", "validation", "test")


def scan(src: str | Path) -> Layout:
    src = Path(src)
    if not src.is_dir():
        raise LayoutError(f"expected an ImageFolder tree SRC/<split>/<class>/<image>; {describe(src)}")
    split_dirs = {n: src / n for n in class_folders(src) if n in SPLIT_NAMES}
    if not split_dirs:
        split_dirs = {"train": src}
    names = sorted({c for d in split_dirs.values() for c in class_folders(d)})
    if not names:
        raise LayoutError(
            f"expected class folders (SRC/<split>/<class>/<image> or SRC/<class>/<image>); found: {describe(src)}"
        )
    index = {n: i for i, n in enumerate(names)}
    splits = {n: from_class_folders(d, index) for n, d in split_dirs.items()}
    layout = Layout("folder", str(src), [{"index": i, "name": n} for i, n in enumerate(names)], splits)
    layout.warnings = empty_class_warnings(layout)
    return layout
