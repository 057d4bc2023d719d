"""Several processes through torch.distributed: nothing home-made.

``fixres-fast train --gpus N`` re-runs the same command under torchrun (``torch.distributed.run``),
which sets RANK, WORLD_SIZE and LOCAL_RANK; on several nodes users call torchrun themselves and the
code below reads the same variables. NCCL on GPUs, gloo on CPUs.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Dist:
    """Join the process group torchrun described, if any, and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], d: Dist) -> list[float]:
    """Sum numbers over all processes (float64)."""
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    if d.world_size > 1:
        dist.all_reduce(t)
    return t.tolist()


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
