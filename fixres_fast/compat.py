"""Small accommodations for the libraries we build on."""
from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def torch_threads_kept():
    """Keep torch's intra-op thread count across a block that imports FFCV or builds an FFCV Loader: FFCV sets it
    (to 1 on import, to its workers when a Loader is built), which would make a model's CPU arithmetic, and so a
    run's results, depend on whether and how FFCV was used earlier in the process (and run it on one core)."""
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def quiet_numba_finalizers() -> None:
    """Hide the harmless ``KeyError`` that numba's dispatcher finalizers raise when FFCV Loaders
    are garbage-collected (FFCV 1.0.2, numba 0.68). Every other unraisable exception still prints."""
    previous = sys.unraisablehook
    if getattr(previous, "_fixres_quiet", False):
        return

    def hook(info):
        tb = info.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = tb.tb_frame.f_code.co_filename if tb is not None else ""
        if info.exc_type is KeyError and "numba" in where and "dispatcher" in where:
            return
        previous(info)

    hook._fixres_quiet = True
    sys.unraisablehook = hook
