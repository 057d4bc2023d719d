"""A train or adapt stage on N processes (``fixres-fast run --gpus N``), through torchrun as ``fixres-fast train
--gpus N`` and ``fixres-fast adapt --gpus N`` run.

The stage writes which job it is (train, adapt) and its config (TrainConfig, AdaptConfig) to ``OUT/<stage>/job.json``
and starts ``python -m fixres_fast.run.worker torchrun N JOB PID`` in a session of its own (torchrun, asked to die
with the run), holding ``stage.lock`` for it. torchrun starts N ``... worker job JOB`` processes: each asks for
SIGTERM when torchrun dies, holds ``processes.lock`` (shared), writes its pid to ``rankR.pid``, joins the process
group and calls :func:`fixres_fast.train.train` or :func:`fixres_fast.adapt.adapt`; rank 0 writes ``result.json``.
SIGTERM / SIGINT to the run go to those N processes themselves: training ones write a resumable last.pt together, as
one process does; adapting ones, with nothing to resume from, stop at once (the stage starts again on the next
attempt). The run killed with -9 takes torchrun with it, so its processes get SIGTERM and do the same; the next
attempt of a train stage waits on the locks until they are gone.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from ..artifacts import write_json, write_text
from ..errors import UserError

JOB, RESULT, LOCK, RUNNING, PIDS = "job.json", "result.json", "stage.lock", "processes.lock", "rank*.pid"
MODULE = "fixres_fast.run.worker"  # this file, as python -m runs it
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@contextlib.contextmanager
def stage_lock(folder: Path, log):
    """The stage's lock, held (its file descriptor), once the processes of an earlier attempt are gone: after its run
    was killed with -9 they may still be writing last.pt (each holds ``processes.lock`` shared while it lives)."""
    lock = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT)
    try:
        _wait(lock, log)
        running = os.open(folder / RUNNING, os.O_RDWR | os.O_CREAT)
        try:
            _wait(running, log)
        finally:
            os.close(running)  # and its lock with it: this attempt's processes take it
        yield lock
    finally:
        os.close(lock)


def _wait(fd: int, log) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("waiting for the processes of an earlier attempt of this stage to stop")
        fcntl.flock(fd, fcntl.LOCK_EX)


def job_on(job: str, cfg, processes: int, folder: Path, lock: int, log) -> dict:
    """train(cfg) or adapt(cfg) (``job``) on ``processes`` processes of this machine, :func:`stage_lock`'s ``lock``
    held by them too; what rank 0's job returned, with the number of processes that ran."""
    from . import Interrupted

    _check_devices(cfg.device, processes)
    write_json(folder / JOB, {"job": job, "config": asdict(cfg)})
    for old in (folder / RESULT, *folder.glob(PIDS)):
        old.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", MODULE, "torchrun", str(processes), str(folder / JOB), str(os.getpid())]
    received = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, pass_fds=(lock,), start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def forward(signum, frame):
        """To the processes themselves, not to torchrun: torchrun would signal each one's process group, its loader
        workers too, and those dying would stop it before it writes last.pt. Before they all run: to torchrun."""
        if not received:
            pids = [int(p.read_text()) for p in folder.glob(PIDS)]
            for pid in pids if len(pids) == processes else ():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            if len(pids) != processes:
                proc.send_signal(signum)
        received.append(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for line in proc.stdout:
            log(line.rstrip("\n"))
        code = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if received:
        raise Interrupted(received[0])
    return _outcome(job, folder, processes, code)


def _check_devices(device: str, processes: int) -> None:
    import torch

    from ..runtime import resolve_device

    if resolve_device(device).type == "cuda" and torch.cuda.device_count() < processes:
        raise UserError(f"--gpus {processes}: this machine has {torch.cuda.device_count()} GPU(s); pass --gpus "
                        f"{torch.cuda.device_count()} or fewer (or common.device=cpu for gloo CPU processes)")


def _outcome(job: str, folder: Path, processes: int, code: int) -> dict:
    try:
        doc = json.loads((folder / RESULT).read_text())
    except (OSError, ValueError):
        doc = {}
    if "error" in doc:
        raise UserError(doc["error"])
    if "result" not in doc or (code and not doc["result"].get("interrupted")):
        again = f" (from {folder}/last.pt where there is one)" if job == "train" else ""
        raise UserError(f"the {job} stage's {processes} processes stopped (torchrun exit status {code}) before "
                        f"finishing; the output above says why. The same command runs it again{again}")
    return {**doc["result"], "processes": doc["world_size"]}


# --- The processes ---------------------------------------------------------------------------------------


def _dies_with(parent: int, signum: int) -> None:
    """``signum`` to this process when ``parent`` dies (Linux): the run killed with -9 kills torchrun (SIGKILL, so
    that it signals nobody), whose death sends each process SIGTERM, so that they write last.pt and stop."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):
        return  # not Linux: an orphan then runs to its end; the next attempt waits for it on the lock
    if os.getppid() != parent:  # it died before we asked
        raise SystemExit(128 + signum)


def _config(job: str, doc: dict):
    """The TrainConfig or AdaptConfig (``job``) of ``job.json``: its JSON conformed to the dataclass, as a recipe's
    table is (an AdaptConfig's checkpoint: a path, or pretrained weights)."""
    from dataclasses import replace

    from ..adapt import AdaptConfig
    from ..pretrained import Pretrained
    from ..train import TrainConfig
    from .recipe import conform

    if job == "adapt":
        return conform(doc, AdaptConfig, "adapt")
    cfg = conform(doc, TrainConfig, "train")
    return replace(cfg, init=conform(cfg.init, Pretrained, "train.init")) if isinstance(cfg.init, dict) else cfg


def _say(*args) -> None:
    """Rank 0's log, on the run's pipe; once the run is gone (killed with -9), nowhere, so that the processes still
    stop as asked (SIGTERM) instead of failing on the broken pipe."""
    try:
        print(*args, flush=True)
    except BrokenPipeError:
        sys.stdout = open(os.devnull, "w")


def _process(job: Path) -> None:
    from ..adapt import adapt
    from ..runtime import resolve_device
    from ..train import train

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    _dies_with(os.getppid(), signal.SIGTERM)
    running = os.open(job.with_name(RUNNING), os.O_RDWR | os.O_CREAT)  # held until this process ends
    fcntl.flock(running, fcntl.LOCK_SH)
    write_text(job.with_name(PIDS.replace("*", str(rank))), str(os.getpid()))  # whole, or not there
    doc = json.loads(job.read_text())
    kind, cfg = doc["job"], _config(doc["job"], doc["config"])
    if kind == "adapt":  # nothing to resume from: SIGINT stops it at once, as SIGTERM does, without a traceback
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    if rank == 0:
        backend = "nccl" if resolve_device(cfg.device).type == "cuda" else "gloo"
        _say(f"{'training' if kind == 'train' else 'adapting'} on {world} processes (torch.distributed, {backend})")
    try:
        result = (train if kind == "train" else adapt)(cfg, log=_say)
    except UserError as e:
        if rank == 0:
            write_json(job.with_name(RESULT), {"error": str(e)})
        raise SystemExit(1) from None
    if rank == 0:  # interrupted too: exit 0, so that torchrun does not stop the others before they are done
        write_json(job.with_name(RESULT), {"result": result, "world_size": world})


def main(argv: list[str]) -> None:
    role, *args = argv
    if role == "torchrun":
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import parse_args, run

        from ..distributed import torchrun_args

        processes, job, parent = args
        _dies_with(int(parent), signal.SIGKILL)
        try:
            run(parse_args(torchrun_args(int(processes), MODULE, ["job", job])))
        except ChildFailedError:
            raise SystemExit(1) from None  # what failed is in result.json, or above
        except SignalException as e:  # its processes were sent the signal and have stopped
            raise SystemExit(128 + e.sigval) from None
    elif role == "job":
        _process(Path(args[0]))
    else:
        raise SystemExit(f"usage: python -m {MODULE} torchrun N JOB PID | job JOB")


if __name__ == "__main__":
    main(sys.argv[1:])
