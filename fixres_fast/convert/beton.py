"""FFCV ``.beton`` files (format version 2): a streaming writer and a reader that need no FFCV.

FFCV's own ``DatasetWriter`` decodes every image and re-encodes it in its
workers. Here the images arrive already prepared (see :mod:`.image`), so the
writer only lays bytes out in FFCV's format: header, field descriptors, one
metadata row per sample, page-aligned data (a sample never crosses a page,
as FFCV's process cache requires) and the allocation table. The dtypes below
are FFCV's own (``ffcv.types``; tests/test_convert.py pins them), so FFCV's
``Reader`` and ``Loader`` read the result, and :class:`BetonReader` reads a
.beton where FFCV is not installed (the torch and DALI backends).

Fields: ``image`` (RGBImageField, 'jpg' or 'raw') and ``label`` (IntField).
"""
from __future__ import annotations

import os

import numpy as np

FIELDS = ("image", "label")
TYPE_IDS = (2, 1)  # ffcv.types.TYPE_ID_HANDLER: RGBImageField, IntField
VERSION = 2
PAGE_SIZE = 8 << 20  # bytes; FFCV's DatasetWriter default (4 x 2 MiB)
HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"), ("num_samples", "<u8"),
                   ("alloc_table_ptr", "<u8")], align=True)
FIELD_DESC = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True)
ALLOC = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
IMAGE_META = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
METADATA = np.dtype([("", IMAGE_META), ("", "<i8")], align=True)  # one row per sample: image, label
#: what :class:`BetonWriter` keeps beside the file for a resume: a sample's metadata row and its size in bytes
ROW = np.dtype([("meta", METADATA), ("size", "<u8")])
RAW = 1  # IMAGE_META mode: 0 JPEG bytes, 1 raw HWC uint8 RGB


class BetonWriter:
    """Write samples in order to ``path``; ``capacity`` bounds how many may come.

    Each sample's metadata row and size also go to ``rows_path`` as they are written, so that a
    writer can be re-opened at a checkpoint (:meth:`resume`) after the process was killed;
    the header and tables are written by :meth:`close` only.
    """

    def __init__(self, path: str, capacity: int, rows_path: str, page_size: int = PAGE_SIZE):
        self.metadata = np.zeros(max(capacity, 1), dtype=METADATA)
        desc = np.zeros(len(FIELDS), dtype=FIELD_DESC)
        for i, (name, type_id) in enumerate(zip(FIELDS, TYPE_IDS)):
            desc[i]["type_id"] = type_id
            desc[i]["name"][: len(name)] = np.frombuffer(name.encode("ascii"), dtype="<u1")
        self.page_size = page_size
        self.count = 0
        self._allocs: list[tuple[int, int, int]] = []
        self._meta_offset = HEADER.itemsize + desc.nbytes
        start = self._meta_offset + self.metadata.nbytes
        self._pos = -(-start // page_size) * page_size  # data starts on a page boundary
        self.f = open(path, "wb")
        self.f.write(np.zeros(1, dtype=HEADER).tobytes())
        self.f.write(desc.tobytes())
        self.f.seek(self._pos)
        self.rows = open(rows_path, "wb")

    @classmethod
    def resume(cls, path: str, capacity: int, rows_path: str, at: dict, page_size: int = PAGE_SIZE) -> "BetonWriter":
        """The writer as it was when :meth:`checkpoint` returned ``at``; later bytes are cut off."""
        self = cls.__new__(cls)
        self.metadata = np.zeros(max(capacity, 1), dtype=METADATA)
        self.page_size, self.count, self._pos = page_size, at["count"], at["pos"]
        self._meta_offset = HEADER.itemsize + len(FIELDS) * FIELD_DESC.itemsize
        rows = np.fromfile(rows_path, dtype=ROW, count=self.count)
        if len(rows) != self.count or (self.count and os.path.getsize(path) < self._pos):
            raise ValueError(f"{path} and its rows are shorter than at the checkpoint")
        self.metadata[: self.count] = rows["meta"]
        ptrs = rows["meta"][METADATA.names[0]]["data_ptr"]
        self._allocs = [(i, int(p), int(n)) for i, (p, n) in enumerate(zip(ptrs, rows["size"]))]
        os.truncate(rows_path, self.count * ROW.itemsize)
        os.truncate(path, self._pos)
        self.f = open(path, "r+b")
        self.f.seek(self._pos)
        self.rows = open(rows_path, "ab")
        return self

    def checkpoint(self) -> dict:
        """Flush what was written; the returned dict lets :meth:`resume` carry on from here."""
        self.f.flush()
        self.rows.flush()
        return {"count": self.count, "pos": self._pos}

    def write(self, data: bytes, width: int, height: int, label: int, raw: bool = False) -> None:
        if self.count >= len(self.metadata):
            raise ValueError(f"more samples than the capacity of {len(self.metadata)} given at creation")
        size = len(data)
        if size > self.page_size:
            raise ValueError(f"one image takes {size} bytes, more than a page ({self.page_size})")
        room = self.page_size - self._pos % self.page_size
        if size > room:  # pad to the next page: a sample never straddles two
            self.f.write(b"\0" * room)
            self._pos += room
        row = self.metadata[self.count]
        row[0] = (RAW if raw else 0, width, height, self._pos)
        row[1] = label
        self._allocs.append((self.count, self._pos, size))
        self.f.write(data)
        self.rows.write(row.tobytes() + size.to_bytes(8, "little"))
        self._pos += size
        self.count += 1

    def close(self) -> None:
        """Write the allocation table, the metadata and the header; the file is then complete."""
        table = np.array(self._allocs, dtype=ALLOC)
        self.f.write(table.tobytes())
        self.f.seek(self._meta_offset)
        self.f.write(self.metadata[: self.count].tobytes())
        header = np.zeros(1, dtype=HEADER)
        header[0] = (VERSION, len(FIELDS), self.page_size, self.count, self._pos)
        self.f.seek(0)
        self.f.write(header.tobytes())
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        self.rows.close()

    def abort(self) -> None:
        self.f.close()
        self.rows.close()


class BetonReader:
    """The images of a .beton written with :data:`FIELDS`: per sample its bytes, mode, width and height."""

    def __init__(self, path):
        self.path = str(path)
        header = np.fromfile(self.path, dtype=HEADER, count=1)
        if len(header) != 1 or header[0]["version"] != VERSION:
            raise ValueError(f"{self.path} is not a version-{VERSION} .beton file")
        header = header[0]
        n_fields, n = int(header["num_fields"]), int(header["num_samples"])
        desc = np.fromfile(self.path, dtype=FIELD_DESC, count=n_fields, offset=HEADER.itemsize)
        if tuple(desc["type_id"]) != TYPE_IDS:
            raise ValueError(f"{self.path} does not hold the fields (image, label) that fixres-fast writes")
        meta = np.fromfile(self.path, dtype=METADATA, count=n, offset=HEADER.itemsize + desc.nbytes)
        self.image = meta[METADATA.names[0]]
        self.labels = meta[METADATA.names[1]]
        size = os.path.getsize(self.path)
        allocs = np.fromfile(self.path, dtype=ALLOC, offset=int(header["alloc_table_ptr"]))
        by_ptr = allocs[np.argsort(allocs["ptr"], kind="stable")]
        at = np.searchsorted(by_ptr["ptr"], self.image["data_ptr"])
        if len(meta) != n or (at >= len(by_ptr)).any() or (by_ptr["ptr"][np.minimum(at, len(by_ptr) - 1)]
                                                             != self.image["data_ptr"]).any():
            raise ValueError(f"{self.path} is truncated or damaged: its tables do not match ({size} bytes)")
        self.sizes = by_ptr["size"][at].astype(np.int64)
        self._map = None

    def __len__(self) -> int:
        return len(self.image)

    def read(self, i: int) -> np.ndarray:
        """Sample ``i``'s image bytes (JPEG, or raw HWC RGB where :meth:`is_raw`), a view of the mapped file."""
        if self._map is None:
            import mmap

            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(self._map, dtype=np.uint8, count=int(self.sizes[i]), offset=int(self.image["data_ptr"][i]))

    def is_raw(self, i: int) -> bool:
        return int(self.image["mode"][i]) == RAW

    def __getstate__(self):  # DataLoader workers map the file again
        return {**self.__dict__, "_map": None}
