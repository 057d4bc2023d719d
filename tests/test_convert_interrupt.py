"""Interrupted conversions leave no half-written file under a final name; reruns resume or restart and say so."""
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fixres_fast.convert import ConvertConfig, convert, verify
from fixres_fast.errors import UserError

FINAL = ("*.beton", "*.rec", "*.idx", "*.index.tsv", "manifest.json", "classes.json")


def many_photos(root, photos, copies=25):
    """A folder tree of 2 classes x (copies x 10) real photos."""
    for c in range(2):
        d = root / "train" / f"class{c}"
        d.mkdir(parents=True)
        for k in range(copies):
            for j, p in enumerate(photos[c * 10:(c + 1) * 10]):
                shutil.copy(p, d / f"{k}_{j}.jpg")


def start(src, out, *extra):
    # --max-side 200 makes every image a re-encode: slow enough to be interrupted half-way
    cmd = [sys.executable, "-m", "fixres_fast.cli", "convert", "folder", str(src), str(out),
           "--max-side", "200", "--workers", "1", "--shards", "2", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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


def test_ctrl_c_cleans_up_and_says_so(tree, tmp_path):
    out = tmp_path / "out"
    proc = start(tree, out)
    wait_for_partial(proc, out)
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "interrupted" in text and "Traceback" not in text
    assert finals(out) == [] and not list(out.glob("*.partial"))


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
