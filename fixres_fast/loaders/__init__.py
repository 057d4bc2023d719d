"""Data loaders: one interface, three backends (dali, ffcv, torch), the same batches from each.

>>> from fixres_fast.spec import make_spec
>>> loader = make_loader("ffcv", make_spec("train", 160), "OUT", "train", batch_size=256, repeats=3)
>>> for epoch in range(epochs):
...     loader.set_epoch(epoch)
...     for images, labels in loader: ...

``images``: float32 (N, 3, K, K), ``torch.channels_last`` memory, resampled with the spec's interpolation
(bilinear or bicubic, antialiased as PIL does) and normalised with its mean and std (ImageNet's by default), on
``device``; ``labels``: int64 (N,). ``len(loader)`` is the number of batches per epoch.
Training epochs (train DA and train-fixed by default; ``training=True`` for fine-tuning with test DA or test DA2)
shuffle, repeat (RA) and drop the last partial batch; evaluation epochs read every image of this
rank's shard exactly once, in order. DALI and FFCV are imported only when asked for.
"""
from __future__ import annotations

import importlib.util
from dataclasses import replace

from ..errors import UserError
from ..spec import MODES, TestDA, TrainDA, TrainFixedDA
from .common import LoaderConfig, Relabelled, indexed_device
from .sampler import RASampler
from .source import RecordError, open_source

BACKENDS = ("dali", "ffcv", "torch")
#: the optional backends: the module each imports, the library's name, and (the backend's own name) its pip extra
OPTIONAL = {"dali": ("nvidia.dali", "DALI"), "ffcv": ("ffcv", "FFCV")}

__all__ = ["BACKENDS", "LoaderConfig", "RASampler", "RecordError", "installed", "make_loader", "require"]


def installed(backend: str) -> bool:
    """Whether ``backend``'s library is installed (looked up, not imported); torch's always is."""
    if backend not in OPTIONAL:
        return True
    try:
        return importlib.util.find_spec(OPTIONAL[backend][0]) is not None
    except ModuleNotFoundError:  # nor is its parent package (nvidia), as beside a CPU-only torch
        return False


def require(backend: str, what: str = "", instead: str = "use --backend torch") -> None:
    """Raise the one line that says how to install ``backend``'s library, when it is missing."""
    if not installed(backend):
        lib = OPTIONAL[backend][1]
        raise UserError(f"{what or f'the {backend} backend'} needs {lib}, which is not installed: "
                        f"pip install 'fixres-fast[{backend}]' (see README), or {instead}")


def make_loader(backend: str, spec, source, split: str = "train", config: LoaderConfig | None = None, **options):
    """A loader of ``split`` from ``source`` (a conversion's OUT folder, or an ImageFolder tree).

    ``spec`` is a :class:`~fixres_fast.spec.TrainDA`, ``TestDA``, ``TestDA2`` or ``TrainFixedDA``; ``options`` are
    :class:`LoaderConfig` fields (batch_size, device, rank, world_size, repeats, epoch_fraction,
    seed, workers, training, reduced_decode, on_corrupt, label_map) and override ``config``.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown loader backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not isinstance(spec, (TrainDA, TestDA, TrainFixedDA)):
        raise UserError(f"expected a spec from fixres_fast.spec.make_spec (mode {', '.join(MODES)}), got {spec!r}")
    try:
        config = replace(config or LoaderConfig(), **options)
    except TypeError as e:
        raise UserError(f"{e}; loader options are the fields of LoaderConfig") from None
    require(backend)
    indexed_device(config.device)
    src = open_source(source, split)
    if backend == "dali":
        from .dali import build_dali_loader as build
    elif backend == "ffcv":
        from .ffcv import build_ffcv_loader as build
    else:
        from .torch import build_torch_loader as build
    loader = build(spec, src, config)
    return loader if config.label_map is None else Relabelled(loader, config.label_map)
