"""Data loaders: one interface, three backends (dali, ffcv, torch), the same batches from each.

>>> from fixres_fast.spec import make_spec
>>> loader = make_loader("ffcv", make_spec("train", 160), "OUT", "train", batch_size=256, repeats=3)
>>> for epoch in range(epochs):
...     loader.set_epoch(epoch)
...     for images, labels in loader: ...

``images``: float32 (N, 3, K, K), ``torch.channels_last`` memory, resampled with the spec's interpolation
(bilinear or bicubic, antialiased as PIL does) and normalised with its mean and std (ImageNet's by default), on
``device``; ``labels``: int64 (N,). ``len(loader)`` is the number of batches per epoch.
Training epochs (train DA by default; ``training=True`` for fine-tuning with test DA or test DA2)
shuffle, repeat (RA) and drop the last partial batch; evaluation epochs read every image of this
rank's shard exactly once, in order. DALI and FFCV are imported only when asked for.
"""
from __future__ import annotations

from dataclasses import replace

from ..errors import UserError
from ..spec import TestDA, TrainDA
from .common import LoaderConfig, Relabelled, indexed_device
from .sampler import RASampler
from .source import RecordError, open_source

BACKENDS = ("dali", "ffcv", "torch")

__all__ = ["BACKENDS", "LoaderConfig", "RASampler", "RecordError", "make_loader"]


def make_loader(backend: str, spec, source, split: str = "train", config: LoaderConfig | None = None, **options):
    """A loader of ``split`` from ``source`` (a conversion's OUT folder, or an ImageFolder tree).

    ``spec`` is a :class:`~fixres_fast.spec.TrainDA`, ``TestDA`` or ``TestDA2``; ``options`` are
    :class:`LoaderConfig` fields (batch_size, device, rank, world_size, repeats, epoch_fraction,
    seed, workers, training, reduced_decode, on_corrupt, label_map) and override ``config``.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown loader backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not isinstance(spec, (TrainDA, TestDA)):
        raise UserError(f"expected a spec from fixres_fast.spec.make_spec (mode train, test or test2), got {spec!r}")
    try:
        config = replace(config or LoaderConfig(), **options)
    except TypeError as e:
        raise UserError(f"{e}; loader options are the fields of LoaderConfig") from None
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
