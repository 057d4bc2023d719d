"""MXNet RecordIO shards (``.rec`` + ``.idx``) that ``nvidia.dali.fn.readers.mxnet`` reads.

Each record is ``magic, length`` (two little-endian uint32), then an image
header ``flag, label, id, id2`` (uint32, float32, uint64, uint64) and the
image bytes, padded to 4 bytes. The ``.idx`` file has one ``key<TAB>offset``
line per record; it is written here directly, since MXNet's rec2idx needs MXNet.

DALI reads several ``.rec`` files as one data set but takes a single index whose
offsets run across the files concatenated in order (``dali_index``); each shard
also gets its own MXNet-style ``.idx`` with offsets local to that file.
"""
from __future__ import annotations

import os
import struct

MAGIC = 0xCED7230A
IMAGE_HEADER = struct.Struct("<IfQQ")
RECORD_HEADER = struct.Struct("<II")
MAX_RECORD = (1 << 29) - 1  # the length field has 29 bits


class RecordIOWriter:
    def __init__(self, rec_path: str, idx_path: str):
        self.rec = open(rec_path, "wb")
        self.idx = open(idx_path, "w")
        self.count = 0
        self._pos = 0
        self.offsets: list[tuple[int, int]] = []  # (key, offset in this file)

    @classmethod
    def resume(cls, rec_path: str, idx_path: str, at: dict) -> "RecordIOWriter":
        """The writer as it was when :meth:`checkpoint` returned ``at``; later bytes are cut off."""
        self = cls.__new__(cls)
        if os.path.getsize(rec_path) < at["rec_bytes"] or os.path.getsize(idx_path) < at["idx_bytes"]:
            raise ValueError(f"{rec_path} or its .idx is shorter than at the checkpoint")
        os.truncate(rec_path, at["rec_bytes"])
        os.truncate(idx_path, at["idx_bytes"])
        with open(idx_path) as f:
            self.offsets = [(int(k), int(p)) for k, p in (line.split("\t") for line in f)]
        if len(self.offsets) != at["count"]:
            raise ValueError(f"{idx_path} lists {len(self.offsets)} records, the checkpoint says {at['count']}")
        self.count, self._pos = at["count"], at["rec_bytes"]
        self.rec, self.idx = open(rec_path, "ab"), open(idx_path, "a")
        return self

    def checkpoint(self) -> dict:
        """Flush what was written; the returned dict lets :meth:`resume` carry on from here."""
        self.rec.flush()
        self.idx.flush()
        return {"count": self.count, "rec_bytes": self._pos, "idx_bytes": os.fstat(self.idx.fileno()).st_size}

    def write(self, data: bytes, label: int, key: int) -> None:
        payload = IMAGE_HEADER.pack(0, float(label), key, 0) + data
        if len(payload) > MAX_RECORD:
            raise ValueError(f"record {key} is {len(payload)} bytes; RecordIO allows at most {MAX_RECORD}")
        pad = -len(payload) % 4
        self.idx.write(f"{key}\t{self._pos}\n")
        self.offsets.append((key, self._pos))
        self.rec.write(RECORD_HEADER.pack(MAGIC, len(payload)) + payload + b"\0" * pad)
        self._pos += RECORD_HEADER.size + len(payload) + pad
        self.count += 1

    def close(self) -> None:
        for f in (self.rec, self.idx):
            f.flush()
            os.fsync(f.fileno())
            f.close()

    def abort(self) -> None:
        self.rec.close()
        self.idx.close()


def write_dali_index(shards: list[RecordIOWriter], path: str) -> list[int]:
    """One index over the non-empty shards, in order; returns their positions in ``shards``.

    DALI's reader walks the files by cumulative size and cannot step over an empty file,
    so empty shards are left out of the list it is given.
    """
    used = [i for i, s in enumerate(shards) if s.count]
    base = 0
    with open(path, "w") as f:
        for i in used:
            for key, pos in shards[i].offsets:
                f.write(f"{key}\t{base + pos}\n")
            base += shards[i]._pos
    return used


def read_records(rec_path: str):
    """Yield (key, label, image bytes) from a ``.rec`` file, in file order."""
    with open(rec_path, "rb") as f:
        while header := f.read(RECORD_HEADER.size):
            magic, length = RECORD_HEADER.unpack(header)
            if magic != MAGIC:
                raise ValueError(f"{rec_path}: bad record magic at offset {f.tell() - RECORD_HEADER.size}")
            payload = f.read(length)
            f.read(-length % 4)
            flag, label, key, _ = IMAGE_HEADER.unpack_from(payload)
            yield key, int(label), payload[IMAGE_HEADER.size + 4 * flag:]
