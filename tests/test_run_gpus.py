"""`fixres-fast run --gpus N`: the train stages on N processes through torchrun (here N gloo CPU processes, as CI
runs it), learning what `fixres-fast train --gpus N` learns; SIGTERM and kill -9 mid-stage, then the same command,
give the same weights; --gpus is part of the train stages' settings; and the paths that cannot work are one line."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from fixres_fast.cli import main

#: A tiny recipe: 96 composites of 48 px, fixres_cnn at K_train 32, 3 epochs of 6 steps per process, B = 16.
TINY = """
[common]
backend = "torch"
device = "cpu"
amp = "off"
workers = 1
seed = 0

[convert.c]
sample = "composites"
train_images = 96
val_images = 32
size = 48

[train]
arch = "fixres_cnn"
k_train = [32]

[train.recipe]
epochs = 3
batch_size = 16
lr = 0.05
schedule = "cosine"
repeats = 1

[evaluate]
k_test = [32]
"""
#: `fixres-fast train` with TINY's [train] settings.
TRAIN = ["--arch", "fixres_cnn", "--res", "32", "--epochs", "3", "--batch-size", "16", "--lr", "0.05",
         "--schedule", "cosine", "--repeats", "1", "--backend", "torch", "--device", "cpu", "--amp", "off",
         "--workers", "1"]


def cli(*args):
    return [sys.executable, "-m", "fixres_fast.cli", *args]


def weights(path):
    return torch.load(path, weights_only=False)["model"]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def two(recipe, tmp_path_factory):
    """The tiny recipe run uninterrupted with --gpus 2."""
    out = tmp_path_factory.mktemp("two") / "out"
    done = subprocess.run(cli("run", str(recipe), "--out", str(out), "--gpus", "2"), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


def test_the_train_stage_runs_on_two_processes_as_train_gpus_2_does(two, tmp_path):
    out, stdout = two
    stage = json.loads((out / "train" / "32" / "stage.json").read_text())
    assert stage["config"]["gpus"] == 2 and stage["result"]["processes"] == 2  # the world size the processes saw
    assert "training on 2 processes (torch.distributed, gloo)" in stdout
    records = out / "convert" / "c" / "records"
    ref = subprocess.run(cli("train", "--data", str(records), "--out", str(tmp_path / "ref"), "--gpus", "2", *TRAIN),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert same(weights(out / "train" / "32" / "last.pt"), weights(tmp_path / "ref" / "last.pt"))
    assert (out / "evaluate" / "32" / "stage.json").is_file() and (out / "report.md").is_file()


def _interrupted(cmd, until, signum, log):
    """Start ``cmd``, send ``signum`` to it as soon as ``until()`` holds; its exit status."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while not until() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signum)
        return proc.wait()


def test_sigterm_then_kill_9_mid_stage_then_the_same_command_gives_the_same_weights(recipe, two, tmp_path):
    out = tmp_path / "out"
    cmd = cli("run", str(recipe), "--out", str(out), "--gpus", "2")
    stage = out / "train" / "32"
    # SIGTERM once epoch 0 is done: the run forwards it, both processes write a resumable last.pt, exit 143
    assert _interrupted(cmd, (stage / "metrics.jsonl").exists, signal.SIGTERM, tmp_path / "1.log") == 143
    first = (tmp_path / "1.log").read_text()
    assert "stopped by SIGTERM at epoch 1" in first and "Traceback" not in first, first[-3000:]
    assert torch.load(stage / "last.pt", weights_only=False)["state"]["epoch"] == 1
    assert not (stage / "stage.json").exists()
    # the same command continues from last.pt; kill -9 the run while its processes train epoch 2: they are sent
    # SIGTERM as it dies, so they write a resumable last.pt and stop instead of training on, unwatched
    log = tmp_path / "2.log"
    assert _interrupted(cmd, lambda: "epoch 2:" in log.read_text(), signal.SIGKILL, log) == -9  # its progress bar
    assert "train/32                 resume  interrupted; continues from last.pt" in log.read_text()
    deadline = time.monotonic() + 300
    while not (stage / "result.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert json.loads((stage / "result.json").read_text())["result"] == {
        "interrupted": True, "signal": signal.SIGTERM, "epoch": 2, "step": 6}
    assert not (stage / "stage.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "train/32                 resume  interrupted; continues from last.pt" in again.stdout
    ref, _ = two
    assert same(weights(stage / "last.pt"), weights(ref / "train" / "32" / "last.pt"))
    rows = [json.loads((o / "evaluate" / "32" / "evaluate.json").read_text())["rows"] for o in (out, ref)]
    assert [r["top1"] for r in rows[0]] == [r["top1"] for r in rows[1]]


def test_an_attempt_waits_for_the_processes_of_an_earlier_one(tmp_path):
    """What a rerun right after kill -9 relies on: the stage's lock, held by the earlier attempt's processes."""
    from fixres_fast.run.worker import LOCK, stage_lock

    hold = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(2)")
    other = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / LOCK)], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline() == "held\n"
    lines = []
    with stage_lock(tmp_path, lines.append):
        assert other.wait(timeout=10) == 0  # it got the lock as the other process ended
    assert lines == ["waiting for the processes of an earlier attempt of this stage to stop"]


def test_gpus_is_a_setting_of_the_train_stages_only(recipe, tmp_path):
    from fixres_fast.run import _Builder, load

    _, doc, out = load(str(recipe), (), str(tmp_path))
    one, two = ({s.name: s.hash for s in _Builder(doc, out, gpus).build()} for gpus in (1, 2))
    assert one["convert/c"] == two["convert/c"]
    assert all(one[s] != two[s] for s in ("train/32", "evaluate/32"))  # and what reads the network trained


def one_line_error(args, env=None):
    res = CliRunner().invoke(main, ["run", *args], env=env)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    return lines[0]


def test_paths_that_cannot_work_are_one_line(recipe):
    assert "--gpus must be 1 or more" in one_line_error([str(recipe), "--gpus", "0", "--dry-run"])
    under = one_line_error([str(recipe), "--dry-run"], env={"WORLD_SIZE": "16"})
    assert "running under torchrun (WORLD_SIZE=16)" in under and "--gpus N" in under
