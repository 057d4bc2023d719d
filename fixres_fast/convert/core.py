"""Convert a source layout into FFCV ``.beton`` files and DALI RecordIO shards.

The work per image (read, check-decode, fix, re-encode when needed) runs in a
process pool; the main process streams the results, in order, into every
requested writer at once, so each image is prepared once for all formats.

Files are written under ``NAME.partial`` and renamed when complete, so an
interrupted run (Ctrl-C, kill -9) never leaves a half-written file under a
final name. Progress is kept per split in ``OUT/.convert-state.json``: a rerun
with the same options resumes after the last finished split, a rerun with
other options restarts, and both say so.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from ..spec import k_test_image
from . import folder, herbarium, imagenet, inat, transcode
from .beton import BetonWriter
from .image import WRITE_MODES, prepare
from .layout import Layout
from .manifest import classes_doc, manifest_doc, summarise
from .recordio import RecordIOWriter, write_dali_index

LAYOUTS = ("imagenet", "inat", "herbarium", "folder")
FORMATS = ("beton", "recordio")
STATE = ".convert-state.json"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ConvertConfig:
    layout: str  # one of LAYOUTS
    src: str
    out: str
    formats: tuple[str, ...] = FORMATS
    max_side: int = 512  # px, long side of stored images
    jpeg_quality: int = 90
    sequential: bool = True  # rewrite progressive JPEGs as sequential ones, losslessly (convert/transcode.py)
    write_mode: str = "jpg"  # 'jpg' or 'raw' (beton only; RecordIO always holds JPEG)
    shards: int = 1  # RecordIO shards per split
    workers: int = 0  # 0: all cores
    year: int | None = None  # iNaturalist only
    train_set: str | None = None  # iNaturalist 2021 only: 'train' or 'train_mini' (None: train.json)
    val_labels: str | None = None  # ImageNet only: LOC_val_solution.csv for a flat val/ (None: searched for)
    test_res: int = 288  # largest intended K_test, for the --max-side warning
    seed: int = 0  # order of records in train splits
    overwrite: bool = False

    def check(self) -> None:
        if self.layout not in LAYOUTS:
            raise UserError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if not self.formats or set(self.formats) - set(FORMATS):
            raise UserError(f"formats must be among {', '.join(FORMATS)}, got {', '.join(self.formats) or 'none'}")
        if self.write_mode not in WRITE_MODES:
            raise UserError(f"unknown write mode {self.write_mode!r}; choose one of {', '.join(WRITE_MODES)}")
        if self.write_mode == "raw" and "recordio" in self.formats:
            raise UserError("--write-mode raw applies to .beton only; use --format beton with it")
        for name, value, lo, hi in (("max-side", self.max_side, 16, 65535), ("jpeg-quality", self.jpeg_quality, 1, 100),
                                    ("shards", self.shards, 1, 100000), ("test-res", self.test_res, 1, 65535)):
            if not lo <= value <= hi:
                raise UserError(f"--{name} must be between {lo} and {hi}, got {value}")

    def fingerprint(self) -> dict:
        """The options that decide the output bytes (workers and overwrite do not)."""
        d = asdict(self)
        for k in ("workers", "overwrite", "out"):
            d.pop(k)
        d["src"] = str(Path(self.src).resolve())
        d["formats"] = sorted(self.formats)
        return d


def scan(cfg: ConvertConfig) -> Layout:
    if cfg.layout == "inat":
        if cfg.year is None:
            raise UserError("iNaturalist needs --year (2017, 2018, 2019 or 2021)")
        return inat.scan(cfg.src, cfg.year, cfg.train_set)
    if cfg.layout == "imagenet":
        return imagenet.scan(cfg.src, cfg.val_labels)
    return {"herbarium": herbarium.scan, "folder": folder.scan}[cfg.layout](cfg.src)


def convert(cfg: ConvertConfig, log=print) -> dict:
    """Run the conversion; returns the manifest (also written to OUT/manifest.json)."""
    cfg.check()
    layout = scan(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state = _start_or_resume(cfg, out, log)
    if state.get("complete"):
        log(f"{out} already holds this conversion, complete; nothing to do")
        return json.loads((out / MANIFEST).read_text())
    need = k_test_image(cfg.test_res)
    if need > cfg.max_side:
        log(f"warning: --max-side {cfg.max_side} is below K_test^image = {need} px that --test-res {cfg.test_res} "
            f"needs on the short side; every image will be upsampled at test time. Use --max-side >= {need}.")
    workers = cfg.workers or os.cpu_count() or 1
    if cfg.sequential and cfg.write_mode == "jpg" and not transcode.available():
        log("warning: libturbojpeg is not installed (apt install libturbojpeg0): progressive JPEGs are stored as "
            "they are, not rewritten as sequential ones, and decode 2-2.7x slower")
    job = partial(prepare, max_side=cfg.max_side, jpeg_quality=cfg.jpeg_quality, write_mode=cfg.write_mode,
                  sequential=cfg.sequential)
    with get_context("fork").Pool(workers) if workers > 1 else _InProcess() as pool:
        for name, split in layout.splits.items():
            if name in state["splits"]:
                log(f"resuming: split {name} is already complete ({state['splits'][name]['count']} records), skipping")
                continue
            state["splits"][name] = _convert_split(cfg, out, name, split, pool, job, len(layout.classes))
            _write_json(out / STATE, state)
    manifest = manifest_doc(cfg, layout, state["splits"])
    _write_json(out / "classes.json", classes_doc(layout, state["splits"]))
    _write_json(out / MANIFEST, manifest)
    state["complete"] = True
    _write_json(out / STATE, state)
    summarise(manifest, out, log)
    return manifest


class _InProcess:
    """The Pool interface, run in this process (``--workers 1``)."""

    def imap(self, fn, items, chunksize=1):
        return map(fn, items)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _start_or_resume(cfg: ConvertConfig, out: Path, log) -> dict:
    fingerprint = cfg.fingerprint()
    old = json.loads((out / STATE).read_text()) if (out / STATE).is_file() else None
    partials = sorted(out.glob("*.partial"))
    if old and old["options"] == fingerprint and not cfg.overwrite:
        if partials:
            log(f"resuming: removing {len(partials)} partial file(s) left by an interrupted run")
            for p in partials:
                p.unlink()
        return old
    if (out / MANIFEST).is_file() and not cfg.overwrite:
        raise UserError(f"{out} holds a finished conversion made with other options; "
                        "pass --overwrite to replace it, or choose another OUT")
    if old or partials:
        why = ("--overwrite" if cfg.overwrite else "the options differ from the interrupted run's" if old
               else "the interrupted run left no progress record")
        log(f"restarting from scratch ({why}): removing earlier outputs in {out}")
    _clear_outputs(out)
    state = {"options": fingerprint, "splits": {}}
    _write_json(out / STATE, state)
    return state


def _clear_outputs(out: Path) -> None:
    for pattern in ("*.beton", "*.rec", "*.idx", "*.index.tsv", "*.partial", MANIFEST, "classes.json", STATE):
        for p in out.glob(pattern):
            p.unlink()


def _record_order(name: str, n: int, seed: int) -> list[int]:
    """Train splits are stored shuffled (DALI's reader shuffles within a buffer only); others in source order."""
    order = list(range(n))
    if name.startswith("train"):
        random.Random(seed).shuffle(order)
    return order


def _convert_split(cfg: ConvertConfig, out: Path, name: str, split, pool, job, num_classes: int) -> dict:
    items = [split.items[i] for i in _record_order(name, len(split.items), cfg.seed)]
    outputs = _open_writers(cfg, out, name, len(items))
    skipped = [{"path": p, "reason": r} for p, r in split.skipped]
    fixes, per_class, shrunk = Counter(), [0] * num_classes, []
    need = k_test_image(cfg.test_res)
    bar = tqdm(total=len(items), desc=f"convert {name}", unit="img", dynamic_ncols=True, mininterval=0.5)
    try:
        results = pool.imap(job, [it.path for it in items], chunksize=16)
        for j, (it, res) in enumerate(zip(items, results)):
            bar.update()
            if isinstance(res, str):
                skipped.append({"path": it.path, "reason": res})
                bar.set_postfix(skipped=len(skipped), refresh=False)
                continue
            _write_record(outputs, res, it, j, per_class)
            for fix in filter(None, res.fix.split(",")):
                fixes[fix] += 1
            if "resized" in res.fix and min(res.width, res.height) < need:
                shrunk.append(need * max(res.width, res.height) / min(res.width, res.height))
        bar.close()
        written = _finish_writers(outputs, out)
    except BaseException:
        bar.close()
        _abort_writers(outputs)
        raise
    count = outputs["count"]
    return {
        "count": count,
        "per_class": per_class,
        "skipped": skipped,
        "reencoded": dict(fixes),
        "shrunk_below_test_res": len(shrunk),
        "max_side_for_test_res": int(max(shrunk)) + 1 if shrunk else None,
        "index": f"{name}.index.tsv",
        **written,
    }


def _open_writers(cfg: ConvertConfig, out: Path, name: str, capacity: int) -> dict:
    outputs = {"count": 0, "split": name, "shards": [], "beton": None, "partials": [], "shard_of": None}
    outputs["index"] = open(_partial(out, f"{name}.index.tsv", outputs), "w")
    outputs["index"].write("record\tlabel\tpath\n")
    if "beton" in cfg.formats:
        outputs["beton"] = BetonWriter(str(_partial(out, f"{name}.beton", outputs)), capacity)
        outputs["raw"] = cfg.write_mode == "raw"
    if "recordio" in cfg.formats:
        n = cfg.shards
        for k in range(n):
            stem = f"{name}-{k:05d}-of-{n:05d}"
            rec, idx = _partial(out, stem + ".rec", outputs), _partial(out, stem + ".idx", outputs)
            outputs["shards"].append(RecordIOWriter(str(rec), str(idx)))
        # contiguous shards over the candidate list; skipped files only make a shard shorter
        outputs["shard_of"] = lambda j: j * n // max(capacity, 1)
        outputs["dali_index"] = _partial(out, f"{name}.idx", outputs)
    return outputs


def _partial(out: Path, final: str, outputs: dict) -> Path:
    """Where ``final`` is written until the split is complete."""
    outputs["partials"].append(final)
    return out / (final + ".partial")


def _write_record(outputs: dict, res, item, position: int, per_class: list[int]) -> None:
    key = outputs["count"]
    if outputs["beton"] is not None:
        outputs["beton"].write(res.data, res.width, res.height, item.label, raw=outputs.get("raw", False))
    if outputs["shards"]:
        outputs["shards"][outputs["shard_of"](position)].write(res.data, item.label, key)
    outputs["index"].write(f"{key}\t{item.label}\t{item.path}\n")
    outputs["count"] += 1
    per_class[item.label] += 1


def _finish_writers(outputs: dict, out: Path) -> dict:
    """Close, rename to final names, checksum. Returns the split's file list and what DALI reads."""
    for w in ([outputs["beton"]] if outputs["beton"] else []) + outputs["shards"]:
        w.close()
    outputs["index"].close()
    dali = None
    if outputs["shards"]:
        used = write_dali_index(outputs["shards"], str(outputs["dali_index"]))
        recs = [Path(outputs["shards"][i].rec.name).name.removesuffix(".partial") for i in used]
        dali = {"rec": recs, "idx": outputs["dali_index"].name.removesuffix(".partial")}
    files = []
    for final in outputs["partials"]:
        os.replace(out / (final + ".partial"), out / final)
        files.append({"name": final, "bytes": (out / final).stat().st_size, "sha256": sha256(out / final)})
    return {"files": files, "recordio": dali}


def _abort_writers(outputs: dict) -> None:
    for w in ([outputs["beton"]] if outputs["beton"] else []) + outputs["shards"]:
        w.abort()
    outputs["index"].close()
    for final in outputs["partials"]:
        (Path(outputs["index"].name).parent / (final + ".partial")).unlink(missing_ok=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, doc) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)
