"""The hand-off artifact of a conversion: its ``OUT/manifest.json``, as a typed :class:`Manifest`.

Convert builds one (:func:`.convert.manifest.manifest_doc`) and writes :meth:`Manifest.to_dict`; the loaders,
``convert verify`` and the jobs read it with :meth:`Manifest.read`. The field names are the JSON keys: this
module is the one place they are spelled.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import UserError

MANIFEST = "manifest.json"
#: The largest side a JPEG can have (its header stores sides in 16 bits): no conversion stores larger images.
JPEG_MAX_SIDE = 65535


@dataclass(frozen=True)
class RecordFile:
    """One file a split wrote: its name in OUT, its size (bytes) and SHA-256 (hex)."""

    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class RecordIO:
    """A split's RecordIO shards (names in OUT, the ones holding records) and its DALI index."""

    rec: list[str]
    idx: str


@dataclass(frozen=True)
class Split:
    """What a conversion wrote for one split."""

    count: int  # records
    per_class: list[int]  # records per class index
    skipped: list[dict]  # {"path", "reason"} per source file left out
    reencoded: dict  # fix -> number of images
    shrunk_below_test_res: int
    max_side_for_test_res: int | None
    index: str  # NAME.index.tsv
    files: list[RecordFile]
    recordio: RecordIO | None = None

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.files]

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        rio = d.get("recordio")
        return cls(**{**_known(cls, d), "files": [RecordFile(**_known(RecordFile, f)) for f in d["files"]],
                      "recordio": RecordIO(**_known(RecordIO, rio)) if rio else None})


@dataclass(frozen=True)
class Manifest:
    """A conversion's ``manifest.json``."""

    fixres_fast: str  # the version that wrote it
    created: str  # ISO time, UTC
    source: dict  # layout, path, year, images, bytes, listing_sha256
    options: dict  # the ConvertConfig, as plain types
    formats: dict  # what each output format holds
    num_classes: int
    splits: dict[str, Split]
    warnings: list[str] = field(default_factory=list)

    @property
    def max_side(self) -> int:
        """The ``--max-side`` (long side, px) the records were stored with."""
        return self.options["max_side"]

    @property
    def write_mode(self) -> str:
        return self.options.get("write_mode", "jpg")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        return cls(**{**_known(cls, d), "splits": {name: Split.from_dict(s) for name, s in d["splits"].items()}})

    @classmethod
    def read(cls, out: str | Path) -> Manifest:
        """``OUT/manifest.json``; one UserError line if it is missing or not a manifest a conversion writes."""
        path = Path(out) / MANIFEST
        if not path.is_file():
            raise UserError(f"{out} has no {MANIFEST}: it is not a finished conversion (run `fixres-fast convert` first)")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError, AttributeError) as e:  # bad JSON, or not the document convert writes
            why = f"no {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
            raise UserError(f"{path} is not the manifest a conversion writes ({why}); it is damaged: "
                            f"re-convert into {out}") from None


def _known(cls, d: dict) -> dict:
    """The entries of ``d`` that are fields of ``cls`` (a manifest from a later version may carry more)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}
