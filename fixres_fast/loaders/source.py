"""Where a loader's images come from: a conversion's records (OUT) or an ImageFolder tree.

Both give, per record index i: the stored image bytes (:meth:`read`), the image ready to decode
(:meth:`open_image`), the label, and a description naming the record and its source file, for
error messages. Records are read straight out of the ``.rec`` shards at the offsets their
``.idx`` files list or, in a conversion with no RecordIO (``--format beton``), out of the
``.beton`` (JPEG or raw pixels); the ``.index.tsv`` gives labels and source paths, and ``.crc32`` the
CRC-32 of each record's stored bytes, which the loaders compare as they read (:meth:`Source.damage`).
"""
from __future__ import annotations

import io
import mmap
import sys
import zlib
from pathlib import Path

import numpy as np

from ..convert.index import read_index
from ..convert.outputs import CRC_SUFFIX
from ..convert.recordio import IMAGE_HEADER, MAGIC, RECORD_HEADER
from ..errors import UserError
from ..records import MANIFEST, Manifest


class MissingSplit(UserError):
    """The data set has no such split (e.g. no validation split): a job for which it is optional catches this."""


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

    #: Records hold raw RGB pixels, not JPEG (a ``--write-mode raw`` .beton with no RecordIO beside it).
    raw = False
    #: The CRC-32 of each record's stored bytes (uint32 per record, the conversion's ``NAME.crc32``), or None
    #: (an ImageFolder tree, or a conversion made before CRCs were recorded).
    crcs: np.ndarray | None = None

    def read(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def open_image(self, i: int):
        """Record ``i`` as a PIL image, opened but not decoded (so ``draft`` may still pick a reduced size)."""
        from PIL import Image

        return Image.open(io.BytesIO(self.read(i)))

    def decode_error(self, i: int) -> str | None:
        """Why record ``i`` does not decode to a whole RGB image (a full PIL decode), or None if it does."""
        try:
            with self.open_image(i) as im:
                im.load()
        except RecordError as e:
            return str(e)
        except Exception as e:  # PIL raises many types for bad data
            return f"{type(e).__name__}: {e}"
        return None

    def is_raw(self, i: int) -> bool:
        """Record ``i`` holds raw pixels (nothing to decode)."""
        return False

    def damage(self, i: int) -> str | None:
        """Why record ``i`` is damaged, or None if it is sound.

        Where the conversion recorded CRCs (:attr:`crcs`), a record is damaged where its bytes' CRC-32 differs
        (zlib, tens of microseconds a record). Without them (an ImageFolder tree, an earlier conversion) a JPEG is
        damaged where libjpeg fails or warns of corrupt data anywhere in it (:func:`.kernels.check_jpeg`, a decode
        at 1/8 scale to its end marker: ~1 ms a 512-px record, about what a loader spends on the whole image; PIL
        and DALI decode around such data, so a decode that succeeds proves nothing); another image, where a full
        PIL decode fails; raw pixels, never."""
        from .kernels import JPEG_DAMAGE, check_jpeg

        try:
            data = self.read(i)
        except RecordError as e:
            return str(e)
        if self.crcs is not None:
            if zlib.crc32(data) != self.crcs[i]:
                return f"its bytes do not match the CRC-32 the conversion recorded ({self.split}{CRC_SUFFIX})"
            return None
        if self.is_raw(i):
            return None
        if data[:2].tobytes() == b"\xff\xd8":
            return JPEG_DAMAGE.get(check_jpeg(data))
        return self.decode_error(i)

    def check(self, indices) -> None:
        """Raise :class:`RecordError` for the first of ``indices`` that does not decode."""
        for i in indices:
            why = self.decode_error(int(i))
            if why is not None:
                raise RecordError(f"{self.describe(int(i))} does not decode: {why}. {REPAIR}")


#: What to do about a damaged record, for messages.
REPAIR = ("Re-convert the data set (`fixres-fast convert verify OUT` checks every record against the manifest's "
          "checksums), or pass --on-corrupt skip to leave damaged records out and count them.")


class Records(Source):
    """A split of a conversion: ``OUT/NAME-*.rec`` + ``.idx`` shards, ``NAME.index.tsv``, ``NAME.beton``."""

    def __init__(self, out: Path, split: str, manifest: Manifest):
        labels, paths = read_index(out / f"{split}.index.tsv")
        super().__init__(out, split, paths, labels)
        names = manifest.splits[split].names
        self.beton = out / f"{split}.beton" if f"{split}.beton" in names else None
        self.recs = sorted(out / n for n in names if n.endswith(".rec"))
        self._beton = None
        if not self.recs and self.beton is not None:
            from ..convert.beton import RAW, BetonReader

            try:
                self._beton = BetonReader(self.beton)
            except (OSError, ValueError) as e:
                raise UserError(f"{self.beton} cannot be read: {e}. Re-run the conversion") from None
            if len(self._beton) != len(self):
                raise UserError(f"{self.beton} holds {len(self._beton)} records but {split}.index.tsv lists "
                                f"{len(self)}: the conversion is incomplete; re-run it")
            self.raw = bool((self._beton.image["mode"] == RAW).any())
        self.crcs = _read_crcs(out, split, names, len(self))
        self._maps: list[mmap.mmap] = []
        self._where = np.full((len(self), 2), -1, dtype=np.int64)  # (shard, offset) per record
        for s, rec in enumerate(self.recs):
            for line in rec.with_suffix(".idx").read_text().splitlines():
                key, offset = line.split("\t")
                self._where[int(key)] = (s, int(offset))

    def read(self, i: int) -> np.ndarray:
        if self._beton is not None:
            return self._beton.read(i)
        if not self.recs:
            raise UserError(f"{self.root} has no RecordIO shards or .beton for split {self.split!r}; re-run the conversion")
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

    def is_raw(self, i: int) -> bool:
        return self._beton is not None and self._beton.is_raw(i)

    def open_image(self, i: int):
        if self.is_raw(i):
            from PIL import Image

            row = self._beton.image[i]  # the .beton metadata of record i
            return Image.frombuffer("RGB", (int(row["width"]), int(row["height"])), self.read(i), "raw", "RGB", 0, 1)
        return super().open_image(i)

    def __getstate__(self):  # DataLoader workers re-open the shards
        return {**self.__dict__, "_maps": []}


class Folder(Source):
    """An ImageFolder tree: ``ROOT/<split>/<class>/<image>`` (or ``ROOT/<class>/<image>``)."""

    def __init__(self, root: Path, split: str):
        from ..convert import folder

        layout = folder.scan(root)
        if split not in layout.splits:
            raise MissingSplit(f"{root} has no split {split!r}; it has {', '.join(layout.splits)}")
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
    if (root / MANIFEST).is_file():
        manifest = Manifest.read(root)
        if split not in manifest.splits:
            raise MissingSplit(f"{root} has no split {split!r}; its manifest lists {', '.join(manifest.splits)}")
        check_sizes(root, split, manifest)
        return Records(root, split, manifest)
    if not root.is_dir():
        raise UserError(f"source {root} does not exist: give a conversion's OUT folder or an ImageFolder tree")
    return Folder(root, split)


def check_sizes(out: Path, split: str, manifest: Manifest) -> None:
    """Every file of ``split`` has the size the manifest gives it (a stat each: cheap), else one UserError line.

    A truncated .beton or .rec otherwise fails deep inside FFCV ("negative dimensions") or struct, or
    only at the record it cuts. A full check of the contents is `fixres-fast convert verify OUT`."""
    for f in manifest.splits[split].files:
        path = out / f.name
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            raise UserError(f"{path} is missing (the manifest lists it): re-convert into {out}")
        if size < f.bytes:
            raise UserError(f"{path} is truncated ({size} of {f.bytes} bytes): re-convert into {out}")
        if size != f.bytes:
            raise UserError(f"{path} has {size} bytes, the manifest says {f.bytes}: it changed since the "
                            f"conversion; re-convert into {out}")


_WARNED: set = set()  # conversions without CRCs already warned about, in this process


def _read_crcs(out: Path, split: str, names: list[str], n: int) -> np.ndarray | None:
    """The split's CRC-32 per record, or None (with a warning, once per conversion) where it has none."""
    name = split + CRC_SUFFIX
    if name not in names:
        if out not in _WARNED:
            _WARNED.add(out)
            print(f"warning: {out} records no CRC-32 per record (converted by an earlier version): damaged records "
                  f"are found by a decode check, which is slower; re-convert to add them", file=sys.stderr)
        return None
    crcs = np.fromfile(out / name, dtype="<u4")
    if len(crcs) != n:
        raise UserError(f"{out / name} holds {len(crcs)} CRCs but {split}.index.tsv lists {n} records: "
                        f"re-convert into {out}")
    return crcs


#: JPEG's start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15): baseline, extended, progressive, lossless, ...
_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
#: Markers that stand alone (no length field): TEM, RST0-7, SOI.
_STANDALONE = frozenset((0x01, *range(0xD0, 0xD9)))


def jpeg_size(data) -> tuple[int, int] | None:
    """(height, width) from the frame header of JPEG ``data`` (bytes or uint8 array), walking the markers up to
    the first SOF and reading nothing else; None where ``data`` is not a JPEG or ends first. The stored size, as
    PIL's ``Image.open(...).size`` gives it (an EXIF orientation tag is not applied): a few microseconds, where
    opening it with PIL takes tens."""
    view = memoryview(data).cast("B")
    n = len(view)
    if n < 4 or view[0] != 0xFF or view[1] != 0xD8:
        return None
    i = 2
    while i + 3 < n:
        if view[i] != 0xFF:
            return None  # not at a marker: damaged
        marker = view[i + 1]
        if marker == 0xFF:  # a fill byte before the marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in _SOF:
            if i + 8 >= n:
                return None
            height, width = view[i + 5] << 8 | view[i + 6], view[i + 7] << 8 | view[i + 8]
            return (height, width) if height and width else None
        if marker == 0xD9 or marker == 0xDA:  # end of image, or a scan, before any frame header
            return None
        i += 2 + (view[i + 2] << 8 | view[i + 3])
    return None


def image_size(data) -> tuple[int, int] | None:
    """(height, width) of the image in ``data`` from its header: :func:`jpeg_size` for a JPEG (PIL's header parse
    where that finds none, so a JPEG PIL opens is never refused), PIL's for another format; None where PIL
    cannot open it either."""
    size = jpeg_size(data)
    if size is not None:
        return size
    from PIL import Image

    try:
        width, height = Image.open(io.BytesIO(data)).size
    except Exception:
        return None
    return height, width


def _map(path: Path) -> mmap.mmap:
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
