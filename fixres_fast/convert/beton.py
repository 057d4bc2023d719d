"""A streaming writer of FFCV ``.beton`` files (format version 2).

FFCV's own ``DatasetWriter`` decodes every image and re-encodes it in its
workers. Here the images arrive already prepared (see :mod:`.image`), so the
writer only lays bytes out in FFCV's format: header, field descriptors, one
metadata row per sample, page-aligned data (a sample never crosses a page,
as FFCV's process cache requires) and the allocation table. The dtypes come
from FFCV itself, so FFCV's ``Reader`` and ``Loader`` read the result.

Fields: ``image`` (RGBImageField, 'jpg' or 'raw') and ``label`` (IntField).
"""
from __future__ import annotations

import os

import numpy as np

FIELDS = ("image", "label")
PAGE_SIZE = 8 << 20  # bytes; FFCV's DatasetWriter default (4 x 2 MiB)


class BetonWriter:
    """Write samples in order to ``path``; ``capacity`` bounds how many may come."""

    def __init__(self, path: str, capacity: int, page_size: int = PAGE_SIZE):
        from ffcv.fields import IntField, RGBImageField
        from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, FieldDescType, HeaderType, get_metadata_type

        self.version = CURRENT_VERSION
        self._alloc_type, self._header_type = ALLOC_TABLE_TYPE, HeaderType
        fields = [RGBImageField(), IntField()]
        self.metadata = np.zeros(max(capacity, 1), dtype=get_metadata_type(fields))
        desc = np.zeros(len(fields), dtype=FieldDescType)
        for i, (name, type_id) in enumerate(zip(FIELDS, (2, 1))):  # ffcv.types.TYPE_ID_HANDLER ids
            desc[i]["type_id"] = type_id
            desc[i]["name"][: len(name)] = np.frombuffer(name.encode("ascii"), dtype="<u1")
        self.page_size = page_size
        self.count = 0
        self._allocs: list[tuple[int, int, int]] = []
        self._meta_offset = HeaderType.itemsize + desc.nbytes
        start = self._meta_offset + self.metadata.nbytes
        self._pos = -(-start // page_size) * page_size  # data starts on a page boundary
        self.f = open(path, "wb")
        self.f.write(np.zeros(1, dtype=HeaderType).tobytes())
        self.f.write(desc.tobytes())
        self.f.seek(self._pos)

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
        row[0] = (1 if raw else 0, width, height, self._pos)  # mode: 0 jpg, 1 raw
        row[1] = label
        self._allocs.append((self.count, self._pos, size))
        self.f.write(data)
        self._pos += size
        self.count += 1

    def close(self) -> None:
        """Write the allocation table, the metadata and the header; the file is then complete."""
        table = np.array(self._allocs, dtype=self._alloc_type)
        self.f.write(table.tobytes())
        self.f.seek(self._meta_offset)
        self.f.write(self.metadata[: self.count].tobytes())
        header = np.zeros(1, dtype=self._header_type)
        header[0] = (self.version, len(FIELDS), self.page_size, self.count, self._pos)
        self.f.seek(0)
        self.f.write(header.tobytes())
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()

    def abort(self) -> None:
        self.f.close()
