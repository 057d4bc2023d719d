"""Several processes through torch.distributed: nothing home-made.

``fixres-fast train --gpus N`` (and ``adapt --gpus N``) re-runs the same command under torchrun
(``torch.distributed.run``), which sets RANK, WORLD_SIZE and LOCAL_RANK; on several nodes users call torchrun
themselves and the code below reads the same variables. NCCL on GPUs, gloo on CPUs. ``fixres-fast run`` under
torchrun joins the world once for all its stages and runs (:func:`joined`); the trainer and adapt then use that group
and leave it be.
"""
from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # setup() created the process group: teardown() destroys it

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Dist:
    """Join the process group torchrun described, if any, and pick this process's device."""
    world = world_size()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()  # else it joins the group its caller made (fixres-fast run)
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev, owns)


def teardown(d: Dist) -> None:
    """Leave the process group, where :func:`setup` created it."""
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """The number of processes torchrun started (WORLD_SIZE; 1 without torchrun)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise UserError(f"WORLD_SIZE={value!r}: expected a number of processes (torchrun sets it); unset it "
                        "outside torchrun") from None


_WAIT_GROUP = {}  # the group joined() made, once per process


def joined(wait: timedelta):
    """The world torchrun describes, joined by this process once, until it exits (joining again after leaving races
    with the other processes' leaving, on torchrun's one store); returns a gloo group whose collectives wait up to
    ``wait`` (processes waiting for one process's long single-process work). The default group, for the work done
    on every process, keeps torch's default timeout and its backends by tensor: gloo for CPU tensors, NCCL for CUDA
    ones where there are GPUs."""
    if "group" in _WAIT_GROUP:
        return _WAIT_GROUP["group"]
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    try:
        dist.init_process_group(backend)
    except (ValueError, RuntimeError) as e:  # e.g. WORLD_SIZE set by hand, without torchrun's other variables
        raise UserError(f"WORLD_SIZE={world_size()} says this is one of torchrun's processes, but its world could not "
                        f"be joined ({str(e).splitlines()[0]}); run under torchrun, or unset WORLD_SIZE") from None
    atexit.register(dist.destroy_process_group)
    _WAIT_GROUP["group"] = dist.new_group(backend="gloo", timeout=wait)
    return _WAIT_GROUP["group"]


def all_sum(values: list[float], d: Dist) -> list[float]:
    """Sum numbers over all processes (float64)."""
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    if d.world_size > 1:
        dist.all_reduce(t)
    return t.tolist()


def all_gather_rows(tensors, d: Dist) -> list:
    """Each of ``tensors`` (the same number of rows N_r on this process, e.g. its shard's images) with the rows of
    every process, concatenated in rank order, on every process (on ``d.device``). all_gather wants one shape from
    every process: each is padded to the largest N_r, and the padding dropped again."""
    tensors = [t.to(d.device) for t in tensors]
    if d.world_size == 1:
        return tensors
    mine = torch.tensor([tensors[0].shape[0]], device=d.device)
    counts = [torch.zeros_like(mine) for _ in range(d.world_size)]
    dist.all_gather(counts, mine)
    counts = [int(c) for c in counts]
    out = []
    for t in tensors:
        padded = t.new_zeros((max(counts), *t.shape[1:]))
        padded[:t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts)]))
    return out


def weighted_mean(tensors, weight: float, d: Dist) -> None:
    """Replace each of ``tensors`` by its mean over the processes, each process's weighted by its ``weight`` (e.g. the
    images it averaged over), in place."""
    if d.world_size == 1:
        return
    total = all_sum([weight], d)[0]
    for t in tensors:
        t.mul_(weight / total if total else 1 / d.world_size)
        dist.all_reduce(t)


def from_rank_0(tensors, d: Dist) -> None:
    """Rank 0's values of ``tensors`` on every process, in place."""
    if d.world_size > 1:
        for t in tensors:
            dist.broadcast(t, 0)


def data_parallel(model, d: Dist):
    """``model`` in DDP (gradients averaged over the processes), where there are several."""
    if d.world_size == 1:
        return model
    ids = [d.device.index] if d.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        dist.barrier()


def torchrun_args(nproc: int, module: str, argv: list[str]) -> list[str]:
    """torchrun's arguments that run ``python -m module ARGV`` on ``nproc`` processes of this machine."""
    return ["--standalone", f"--nproc-per-node={nproc}", "-m", module, *argv]


def relaunch_under_torchrun(nproc: int, argv: list[str]) -> None:
    """Replace this process by ``torchrun --standalone --nproc-per-node nproc -m fixres_fast.cli ARGV``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(nproc, "fixres_fast.cli", argv)]
    os.execv(sys.executable, cmd)


def from_main(value, group):
    """Rank 0's ``value`` (any picklable object), on every process of ``group``; the others' ``value`` is unused."""
    box = [value]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def gathered(value, group) -> list:
    """Every process's ``value`` (picklable), in rank order, on every process of ``group``."""
    values = [None] * dist.get_world_size(group)
    dist.all_gather_object(values, value, group=group)
    return values
