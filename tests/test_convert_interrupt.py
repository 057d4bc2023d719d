"""Interrupted conversions leave no half-written file under a final name; reruns resume or restart and say so."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fixres_fast.convert import ConvertConfig, convert, verify
from fixres_fast.errors import UserError

from .conftest import needs

FINAL = ("*.beton", "*.rec", "*.idx", "*.index.tsv", "*.crc32", "manifest.json", "classes.json")


def many_photos(root, photos, copies=25):
    """A folder tree of 2 classes x (copies x 10) real photos."""
    for c in range(2):
        d = root / "train" / f"class{c}"
        d.mkdir(parents=True)
        for k in range(copies):
            for j, p in enumerate(photos[c * 10:(c + 1) * 10]):
                shutil.copy(p, d / f"{k}_{j}.jpg")


def command(src, out, *extra):
    # --max-side 200 makes every image a re-encode: slow enough to be interrupted half-way
    return [sys.executable, "-m", "fixres_fast.cli", "convert", "folder", str(src), str(out),
            "--max-side", "200", "--workers", "1", "--shards", "2", *extra]


def start(src, out, *extra, **popen):
    return subprocess.Popen(command(src, out, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def error_lines(text):
    return [s for s in text.splitlines() if s.startswith("Error: ")]


def _as_from_a_shell():
    """In the child: SIGINT as a terminal's shell leaves it (default, unblocked), whatever the test process has made
    of it (a process started with SIGINT ignored keeps it ignored, and Python then installs no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def wait_for_partial(proc, out, timeout=60):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if list(out.glob("*.partial")) and any(p.stat().st_size > 0 for p in out.glob("*.rec.partial")):
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.01)
    raise AssertionError("no partial file appeared")


def finals(out):
    return sorted(p.name for pat in FINAL for p in out.glob(pat))


@pytest.fixture(scope="module")
def tree(tmp_path_factory, photos):
    root = tmp_path_factory.mktemp("many")
    many_photos(root, photos)
    return root


@needs("ffcv", "dali")
def test_kill_9_leaves_only_partial_files_and_rerun_resumes(tree, tmp_path):
    out = tmp_path / "out"
    proc = start(tree, out)
    wait_for_partial(proc, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert finals(out) == [], "a killed run must leave nothing under a final name"
    assert list(out.glob("*.partial"))
    rerun = subprocess.run([sys.executable, "-m", "fixres_fast.cli", "convert", "folder", str(tree), str(out),
                            "--max-side", "200", "--workers", "1", "--shards", "2"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming: removing" in rerun.stdout and "partial file(s) left by an interrupted run" in rerun.stdout
    assert not list(out.glob("*.partial"))
    assert verify(out, workers=2, log=lambda *_: None)["train"]["count"] == 500


@needs("ffcv", "dali")
def test_ctrl_c_leaves_no_final_file_and_says_so_only(tree, tmp_path):
    """Ctrl-C at a terminal reaches the whole process group: the encoding processes too. One clean line."""
    out = tmp_path / "out"
    proc = start(tree, out, "--workers", "2", start_new_session=True, preexec_fn=_as_from_a_shell)
    wait_for_partial(proc, out)
    os.killpg(proc.pid, signal.SIGINT)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert error_lines(text) == ["Error: interrupted; no half-written file was left under a final name"], text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert finals(out) == []
    rerun = subprocess.run(command(tree, out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert not list(out.glob("*.partial")) and verify(out, workers=2, log=lambda *_: None)["train"]["count"] == 500


def checksums(out):
    return {f["name"]: f["sha256"] for s in json.loads((out / "manifest.json").read_text())["splits"].values()
            for f in s["files"]}


@needs("ffcv", "dali")
def test_kill_9_mid_split_resumes_at_the_last_checkpoint_with_the_same_bytes(tree, tmp_path):
    out = tmp_path / "out"
    proc = start(tree, out)
    state = out / ".convert-state.json"
    t0 = time.monotonic()
    while not (state.is_file() and "current" in json.loads(state.read_text() or "{}")):
        assert proc.poll() is None and time.monotonic() - t0 < 120, "no checkpoint was written"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert finals(out) == []
    at = json.loads(state.read_text())["current"]["position"]
    assert 0 < at < 500
    rerun = subprocess.run(command(tree, out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resuming: split train from image {at} of 500" in rerun.stdout, rerun.stdout
    assert not list(out.glob("*.partial"))
    whole = tmp_path / "whole"
    convert(ConvertConfig(layout="folder", src=str(tree), out=str(whole), max_side=200, shards=2, workers=2),
            log=lambda *_: None)
    assert checksums(out) == checksums(whole)
    splits = [json.loads((o / "manifest.json").read_text())["splits"] for o in (out, whole)]
    assert splits[0] == splits[1]  # counts, skipped files, re-encodes: all as in one run
    assert "train.crc32" in checksums(out)  # the records' CRCs too, cut back and resumed like the rest
    assert (out / "train.crc32").read_bytes() == (whole / "train.crc32").read_bytes()
    report = verify(out, workers=2, log=lambda *_: None)["train"]
    assert report["count"] == 500 and report["crc32"] == "ok"


@needs("ffcv", "dali")
def test_a_second_conversion_into_the_same_out_stops_at_once(tree, tmp_path):
    out = tmp_path / "out"
    first = start(tree, out)
    wait_for_partial(first, out)
    first.send_signal(signal.SIGSTOP)  # paused mid-conversion, lock held: the second cannot start after it ends
    try:
        second = subprocess.run(command(tree, out), capture_output=True, text=True, timeout=60)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    [line] = error_lines(second.stdout + second.stderr)
    assert f"is being written by another conversion (pid {first.pid} on host" in line, line
    text, _ = first.communicate(timeout=120)
    assert first.returncode == 0, text
    assert verify(out, workers=2, log=lambda *_: None)["train"]["count"] == 500


def test_rerun_of_finished_conversion_and_changed_options(tree, tmp_path, photos):
    src = tmp_path / "small" / "c"
    src.mkdir(parents=True)
    shutil.copy(photos[0], src)
    out = tmp_path / "out"
    cfg = ConvertConfig(layout="folder", src=str(tmp_path / "small"), out=str(out), workers=1)
    convert(cfg, log=lambda *_: None)
    lines = []
    convert(cfg, log=lines.append)
    assert lines == [f"{out} already holds this conversion, complete; nothing to do"]
    other = ConvertConfig(layout="folder", src=str(tmp_path / "small"), out=str(out), workers=1, max_side=300)
    with pytest.raises(UserError, match="--overwrite"):
        convert(other, log=lambda *_: None)
    lines = []
    m = convert(ConvertConfig(**{**other.__dict__, "overwrite": True}), log=lines.append)
    assert any(s.startswith("restarting from scratch (--overwrite)") for s in lines)
    assert m["options"]["max_side"] == 300


def test_a_changed_source_is_noticed(tmp_path, photos):
    src = tmp_path / "small" / "c"
    src.mkdir(parents=True)
    for p in photos[:3]:
        shutil.copy(p, src)
    cfg = ConvertConfig(layout="folder", src=str(tmp_path / "small"), out=str(tmp_path / "out"), workers=1)
    assert convert(cfg, log=lambda *_: None)["splits"]["train"]["count"] == 3
    next(src.iterdir()).unlink()
    with pytest.raises(UserError, match="files were added, removed or changed there since; pass --overwrite"):
        convert(cfg, log=lambda *_: None)
    again = convert(ConvertConfig(**{**cfg.__dict__, "overwrite": True}), log=lambda *_: None)
    assert again["splits"]["train"]["count"] == 2
    victim = next(src.iterdir())
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))  # same name and size
    with pytest.raises(UserError, match="files were added, removed or changed"):
        convert(cfg, log=lambda *_: None)
