"""Where a loader's images come from: a conversion's records (OUT) or an ImageFolder tree.

Both give, per record index i: the encoded image bytes (:meth:`read`), the label, and a
description naming the record and its source file, for error messages. RecordIO records are
read straight out of the ``.rec`` shards at the offsets their ``.idx`` files list, so only OUT
is needed; the ``.index.tsv`` gives labels and source paths.
"""
from __future__ import annotations

import io
import json
import mmap
from pathlib import Path

import numpy as np

from ..convert.recordio import IMAGE_HEADER, MAGIC, RECORD_HEADER
from ..errors import UserError


class RecordError(UserError):
    """A record that cannot be read or decoded; the message names its index and source file."""


class Source:
    """Encoded images and labels of one split, indexable by record number."""

    def __init__(self, root: Path, split: str, paths: list[str], labels: np.ndarray):
        self.root, self.split, self.paths, self.labels = root, split, paths, labels

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, i: int) -> str:
        return f"record {i} of split {self.split!r} in {self.root} (source file {self.paths[i]})"

    def read(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def decode_error(self, i: int) -> str | None:
        """Why record ``i`` does not decode to a whole RGB image (a full PIL decode), or None if it does."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self.read(i).tobytes())) as im:
                im.load()
        except RecordError as e:
            return str(e)
        except Exception as e:  # PIL raises many types for bad data
            return f"{type(e).__name__}: {e}"
        return None

    def check(self, indices) -> None:
        """Raise :class:`RecordError` for the first of ``indices`` that does not decode."""
        for i in indices:
            why = self.decode_error(int(i))
            if why is not None:
                raise RecordError(f"{self.describe(int(i))} does not decode: {why}. "
                                  "Re-run the conversion (or `fixres-fast verify OUT`) to find damaged files.")


class Records(Source):
    """A split of a conversion: ``OUT/NAME-*.rec`` + ``.idx`` shards, ``NAME.index.tsv``, ``NAME.beton``."""

    def __init__(self, out: Path, split: str, manifest: dict):
        index = out / f"{split}.index.tsv"
        rows = [line.rstrip("\n").split("\t", 2) for line in index.read_text().splitlines()[1:]]
        super().__init__(out, split, [r[2] for r in rows], np.array([int(r[1]) for r in rows], dtype=np.int64))
        names = [f["name"] for f in manifest["splits"][split]["files"]]
        self.beton = out / f"{split}.beton" if f"{split}.beton" in names else None
        self.recs = sorted(out / n for n in names if n.endswith(".rec"))
        self._maps: list[mmap.mmap] = []
        self._where = np.full((len(self), 2), -1, dtype=np.int64)  # (shard, offset) per record
        for s, rec in enumerate(self.recs):
            for line in rec.with_suffix(".idx").read_text().splitlines():
                key, offset = line.split("\t")
                self._where[int(key)] = (s, int(offset))

    def read(self, i: int) -> np.ndarray:
        if not self.recs:
            raise UserError(f"{self.root} has no RecordIO shards for split {self.split!r}; "
                            "convert with --format recordio, or use the ffcv backend")
        shard, offset = self._where[i]
        if shard < 0:
            raise RecordError(f"{self.describe(i)} is listed in the index but in no .idx file")
        if not self._maps:
            self._maps = [_map(r) for r in self.recs]
        mm = self._maps[shard]
        magic, length = RECORD_HEADER.unpack_from(mm, offset)
        if magic != MAGIC or offset + RECORD_HEADER.size + length > len(mm):
            raise RecordError(f"{self.describe(i)} is damaged: no RecordIO record at byte {offset} of {self.recs[shard]}")
        start = offset + RECORD_HEADER.size
        flag = IMAGE_HEADER.unpack_from(mm, start)[0]
        skip = IMAGE_HEADER.size + 4 * flag
        return np.frombuffer(mm, dtype=np.uint8, count=length - skip, offset=start + skip)

    def __getstate__(self):  # DataLoader workers re-open the shards
        return {**self.__dict__, "_maps": []}


class Folder(Source):
    """An ImageFolder tree: ``ROOT/<split>/<class>/<image>`` (or ``ROOT/<class>/<image>``)."""

    def __init__(self, root: Path, split: str):
        from ..convert import folder

        layout = folder.scan(root)
        if split not in layout.splits:
            raise UserError(f"{root} has no split {split!r}; it has {', '.join(layout.splits)}")
        items = layout.splits[split].items
        super().__init__(root, split, [it.path for it in items], np.array([it.label for it in items], dtype=np.int64))
        self.beton = None

    def describe(self, i: int) -> str:
        return f"image {i} of split {self.split!r} ({self.paths[i]})"

    def read(self, i: int) -> np.ndarray:
        try:
            return np.fromfile(self.paths[i], dtype=np.uint8)
        except OSError as e:
            raise RecordError(f"{self.describe(i)} cannot be read: {e.strerror or e}") from None


def open_source(source, split: str) -> Source:
    """Records if ``source`` holds a conversion's manifest.json, else an ImageFolder tree."""
    root = Path(source)
    if (root / "manifest.json").is_file():
        manifest = json.loads((root / "manifest.json").read_text())
        if split not in manifest["splits"]:
            raise UserError(f"{root} has no split {split!r}; its manifest lists {', '.join(manifest['splits'])}")
        return Records(root, split, manifest)
    if not root.is_dir():
        raise UserError(f"source {root} does not exist: give a conversion's OUT folder or an ImageFolder tree")
    return Folder(root, split)


def _map(path: Path) -> mmap.mmap:
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
