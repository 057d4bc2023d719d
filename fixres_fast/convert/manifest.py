"""What a conversion wrote, as documents: ``manifest.json``, ``classes.json`` and the closing summary."""
from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from .. import __version__
from ..records import MANIFEST, Manifest, Split
from ..spec import k_test_image
from .beton import VERSION as BETON_VERSION
from .image import SEQUENTIAL_FIX
from .recordio import IMAGE_HEADER, MAGIC

BETON_FIELDS = {"image": "RGBImageField", "label": "IntField"}


def manifest_doc(cfg, layout, splits: dict, listing: dict) -> Manifest:
    """The conversion's :class:`.records.Manifest`, from the config, layout, splits (as the writers give them) and
    source listing."""
    options = asdict(cfg)
    options["formats"] = list(cfg.formats)
    warnings = list(layout.warnings)
    splits = {name: Split.from_dict(s) for name, s in splits.items()}
    for name, s in splits.items():
        if s.shrunk_below_test_res:
            warnings.append(
                f"{name}: {s.shrunk_below_test_res} images were shrunk to a short side below "
                f"K_test^image = {k_test_image(cfg.test_res)} px (what --test-res {cfg.test_res} needs); "
                f"--max-side {s.max_side_for_test_res} would keep them all large enough"
            )
    return Manifest(
        fixres_fast=__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        source={"layout": layout.kind, "path": layout.source, "year": cfg.year, "images": listing["images"],
                "bytes": listing["bytes"], "listing_sha256": listing["sha256"]},
        options=options,
        formats={
            "beton": {"ffcv_version": BETON_VERSION, "fields": BETON_FIELDS, "write_mode": cfg.write_mode},
            "recordio": {"format": "mxnet-recordio", "magic": hex(MAGIC), "image_header": IMAGE_HEADER.format,
                         "label": "float32 class index; record key = record index",
                         "dali": "splits.NAME.recordio: readers.mxnet(path=rec, index_path=[idx])"},
        },
        num_classes=len(layout.classes),
        splits=splits,
        warnings=warnings,
    )


def classes_doc(layout, splits: dict) -> list[dict]:
    docs = []
    for c in layout.classes:
        counts = {name: s["per_class"][c["index"]] for name, s in splits.items()}
        docs.append({**c, "counts": counts})
    return docs


def skipped_line(splits: dict[str, Split]) -> str:
    """One line: how many files were skipped, and why."""
    reasons = Counter(_reason_kind(s["reason"]) for split in splits.values() for s in split.skipped)
    total = sum(split.count for split in splits.values()) + sum(reasons.values())
    if not reasons:
        return f"skipped 0 of {total} files"
    why = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
    return f"skipped {sum(reasons.values())} of {total} files: {why}"


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0].split(":")[0]


def summarise(manifest: Manifest, out: Path, log) -> None:
    for name, s in manifest.splits.items():
        fixes = dict(s.reencoded)
        lossless = fixes.pop(SEQUENTIAL_FIX, 0)
        parts = [f"{lossless} progressive rewritten as sequential"] if lossless else []
        if fixes:
            parts.append("re-encoded: " + ", ".join(f"{k} {v}" for k, v in sorted(fixes.items())))
        log(f"{name}: {s.count} records{' (' + '; '.join(parts) + ')' if parts else ''}, "
            f"{len(s.skipped)} skipped")
    for w in manifest.warnings:
        log(f"warning: {w}")
    log(skipped_line(manifest.splits) + f" (details in {out / MANIFEST})")
