"""Convert a source layout into FFCV ``.beton`` files and DALI RecordIO shards.

The work per image (read, check-decode, fix, re-encode when needed) runs in a
process pool; the main process streams the results, in order, into every
requested writer at once, so each image is prepared once for all formats.

Files are written under ``NAME.partial`` and renamed when complete, so an
interrupted run (Ctrl-C, kill -9) never leaves a half-written file under a
final name. Progress is kept in ``OUT/.convert-state.json``, per finished split
and, within a split, at a checkpoint every few hundred images (:mod:`.outputs`):
a rerun with the same options over the same source listing resumes there (and
writes the same bytes as an uninterrupted run); a rerun with other options, or
after files in SRC were added, removed or changed, restarts; each says so.
One conversion at a time writes OUT: it holds ``OUT/.convert.lock``.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import socket
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from ..artifacts import write_text
from ..errors import UserError
from ..records import JPEG_MAX_SIDE, MANIFEST, Manifest
from ..spec import k_test_image
from . import folder, herbarium, imagenet, inat, transcode
from .image import WRITE_MODES, prepare
from .index import escape_path
from .layout import Layout
from .manifest import classes_doc, manifest_doc, summarise
from .outputs import CHECKPOINT_EVERY, CRC_SUFFIX, PARTIAL, SplitWriter

LAYOUTS = ("imagenet", "inat", "herbarium", "folder")
FORMATS = ("beton", "recordio")
STATE = ".convert-state.json"
LOCK = ".convert.lock"  # held (flock) by the conversion writing OUT; names its pid and host


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
        for name, value, lo, hi in (("max-side", self.max_side, 16, JPEG_MAX_SIDE),
                                    ("jpeg-quality", self.jpeg_quality, 1, 100), ("shards", self.shards, 1, 100000),
                                    ("test-res", self.test_res, 1, JPEG_MAX_SIDE)):
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
    listing = source_listing(layout)
    out = Path(cfg.out)
    try:
        with _locked(out) as lock_fd:
            return _convert_locked(cfg, layout, listing, out, lock_fd, log)
    except OSError as e:
        error = _out_error(e, out)
        if error is None:
            raise
        raise error from None


def _convert_locked(cfg: ConvertConfig, layout: Layout, listing: dict, out: Path, lock_fd: int, log) -> dict:
    state = _start_or_resume(cfg, out, listing, log)
    if state.get("complete"):
        log(f"{out} already holds this conversion, complete; nothing to do")
        return Manifest.read(out).to_dict()
    for name, split in layout.splits.items():
        if name not in state["splits"] and not split.items:
            raise _empty_split(name, layout, [{"path": p, "reason": r} for p, r in split.skipped])
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
    pool = (get_context("fork").Pool(workers, initializer=_worker_start, initargs=(lock_fd,)) if workers > 1
            else _InProcess())
    with pool:
        for name, split in layout.splits.items():
            if name in state["splits"]:
                log(f"resuming: split {name} is already complete ({state['splits'][name]['count']} records), skipping")
                continue
            state["splits"][name] = _convert_split(cfg, out, name, split, pool, job, state, layout, listing, log)
            state.pop("current", None)
            _write_json(out / STATE, state)
    manifest = manifest_doc(cfg, layout, state["splits"], listing)
    _write_json(out / "classes.json", classes_doc(layout, state["splits"]))
    _write_json(out / MANIFEST, manifest.to_dict())
    state["complete"] = True
    _write_json(out / STATE, state)
    summarise(manifest, out, log)
    return manifest.to_dict()


def _worker_start(lock_fd: int) -> None:
    """In each encoding process: Ctrl-C is the main process's to handle, and the lock is the main process's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.close(lock_fd)


class _InProcess:
    """The Pool interface, run in this process (``--workers 1``)."""

    def imap(self, fn, items, chunksize=1):
        return map(fn, items)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def source_listing(layout: Layout) -> dict:
    """A digest of what the layout lists (every file's path, label, size and mtime; what it skipped), and the
    number and bytes of its images: a conversion is of SRC as it was, and a changed SRC is noticed."""
    h, images, size = hashlib.sha256(), 0, 0
    for name, split in layout.splits.items():
        h.update(f"split\t{escape_path(name)}\n".encode())
        for it in split.items:
            try:
                st = os.stat(it.path)
                sig = f"{st.st_size}\t{st.st_mtime_ns}"
                size += st.st_size
            except OSError as e:
                sig = f"unreadable {e.errno}"
            h.update(f"{escape_path(it.path)}\t{it.label}\t{sig}\n".encode())
            images += 1
        for path, reason in split.skipped:
            h.update(f"skipped\t{escape_path(path)}\t{escape_path(reason)}\n".encode())
    return {"sha256": h.hexdigest(), "images": images, "bytes": size}


@contextmanager
def _locked(out: Path):
    """Hold ``OUT/.convert.lock`` (flock: released when this process ends, however it ends); yields its descriptor."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "a process that is starting"
            raise UserError(f"{out} is being written by another conversion ({holder}); wait for it to finish, "
                            "or choose another OUT") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        yield fd
    finally:
        os.close(fd)


def _out_error(e: OSError, out: Path) -> UserError | None:
    """The one line for an error writing OUT, or None when ``e`` is not about OUT."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"{out}: no space left on its disk ({e.strerror}); free some space or choose another OUT, "
                         "then run the same command again")
    name = Path(os.fsdecode(e.filename)) if e.filename else None
    if name is None or not (_within(name, out) or _within(out, name)):
        return None
    return UserError(f"cannot write the conversion to {out}: {name}: {e.strerror}; "
                     "choose an OUT folder you can write to (or fix its permissions)")


def _within(path: Path, folder: Path) -> bool:
    return path.absolute().is_relative_to(folder.absolute())


def _start_or_resume(cfg: ConvertConfig, out: Path, listing: dict, log) -> dict:
    fingerprint = cfg.fingerprint()
    old = json.loads((out / STATE).read_text()) if (out / STATE).is_file() else None
    same_options = bool(old) and old["options"] == fingerprint
    same_source = bool(old) and old.get("source") == listing["sha256"]
    if same_options and same_source and not cfg.overwrite:
        _drop_stale_partials(cfg, out, old, log)
        return old
    if (out / MANIFEST).is_file() and not cfg.overwrite:
        if same_options and "source" not in old:
            raise UserError(f"{out} holds a conversion made by an earlier fixres-fast, which did not record the "
                            "listing of SRC, so it cannot tell whether SRC changed since; pass --overwrite to "
                            "convert it again, or choose another OUT")
        if same_options:
            raise UserError(f"{out} holds a finished conversion of {cfg.src} as it was: files were added, removed "
                            "or changed there since; pass --overwrite to convert it again, or choose another OUT")
        raise UserError(f"{out} holds a finished conversion made with other options; "
                        "pass --overwrite to replace it, or choose another OUT")
    if old or list(out.glob("*" + PARTIAL)):
        why = ("--overwrite" if cfg.overwrite else "the options differ from the interrupted run's" if old and not
               same_options else "files in SRC were added, removed or changed since the interrupted run" if old
               else "the interrupted run left no progress record")
        log(f"restarting from scratch ({why}): removing earlier outputs in {out}")
    _clear_outputs(out)
    state = {"options": fingerprint, "source": listing["sha256"], "splits": {}}
    _write_json(out / STATE, state)
    return state


def _drop_stale_partials(cfg: ConvertConfig, out: Path, state: dict, log) -> None:
    """Remove the partial files an interrupted run left, except those its last checkpoint resumes."""
    current = state.get("current")
    keep = set(SplitWriter(cfg, out, current["split"], 0, 0).partials()) if current else set()
    stale = [p for p in sorted(out.glob("*" + PARTIAL)) if p not in keep]
    if stale:
        log(f"resuming: removing {len(stale)} partial file(s) left by an interrupted run")
        for p in stale:
            p.unlink()


def _clear_outputs(out: Path) -> None:
    for pattern in ("*.beton", "*.rec", "*.idx", "*.index.tsv", "*" + CRC_SUFFIX, "*" + PARTIAL, MANIFEST, "classes.json",
                    STATE):
        for p in out.glob(pattern):
            p.unlink()


def _record_order(name: str, n: int, seed: int) -> list[int]:
    """Train splits are stored shuffled (DALI's reader shuffles within a buffer only); others in source order."""
    order = list(range(n))
    if name.startswith("train"):
        random.Random(seed).shuffle(order)
    return order


def _convert_split(cfg: ConvertConfig, out: Path, name: str, split, pool, job, state: dict, layout: Layout,
                   listing: dict, log) -> dict:
    items = [split.items[i] for i in _record_order(name, len(split.items), cfg.seed)]
    writer = SplitWriter(cfg, out, name, len(items), len(layout.classes))
    need = k_test_image(cfg.test_res)
    bar = tqdm(total=len(items), desc=f"convert {name}", unit="img", dynamic_ncols=True, mininterval=0.5)
    position = 0
    try:
        position = start = _open_split(writer, state.get("current"), split.skipped, len(items), log)
        bar.update(start)
        results = pool.imap(job, [it.path for it in items[start:]], chunksize=16)
        for position, (it, res) in enumerate(zip(items[start:], results), start + 1):
            bar.update()
            writer.add(position - 1, it.path, it.label, res, need)
            if isinstance(res, str):
                bar.set_postfix(skipped=len(writer.tally["skipped"]), refresh=False)
            if position % CHECKPOINT_EVERY == 0 and position < len(items):
                state["current"] = writer.checkpoint(position)
                _write_json(out / STATE, state)
        bar.close()
        if writer.count == 0:
            raise _empty_split(name, layout, writer.tally["skipped"])
        return writer.finish()
    except KeyboardInterrupt:
        bar.close()
        writer.close()  # the partial files stay: a rerun resumes at the last checkpoint
        raise
    except OSError as e:
        bar.close()
        written = writer.bytes_written()
        writer.abort()
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(out, name, state, listing, written, position) from None
        raise
    except BaseException:
        bar.close()
        writer.abort()
        raise


def _open_split(writer: SplitWriter, current: dict | None, skipped, n: int, log) -> int:
    """Open the split's files, at the last checkpoint where there is one; returns the source image to start at."""
    if current and current["split"] == writer.name:
        try:
            writer.resume(current)
            log(f"resuming: split {writer.name} from image {current['position']} of {n} "
                "(the interrupted run's last checkpoint)")
            return current["position"]
        except (OSError, ValueError) as e:
            log(f"restarting split {writer.name} from its first image: its partial files do not match the "
                f"interrupted run's last checkpoint ({e})")
            writer.abort()
    writer.start(skipped)
    return 0


def _empty_split(name: str, layout: Layout, skipped: list[dict]) -> UserError:
    if not skipped:
        return UserError(f"split {name!r} of {layout.source} holds no images; expected at least one image file "
                         "in it: add images, or remove the empty split")
    first = skipped[0]
    return UserError(f"split {name!r} of {layout.source}: all {len(skipped)} files were skipped, so it would hold "
                     f"no records (first: {first['path']}: {first['reason']}); fix or remove them")


def _disk_full(out: Path, name: str, state: dict, listing: dict, written: int, position: int) -> UserError:
    """The one line for a full disk, with an estimate of the space the whole conversion needs."""
    done = state["splits"].values()
    done_bytes = sum(f["bytes"] for s in done for f in s["files"])
    done_images = sum(s["count"] + len(s["skipped"]) for s in done)
    if done_images + position:
        need = (done_bytes + written) / (done_images + position) * listing["images"]
        basis = f"estimated from the {_size(done_bytes + written)} written for {done_images + position} images"
    else:
        need, basis = listing["bytes"], "about the size of the source, as nothing was written yet"
    free = shutil.disk_usage(out).free
    held = f", of which the finished splits hold {_size(done_bytes)}" if done_bytes else ""
    return UserError(f"{out}: no space left on its disk while writing split {name} (image {position}); its partial "
                     f"files were removed. The conversion needs about {_size(need)} ({basis}{held}) and {_size(free)} "
                     "is free there: free some space or choose another OUT, then run the same command again")


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _write_json(path: Path, doc) -> None:
    write_text(path, json.dumps(doc, indent=1))  # atomic: PATH.partial, fsync, rename
