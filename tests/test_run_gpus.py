"""`fixres-fast run --gpus N`: the train stages on N processes through torchrun (here N gloo CPU processes, as CI
runs it), learning what `fixres-fast train --gpus N` learns; SIGTERM and kill -9 mid-stage, then the same command,
give the same weights; the adapt stages on N processes too, fitting what one process fits; --gpus is part of the
train and adapt stages' settings; and the paths that cannot work are one line. `fixres-fast run` itself under
torchrun on two "nodes" of this machine trains and adapts what --gpus 2 does, and resumes after a process is
killed."""
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fixres_fast.cli import main

#: The checkout, for a script run by path (its own folder is sys.path[0], not the checkout)
ROOT = str(Path(__file__).resolve().parents[1])

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
#: TINY with an adapt stage at 48 (its convert and train stages: TINY's, the same hashes).
ADAPT = TINY + """
[adapt]
k_test = [48]
epochs = 2
batch_size = 16
lr = 0.01
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
def adapt_recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "tiny-adapt.toml"
    path.write_text(ADAPT)
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


def test_gpus_is_a_setting_of_the_train_and_adapt_stages_only(adapt_recipe, tmp_path):
    from fixres_fast.run import _Builder, load

    _, doc, out = load(str(adapt_recipe), (), str(tmp_path))
    one, two = ({s.name: s for s in _Builder(doc, out, gpus).build()} for gpus in (1, 2))
    assert one["convert/c"].hash == two["convert/c"].hash
    assert all(one[s].hash != two[s].hash for s in ("train/32", "adapt/32-48", "evaluate/32"))  # and what reads them
    assert [s for s in two if two[s].config.get("gpus") == 2] == ["train/32", "adapt/32-48"]
    assert not any("gpus" in s.config for s in one.values())


def one_line_error(args, env=None):
    res = CliRunner().invoke(main, ["run", *args], env=env)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    return lines[0]


def test_paths_that_cannot_work_are_one_line(recipe):
    assert "--gpus must be 1 or more" in one_line_error([str(recipe), "--gpus", "0", "--dry-run"])
    under = one_line_error([str(recipe), "--dry-run", "--gpus", "2"], env={"WORLD_SIZE": "16"})
    assert "--gpus 2 under torchrun (WORLD_SIZE=16)" in under and "drop --gpus" in under
    alone = one_line_error([str(recipe), "--dry-run"], env={"WORLD_SIZE": "2"})  # without torchrun's other variables
    assert "WORLD_SIZE=2 says this is one of torchrun's processes" in alone and "unset WORLD_SIZE" in alone


# --- `fixres-fast run` itself under torchrun, as on several nodes -----------------------------------------------

#: One thread per process in both worlds compared (torchrun sets it for --gpus 2's processes, not for one per node):
#: the same sums in the same order, so the same weights.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes(tmp_path, name, args):
    """``fixres-fast run ARGS`` under two torchruns started together, one per "node" of this machine (a real
    multi-node rendezvous: static, c10d store on node 0; one process each); [(process, stdout file, stderr file)]."""
    port, started = _free_port(), []
    for rank in (0, 1):
        out, err = tmp_path / f"{name}-{rank}.out", tmp_path / f"{name}-{rank}.err"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
               *cli("run", *args)[1:]]
        started.append((subprocess.Popen(cmd, stdout=open(out, "w"), stderr=open(err, "w"),
                                         env={**os.environ, **ONE_THREAD}), out, err))
    return started


def _ended(nodes):
    """[(exit status, stdout, stderr)] of each node's torchrun."""
    try:
        return [(proc.wait(timeout=600), out.read_text(), err.read_text()) for proc, out, err in nodes]
    finally:
        for proc, _, _ in nodes:
            if proc.poll() is None:
                proc.kill()


def _worker_of(torchrun: int) -> int:
    """The pid of the process torchrun ``torchrun`` started (its child running fixres_fast.cli)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == torchrun and b"fixres_fast.cli" in stat.with_name("cmdline").read_bytes():
                return int(stat.parent.name)
    raise AssertionError(f"torchrun {torchrun} runs no fixres_fast.cli process")


def test_run_under_torchrun_on_two_nodes_trains_what_gpus_2_does_and_resumes_after_a_kill(recipe, two, tmp_path):
    out = tmp_path / "out"
    stage = out / "train" / "32"
    first = _nodes(tmp_path, "first", (str(recipe), "--out", str(out)))
    deadline = time.monotonic() + 600
    while not (stage / "metrics.jsonl").exists() and time.monotonic() < deadline and first[0][0].poll() is None:
        time.sleep(0.02)
    os.kill(_worker_of(first[0][0].pid), signal.SIGKILL)  # rank 0, once epoch 0's last.pt is written
    assert all(code != 0 for code, _, _ in _ended(first))  # torchrun stopped the other one too
    assert not (stage / "stage.json").exists()
    (code0, out0, err0), (code1, out1, err1) = _ended(_nodes(tmp_path, "again", (str(recipe), "--out", str(out))))
    assert code0 == code1 == 0, err0[-3000:] + err1[-3000:]
    assert "train/32                 resume  interrupted; continues from last.pt" in out0
    assert out0.count("== report") == 1 and out1 == ""  # rank 0 alone runs the report and prints
    ref, _ = two
    mine, theirs = (json.loads((o / "train" / "32" / "stage.json").read_text()) for o in (out, ref))
    assert mine["hash"] == theirs["hash"] and mine["config"] == theirs["config"] and mine["config"]["gpus"] == 2
    assert mine["result"]["processes"] == 2 and mine["result"]["resumed_from_last_pt"]
    assert same(weights(stage / "last.pt"), weights(ref / "train" / "32" / "last.pt"))
    rows = [json.loads((o / "evaluate" / "32" / "evaluate.json").read_text())["rows"] for o in (out, ref)]
    assert [r["top1"] for r in rows[0]] == [r["top1"] for r in rows[1]]
    (code0, out0, _), (code1, out1, _) = _ended(_nodes(tmp_path, "dry", (str(recipe), "--out", str(out), "--dry-run")))
    assert code0 == code1 == 0 and "1 of 4 stages to run" in out0 and out1 == ""


def _world(tmp_path, name, per_node):
    """The commands ``per_node`` (argv after python) on two processes of the world torchrun would describe (its
    variables, set here): [(exit status, stdout, stderr)]."""
    port, started = _free_port(), []
    for rank, args in enumerate(per_node):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        out, err = tmp_path / f"{name}-{rank}.out", tmp_path / f"{name}-{rank}.err"
        started.append((subprocess.Popen([sys.executable, *args], stdout=open(out, "w"), stderr=open(err, "w"),
                                         env=env), out, err))
    return _ended(started)


def test_an_error_on_rank_0_stops_every_process_with_its_line(recipe, tmp_path):
    plain = cli("run", str(recipe), "--out", str(tmp_path / "out"), "--dry-run")[1:]
    ended = _world(tmp_path, "error", ((*plain, "--set", "evaluate.bogus=1"), plain))  # rank 1 learns it from rank 0
    for code, out, err in ended:
        assert code == 1 and out == "" and err.startswith("Error: unknown key evaluate.bogus") and err.count("\n") == 1


#: Each process: the recipe planned three times in one world (as demo --seeds N runs it N times), then with rank 1
#: alone given the --set's argv[4:]: a UserError on every process. What it saw, in argv[3]/rankR.txt.
TWICE = """
import os, sys
from pathlib import Path
from fixres_fast.errors import UserError
from fixres_fast.run import run

recipe, out, seen_in = sys.argv[1:4]
seen = [" ".join(str(len(run(recipe, out=out, dry_run=True)["plan"])) for _ in range(3))]
try:
    run(recipe, sets=sys.argv[4:] if os.environ["RANK"] == "1" else (), out=out, dry_run=True)
except UserError as e:
    seen.append(str(e))
Path(seen_in, "rank" + os.environ["RANK"] + ".txt").write_text("\\n".join(seen))
"""


def test_runs_follow_each_other_in_one_world_and_processes_that_build_other_stages_stop_together(recipe, tmp_path):
    script = tmp_path / "twice.py"
    script.write_text(TWICE)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(recipe), str(tmp_path / "out"), str(tmp_path), "train.recipe.lr=0.1"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-3000:]
    line = (f"rank 1: its stages differ from rank 0's ({recipe}, --out {tmp_path / 'out'}): give every node the same "
            "recipe and --set's, and an OUT on a file system they all share")
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text().splitlines() == ["4 4 4", line]


def test_a_world_of_two_hashes_the_train_and_adapt_stages_as_gpus_2_does(adapt_recipe, tmp_path):
    from fixres_fast.run import _Builder, load

    _, doc, out = load(str(adapt_recipe), (), str(tmp_path))
    gpus, world = ({s.name: (s.hash, s.every_process) for s in _Builder(doc, out, *processes).build()}
                   for processes in ((2, 1), (1, 2)))  # (--gpus, torchrun's WORLD_SIZE)
    assert gpus == world and world["train/32"][1] and world["adapt/32-48"][1] and not world["evaluate/32"][1]


# --- The adapt stages on several processes -------------------------------------------------------------------


def _close(a, b):
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-6) for k in a)


@pytest.fixture(scope="module")
def adapted_two(adapt_recipe, two, tmp_path_factory):
    """The tiny recipe with its adapt stage, run with --gpus 2 on a copy of what `two` ran (convert, train: done)."""
    out = tmp_path_factory.mktemp("adapted-two") / "out"
    shutil.copytree(two[0], out)
    done = subprocess.run(cli("run", str(adapt_recipe), "--out", str(out), "--gpus", "2"), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


def test_the_adapt_stage_runs_on_two_processes_and_fits_what_one_process_fits(adapted_two, tmp_path):
    from fixres_fast.adapt import AdaptConfig, adapt

    out, stdout = adapted_two
    assert "train/32                 done" in stdout and "adapt/32-48              run     new" in stdout
    assert "adapting on 2 processes (torch.distributed, gloo)" in stdout
    stage = json.loads((out / "adapt" / "32-48" / "stage.json").read_text())
    assert stage["config"]["gpus"] == 2 and stage["result"]["processes"] == 2 and stage["result"]["cached"]
    ref = adapt(AdaptConfig(checkpoint=str(out / "train" / "32" / "last.pt"), k_test=48,
                            data=str(out / "convert" / "c" / "records"), epochs=2, batch_size=16, lr=0.01,
                            backend="torch", device="cpu", amp="off", workers=1, out=str(tmp_path / "ref.pt")),
                log=lambda *_: None)
    assert ref["processes"] == 1
    mine, theirs = weights(out / "adapt" / "32-48" / "adapted.pt"), weights(tmp_path / "ref.pt")
    assert not same(mine, weights(out / "train" / "32" / "last.pt")) and _close(mine, theirs)
    assert (stage["result"]["val_top1_before"], stage["result"]["val_top1_after"]) == (
        ref["val_top1_before"], ref["val_top1_after"])


def test_run_under_torchrun_adapts_on_every_process_as_gpus_2_does(adapt_recipe, two, adapted_two, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(two[0], out)
    (code0, out0, err0), (code1, out1, err1) = _ended(_nodes(tmp_path, "adapt", (str(adapt_recipe), "--out", str(out))))
    assert code0 == code1 == 0, err0[-3000:] + err1[-3000:]
    assert "adapt/32-48              run     new" in out0 and out1 == ""
    assert out0.count("cached the frozen trunk's output for 96 images at K_test=48") == 1
    assert "each of 2 processes ran it over ~48" in out0
    ref, _ = adapted_two
    mine, theirs = (json.loads((o / "adapt" / "32-48" / "stage.json").read_text()) for o in (out, ref))
    assert mine["hash"] == theirs["hash"] and mine["config"] == theirs["config"] and mine["result"]["processes"] == 2
    assert _close(weights(out / "adapt" / "32-48" / "adapted.pt"), weights(ref / "adapt" / "32-48" / "adapted.pt"))


def test_an_adapt_stage_stopped_by_sigterm_starts_again_and_fits_the_same(adapt_recipe, two, adapted_two, tmp_path):
    """Adaptation has no last.pt: its processes stop at once on the signal the run forwards (exit 143), and the same
    command runs the stage again from the start."""
    out = tmp_path / "out"
    shutil.copytree(two[0], out)
    cmd = cli("run", str(adapt_recipe), "--out", str(out), "--gpus", "2")
    stage = out / "adapt" / "32-48"
    assert _interrupted(cmd, (stage / "rank1.pid").exists, signal.SIGTERM, tmp_path / "1.log") == 143
    assert "Traceback" not in (tmp_path / "1.log").read_text() and not (stage / "stage.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "adapt/32-48              resume  interrupted; starts again" in again.stdout
    ref, _ = adapted_two
    assert _close(weights(stage / "adapted.pt"), weights(ref / "adapt" / "32-48" / "adapted.pt"))
