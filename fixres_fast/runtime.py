"""Run-time choices every job shares, parsed in one place: the device, mixed precision, lists of resolutions."""
from __future__ import annotations

import torch

from .errors import UserError

DEVICES = ("auto", "cpu", "cuda")
AMP = ("auto", "bf16", "fp16", "off")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' (CUDA when torch sees a GPU), 'cpu', 'cuda', 'cuda:N' or 'gpu' as a torch device; a clear
    error for anything else, and for CUDA on a machine without it."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device("cuda" if name == "gpu" else name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in DEVICES:
        raise UserError(f"unknown device {name!r}; choose one of auto, cpu, cuda (or cuda:N, gpu)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    return dev


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an --amp choice: 'auto' is bf16 on a CUDA device that supports it, else off."""
    if amp not in AMP:
        raise UserError(f"unknown --amp {amp!r}; choose one of {', '.join(AMP)}")
    if amp == "auto":
        ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if ok else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def parse_resolutions(text: str) -> tuple[int, ...]:
    """'224,160,224' -> (224, 160), in the order given, once each; a message a user can act on for anything
    that is not a list of positive integers."""
    try:
        values = tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise UserError(f"expected comma-separated resolutions in pixels such as 64,128,224, got {text!r}") from None
    bad = [k for k in values if k <= 0]
    if bad:
        raise UserError(f"expected positive resolutions in pixels, got {','.join(map(str, bad))}")
    return tuple(dict.fromkeys(values))
