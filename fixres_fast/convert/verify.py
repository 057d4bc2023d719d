"""Re-read every record of a conversion through FFCV's Loader and DALI's ``readers.mxnet``.

Checks, per split: each file's size and SHA-256 against the manifest, each record's bytes against its
CRC-32 in ``NAME.crc32`` (in the .beton and in the RecordIO shards: the CRCs the loaders compare), that every
image decodes, and that record counts and labels match the manifest's index.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..compat import quiet_numba_finalizers
from ..errors import UserError
from ..records import Manifest, Split
from .index import read_index
from .outputs import CRC_SUFFIX, sha256

BATCH = 256
PROBE = 32  # px: images are decoded, then cropped small; the decode is what is checked


class VerifyError(UserError):
    pass


def verify(out: str | Path, workers: int = 0, log=print) -> dict:
    out = Path(out)
    manifest = Manifest.read(out)
    workers = workers or os.cpu_count() or 1
    _require_readers(manifest)
    report = {}
    for name, split in manifest.splits.items():
        _check_files(out, split)
        labels = expected_labels(out / split.index)
        if len(labels) != split.count:
            raise VerifyError(f"{name}: index lists {len(labels)} records, manifest says {split.count}")
        names = split.names
        report[name] = {"count": split.count}
        if name + CRC_SUFFIX in names:
            _check_crcs(out, name, manifest, len(labels))
            report[name]["crc32"] = "ok"
        beton = [n for n in names if n.endswith(".beton")]
        if beton:
            _compare(name, "beton", read_beton_labels(out / beton[0], workers, f"verify {name} beton"), labels)
            report[name]["beton"] = "ok"
        if split.recordio:
            rio = split.recordio
            got = read_recordio_labels([out / r for r in rio.rec], out / rio.idx, workers, f"verify {name} recordio")
            _compare(name, "recordio", got, labels)
            report[name]["recordio"] = "ok"
        log(f"{name}: {split.count} records; "
            + ", ".join(f"{k} ok" for k in ("crc32", "beton", "recordio") if k in report[name]))
    return report


def _require_readers(manifest: Manifest) -> None:
    """The one-line error, before any work, when FFCV (for a .beton) or DALI (for RecordIO) is not installed."""
    from ..loaders import require

    skip = "skip verifying (the loaders still check each record's CRC-32 as they read it)"
    splits = manifest.splits.values()
    if any(n.endswith(".beton") for s in splits for n in s.names):
        require("ffcv", "verify (it re-reads each .beton through FFCV's Loader)", skip)
    if any(s.recordio for s in splits):
        require("dali", "verify (it re-reads RecordIO shards through DALI)", skip)


def expected_labels(index_path: Path) -> np.ndarray:
    return read_index(index_path)[0]


def _check_files(out: Path, split: Split) -> None:
    for f in split.files:
        p = out / f.name
        if not p.is_file():
            raise VerifyError(f"{p} is missing")
        if p.stat().st_size != f.bytes or sha256(p) != f.sha256:
            raise VerifyError(f"{p} does not match the checksum in the manifest: it changed or is damaged")


def _check_crcs(out: Path, name: str, manifest: Manifest, count: int) -> None:
    """Every record's bytes, in each format, against the CRC-32 the conversion recorded (one pass, no decode)."""
    import zlib

    from ..loaders.source import Records
    from .beton import BetonReader

    crcs = np.fromfile(out / (name + CRC_SUFFIX), dtype="<u4")
    if len(crcs) != count:
        raise VerifyError(f"{name}{CRC_SUFFIX} holds {len(crcs)} CRCs, the index lists {count} records")
    records = Records(out, name, manifest)
    readers = [("recordio", records)] if records.recs else []
    if records.beton is not None:
        readers.append(("beton", BetonReader(records.beton)))
    for fmt, reader in readers:
        for i in range(count):
            if zlib.crc32(reader.read(i)) != crcs[i]:
                raise VerifyError(f"{name} {fmt}: {records.describe(i)} does not match its CRC-32 in "
                                  f"{name}{CRC_SUFFIX}: it is damaged; re-convert")


def _compare(split: str, fmt: str, got: np.ndarray, want: np.ndarray) -> None:
    if len(got) != len(want):
        raise VerifyError(f"{split} {fmt}: read {len(got)} records, manifest says {len(want)}")
    bad = np.flatnonzero(got != want)
    if len(bad):
        raise VerifyError(f"{split} {fmt}: {len(bad)} labels differ from the index, first at record {bad[0]}")


def _read_labels(batches, total: int, desc: str | None) -> np.ndarray:
    """The labels of ``batches`` ((images, labels) pairs), with a progress bar in images/s when ``desc`` is given."""
    from tqdm import tqdm

    out = []
    with tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, mininterval=0.5, disable=desc is None) as bar:
        for lab in batches:
            out.append(np.asarray(lab).reshape(-1))
            bar.update(len(out[-1]))
    return np.concatenate(out or [np.zeros(0)]).astype(np.int64)


def read_beton_labels(path: Path, workers: int, desc: str | None = None) -> np.ndarray:
    """Decode every image of a .beton with FFCV's Loader; return the labels in record order (``desc``: a progress bar)."""
    from ..compat import torch_threads_kept

    with torch_threads_kept():  # FFCV sets torch's threads on import, and to its workers in Loader and each epoch
        from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
        from ffcv.loader import Loader, OrderOption

        quiet_numba_finalizers()
        loader = Loader(str(path), batch_size=BATCH, num_workers=workers, order=OrderOption.SEQUENTIAL,
                        drop_last=False, pipelines={"image": [CenterCropRGBImageDecoder((PROBE, PROBE), 1.0)],
                                                    "label": [IntDecoder()]})
        return _read_labels((lab for _, lab in loader), loader.reader.num_samples, desc)


def read_recordio_labels(recs: list[Path], index: Path, workers: int, desc: str | None = None) -> np.ndarray:
    """Decode every image of RecordIO shards with DALI on the CPU; return the labels in record order.

    ``index`` is the split's DALI index (offsets across all shards), see :func:`.recordio.write_dali_index`.
    """
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.plugin.base_iterator import LastBatchPolicy
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    @pipeline_def(batch_size=BATCH, num_threads=workers, device_id=None)
    def pipe():
        jpegs, labels = fn.readers.mxnet(path=[str(r) for r in recs], index_path=[str(index)],
                                         random_shuffle=False, name="reader")
        images = fn.resize(fn.decoders.image(jpegs, device="cpu"), size=[PROBE, PROBE])
        return images, labels

    it = DALIGenericIterator([pipe()], ["image", "label"], reader_name="reader", last_batch_policy=LastBatchPolicy.PARTIAL)
    total = sum(1 for line in Path(index).read_text().splitlines() if line.strip())  # one line per record
    return _read_labels((b[0]["label"].numpy() for b in it), total, desc)
