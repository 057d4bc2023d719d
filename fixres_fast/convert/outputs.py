"""The files of one split while it is written: every output format at once, under ``NAME.partial``.

Every :data:`CHECKPOINT_EVERY` source images the writers are flushed and :meth:`SplitWriter.checkpoint`
returns where each file stands (its length, the record count, the tallies); the converter keeps that in
its state file. A run killed later leaves the ``.partial`` files longer than the checkpoint says; the
next run cuts them back to it (:meth:`SplitWriter.resume`) and carries on from the next image, so the
finished files hold the same bytes as those of an uninterrupted run.

``NAME.crc32`` holds a CRC-32 of each record's stored bytes (the JPEG, or a raw record's pixels: exactly what a
loader reads), little-endian uint32 in record order; loaders compare it as they read (:data:`CRC_SUFFIX`).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import zlib
from pathlib import Path

from .beton import BetonWriter
from .index import HEADER, index_line, open_index
from .recordio import RecordIOWriter, write_dali_index

#: source images between two checkpoints: a killed run redoes at most this many
CHECKPOINT_EVERY = 256
PARTIAL = ".partial"
#: ``NAME + CRC_SUFFIX``: the CRC-32 of each record's stored bytes, one little-endian uint32 per record
CRC_SUFFIX = ".crc32"


def partial(out: Path, final: str) -> Path:
    """Where ``final`` is written until its split is complete."""
    return out / (final + PARTIAL)


class SplitWriter:
    """``NAME.index.tsv``, ``NAME.crc32``, ``NAME.beton`` (+ its row file for resumes), RecordIO shards of a split."""

    def __init__(self, cfg, out: Path, name: str, capacity: int, num_classes: int):
        self.out, self.name, self.capacity = out, name, capacity
        self.raw, self.n_shards = cfg.write_mode == "raw", cfg.shards if "recordio" in cfg.formats else 0
        self.crc_name = name + CRC_SUFFIX
        self.finals = [f"{name}.index.tsv", self.crc_name] + ([f"{name}.beton"] if "beton" in cfg.formats else [])
        self.stems = [f"{name}-{k:05d}-of-{self.n_shards:05d}" for k in range(self.n_shards)]
        self.finals += [s + ext for s in self.stems for ext in (".rec", ".idx")]
        self.finals += [f"{name}.idx"] if self.n_shards else []  # DALI's index over all shards, written at the end
        self.rows = partial(out, f"{name}.beton-rows")
        self.num_classes = num_classes
        self.tally: dict = {}
        self.index, self.crc, self.beton, self.shards = None, None, None, []

    def partials(self) -> list[Path]:
        return [partial(self.out, f) for f in self.finals] + [self.rows]

    @property
    def count(self) -> int:
        return self.tally["count"]

    def start(self, skipped: list[tuple[str, str]]) -> None:
        """Open new files; ``skipped`` are the files the layout already left out, with their reasons."""
        self.tally = {"count": 0, "per_class": [0] * self.num_classes, "skipped": [{"path": p, "reason": r}
                      for p, r in skipped], "reencoded": {}, "shrunk": 0, "shrunk_max": 0.0}
        self.index = open_index(partial(self.out, f"{self.name}.index.tsv"))
        self.index.write(HEADER)
        self.crc = open(partial(self.out, self.crc_name), "wb")
        if f"{self.name}.beton" in self.finals:
            self.beton = BetonWriter(str(partial(self.out, f"{self.name}.beton")), self.capacity, str(self.rows))
        self.shards = [RecordIOWriter(str(partial(self.out, s + ".rec")), str(partial(self.out, s + ".idx")))
                       for s in self.stems]

    def resume(self, at: dict) -> None:
        """Re-open the files at checkpoint ``at``; raises ValueError where they do not hold what it says."""
        missing = [n for n in at["files"] if not partial(self.out, n).is_file()]
        if missing:
            raise ValueError(f"{missing[0]}{PARTIAL} is missing")
        index, index_bytes = partial(self.out, f"{self.name}.index.tsv"), at["files"][f"{self.name}.index.tsv"]["bytes"]
        if index.stat().st_size < index_bytes:
            raise ValueError(f"{index} is shorter than at the checkpoint")
        crc = partial(self.out, self.crc_name)
        if self.crc_name not in at["files"]:  # a checkpoint of an earlier version: the split restarts
            raise ValueError(f"the checkpoint records no {self.crc_name}")
        if crc.stat().st_size < at["files"][self.crc_name]["bytes"]:
            raise ValueError(f"{crc} is shorter than at the checkpoint")
        self.tally = at["tally"]
        os.truncate(index, index_bytes)
        self.index = open_index(partial(self.out, f"{self.name}.index.tsv"), "a")
        os.truncate(crc, at["files"][self.crc_name]["bytes"])
        self.crc = open(crc, "ab")
        if f"{self.name}.beton" in self.finals:
            self.beton = BetonWriter.resume(str(partial(self.out, f"{self.name}.beton")), self.capacity,
                                            str(self.rows), at["files"][f"{self.name}.beton"])
        self.shards = [RecordIOWriter.resume(str(partial(self.out, s + ".rec")), str(partial(self.out, s + ".idx")),
                                             at["files"][s + ".rec"]) for s in self.stems]

    def checkpoint(self, position: int) -> dict:
        """Flush every file; what :meth:`resume` needs to carry on after source image ``position``."""
        self.index.flush()
        self.crc.flush()
        files = {f"{self.name}.index.tsv": {"bytes": os.fstat(self.index.fileno()).st_size},
                 self.crc_name: {"bytes": os.fstat(self.crc.fileno()).st_size}}
        if self.beton:
            files[f"{self.name}.beton"] = self.beton.checkpoint()
        for s, w in zip(self.stems, self.shards):
            files[s + ".rec"] = w.checkpoint()
        return {"split": self.name, "position": position, "files": files, "tally": self.tally}

    def add(self, position: int, path: str, label: int, res, need: int) -> None:
        """Write one prepared image (``res``), or count it as skipped (``res`` is the reason)."""
        t = self.tally
        if isinstance(res, str):
            t["skipped"].append({"path": path, "reason": res})
            return
        key = t["count"]
        if self.beton is not None:
            self.beton.write(res.data, res.width, res.height, label, raw=self.raw)
        if self.shards:  # contiguous shards over the candidate list; skipped files only make a shard shorter
            self.shards[position * self.n_shards // max(self.capacity, 1)].write(res.data, label, key)
        self.index.write(index_line(key, label, path))
        self.crc.write(struct.pack("<I", zlib.crc32(res.data)))
        t["count"] += 1
        t["per_class"][label] += 1
        for fix in filter(None, res.fix.split(",")):
            t["reencoded"][fix] = t["reencoded"].get(fix, 0) + 1
        if "resized" in res.fix and min(res.width, res.height) < need:
            t["shrunk"] += 1
            t["shrunk_max"] = max(t["shrunk_max"], need * max(res.width, res.height) / min(res.width, res.height))

    def bytes_written(self) -> int:
        """Disk space the partial files take (allocated blocks: the .beton's header gap takes none)."""
        return sum(p.stat().st_blocks * 512 for p in self.partials() if p.is_file())

    def finish(self) -> dict:
        """Close, rename to final names, checksum. Returns the split's entry of the manifest."""
        for w in ([self.beton] if self.beton else []) + self.shards:
            w.close()
        self.index.close()
        self.crc.close()
        self.rows.unlink(missing_ok=True)
        dali = None
        if self.shards:
            used = write_dali_index(self.shards, str(partial(self.out, f"{self.name}.idx")))
            dali = {"rec": [self.stems[i] + ".rec" for i in used], "idx": f"{self.name}.idx"}
        files = []
        for final in self.finals:
            path = self.out / final
            os.replace(partial(self.out, final), path)
            files.append({"name": final, "bytes": path.stat().st_size, "sha256": sha256(path)})
        t = self.tally
        return {
            "count": t["count"],
            "per_class": t["per_class"],
            "skipped": t["skipped"],
            "reencoded": dict(t["reencoded"]),
            "shrunk_below_test_res": t["shrunk"],
            "max_side_for_test_res": int(t["shrunk_max"]) + 1 if t["shrunk"] else None,
            "index": f"{self.name}.index.tsv",
            "files": files,
            "recordio": dali,
        }

    def close(self) -> None:
        """Close the files as they are (an interrupted run: the next one resumes at the last checkpoint)."""
        for f in [self.index, self.crc] + ([self.beton] if self.beton else []) + self.shards:
            if f is not None:
                with contextlib.suppress(OSError):  # a full disk fails the last flush; the files are closed anyway
                    f.close() if f in (self.index, self.crc) else f.abort()

    def abort(self) -> None:
        """Close and remove every partial file of the split."""
        self.close()
        for p in self.partials():
            p.unlink(missing_ok=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
