"""What every backend shares: the loader options, the batch contract and the epoch bookkeeping.

The batch contract: ``(images, labels)`` with ``images`` float32 of shape (N, 3, K, K) in
``torch.channels_last`` memory, normalised with the spec's mean and std (:class:`~fixres_fast.spec.Pixels`: the
model's own; ImageNet's by default), on the loader's device, and ``labels`` int64 of shape (N,) on the same device.
Backends hand over uint8 NHWC pixels; :func:`to_batch` views them as NCHW channels_last (no copy) and normalises
on the device: the one place where any backend normalises.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import runtime
from ..errors import UserError
from ..spec import EPOCH_FRACTION, is_train_da
from . import kernels
from .sampler import RASampler
from .source import REPAIR, RecordError

ON_CORRUPT = ("stop", "skip")


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int = 64
    device: str = "cpu"  # 'cpu' or 'cuda' ('cuda:N' and DALI's 'gpu' are accepted)
    rank: int = 0
    world_size: int = 1
    repeats: int = 1  # RA: copies of each drawn image per epoch (paper: spec.REPEATS)
    epoch_fraction: float = EPOCH_FRACTION  # training samples per epoch / images in the split
    seed: int = 0
    workers: int = 0  # decoding threads or processes; 0: all cores
    training: bool | None = None  # shuffle + RA + drop last partial batch; None: for spec.TRAIN_SPECS
    #: ffcv backend, and torch backend on the CPU: draw the crop box on the full-size image (same law and
    #: draws), then let libjpeg decode at 1/2, 1/4 or 1/8 size when the box still spans at least K x K
    #: pixels there (dct.dct_reduction: it never adds upsampling), and resize from that. Same boxes;
    #: pixels within a few grey levels of the full decode. False: full decodes (torch: the reference).
    reduced_decode: bool = True
    #: A damaged record (its bytes' CRC-32 differs from the conversion's, or, without CRCs, libjpeg fails or warns
    #: of corrupt data; see :meth:`.source.Source.damage`): 'stop' raises
    #: RecordError naming it; 'skip' leaves it out of its batch (the batch is one image shorter, never refilled, so
    #: no image is seen twice) and counts it (:attr:`BatchLoader.skipped`, and a warning line after each epoch).
    on_corrupt: str = "stop"
    #: The model's output index for each of the records' labels (a --classes-map onto another label space, e.g. a
    #: subset of ImageNet's 1000 classes); None: labels as stored.
    label_map: tuple[int, ...] | None = None

    def is_training(self, spec) -> bool:
        return is_train_da(spec) if self.training is None else self.training


def indexed_device(device: str) -> torch.device:
    """:func:`runtime.resolve_device`, with a CUDA device's index made explicit (DALI needs one)."""
    dev = runtime.resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def workers(config: LoaderConfig) -> int:
    import os

    return config.workers or len(os.sched_getaffinity(0))


_NORM: dict = {}  # (device type, index, mean, std) -> (mean, 1 / std) in grey levels, on that device
_BUFFERS: dict = {}  # shape -> float32 arrays to_batch wrote batches into (see _free_buffer)
_KEPT = 3  # buffers kept per shape


def _free_buffer(shape) -> np.ndarray:
    """A float32 array of ``shape`` that nothing else references: one that an earlier batch used and its consumer
    has dropped (only this pool holds it), else a new one (kept, up to ``_KEPT`` per shape). A new 64 x 224 x 224
    x 3 batch is 38.5 MB, past glibc's largest mmap threshold (32 MB), so each one is fresh pages from the kernel,
    zeroed and faulted in: ~50-150 us an image here, about as long as the normalisation itself."""
    import sys

    kept = _BUFFERS.setdefault(tuple(shape), [])
    for buffer in kept:
        if sys.getrefcount(buffer) == 3:  # kept, the loop's name, getrefcount's argument: no tensor uses it
            return buffer
    buffer = np.empty(shape, np.float32)
    if len(kept) < _KEPT:
        kept.append(buffer)
    return buffer


def to_batch(nhwc: torch.Tensor, labels, device: torch.device, spec):
    """uint8 (N, K, K, 3) pixels -> the batch contract (float NCHW channels_last, normalised with ``spec.mean`` and
    ``spec.std``, fractions of 255; int64 labels).

    On the CPU one compiled pass (:func:`.kernels.normalise`) writes the floats into a numpy array, which
    numpy backs with transparent huge pages where the kernel offers them (64 x 3 x 224 x 224 float32 is
    38.5 MB; in 4 KiB pages its first write cost ~0.5 ms per image here, more than the normalisation).
    Elsewhere torch normalises on the device."""
    labels = torch.as_tensor(labels).reshape(-1).to(device=device, dtype=torch.int64, non_blocking=True)
    key = (device.type, device.index, spec.mean, spec.std)
    if key not in _NORM:
        mean = torch.tensor(spec.mean, device=device) * 255
        _NORM[key] = (mean, 1 / (torch.tensor(spec.std, device=device) * 255))
    mean, inv_std = _NORM[key]
    if device.type == "cpu":
        src = nhwc.cpu().contiguous().numpy()
        out = _free_buffer(src.shape)
        kernels.normalise(src.reshape(-1), mean.numpy(), inv_std.numpy(), out.reshape(-1))
        return torch.from_numpy(out).permute(0, 3, 1, 2), labels  # NHWC memory is NCHW channels_last
    x = nhwc.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    return x.sub_(mean.view(1, 3, 1, 1)).mul_(inv_std.view(1, 3, 1, 1)), labels


class BatchLoader:
    """Epoch bookkeeping shared by the backends: the sampler, ``len`` in batches and ``set_epoch``."""

    def __init__(self, spec, source, config: LoaderConfig):
        self.spec, self.source, self.config = spec, source, config
        self.device = indexed_device(config.device)
        self.training = config.is_training(spec)
        if config.batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {config.batch_size}")
        if config.on_corrupt not in ON_CORRUPT:
            raise UserError(f"unknown on_corrupt {config.on_corrupt!r}; choose one of {', '.join(ON_CORRUPT)}")
        self.damaged = DamagedRecords(source, config.on_corrupt)
        self.sampler = RASampler(len(source), config.world_size, config.rank, config.repeats,
                                 shuffle=self.training, seed=config.seed, epoch_fraction=config.epoch_fraction)
        self.epoch = 0

    @property
    def skipped(self) -> int:
        """Damaged records left out so far (``on_corrupt='skip'``), over every epoch of this loader."""
        return self.damaged.skipped

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle: the next iteration reads epoch ``epoch``'s order (the same on every rank)."""
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n, bs = len(self.sampler), self.config.batch_size
        return n // bs if self.training else -(-n // bs)

    @property
    def epoch_length(self) -> int:
        """Samples this rank reads per epoch: whole batches when training, every sample of its shard otherwise."""
        return len(self) * self.config.batch_size if self.training else len(self.sampler)

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's record indices for ``epoch`` (default: the current one; :attr:`epoch_length` of them)."""
        return self.sampler.indices(self.epoch if epoch is None else epoch)[:self.epoch_length]

    def batches(self, epoch: int | None = None):
        """The record indices of ``epoch`` (default: the current one), one array per batch."""
        idx, bs = self.epoch_indices(epoch), self.config.batch_size
        return [idx[s:s + bs] for s in range(0, len(idx), bs)]


class Relabelled:
    """A loader whose labels go through ``config.label_map`` (on the batch's device); everything else is the
    wrapped loader's."""

    def __init__(self, loader, label_map: tuple[int, ...]):
        self.loader, self.label_map = loader, torch.tensor(label_map, dtype=torch.int64, device=loader.device)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            yield images, self.label_map[labels]


class DamagedRecords:
    """The one policy for damaged records, shared by the backends.

    The torch backend's datasets and DALI's feed ask :meth:`sound` before they decode a record (a CRC-32 of its
    bytes, or where the conversion recorded none, libjpeg's decode check: :meth:`.source.Source.damage`); its
    verdict is kept per record (in shared memory where DataLoader workers write it: :meth:`share`), so each record
    is checked once per loader. The ffcv decoder makes the same check in its compiled code, into the same verdicts.
    The main process hands each batch's damaged records to :meth:`found`, which stops or counts."""

    def __init__(self, source, policy: str):
        self.source, self.policy = source, policy
        self.verdict = torch.zeros(len(source), dtype=torch.int8)  # 0 unchecked, 1 sound, 2 damaged
        self.skipped, self.in_epoch = 0, 0

    def share(self) -> None:
        """Move the verdicts to shared memory, before worker processes start."""
        self.verdict.share_memory_()

    def sound(self, i: int) -> bool:
        if self.verdict[i] == 0:
            self.verdict[i] = 1 if self.source.damage(i) is None else 2
        return bool(self.verdict[i] == 1)

    def found(self, bad, batch_size: int) -> None:
        """Stop at the first of ``bad`` (record indices of one batch of ``batch_size``), or count them."""
        bad = [int(i) for i in bad]
        if not bad:
            return
        if self.policy == "stop" or len(bad) == batch_size:
            why = self.source.damage(bad[0]) or "its decoder could not decode it"
            whole = f"; so are all {batch_size} records of its batch" if self.policy == "skip" else ""
            raise RecordError(f"{self.source.describe(bad[0])} is damaged: {why}{whole}. {REPAIR}")
        self.skipped += len(bad)
        self.in_epoch += len(bad)

    def end_epoch(self, epoch: int) -> None:
        """The warning line of an epoch in which damaged records were left out."""
        if self.in_epoch:
            import sys

            print(f"warning: epoch {epoch}: left out {self.in_epoch} damaged record(s) of split {self.source.split!r} "
                  f"in {self.source.root} (--on-corrupt skip); {self.skipped} in all", file=sys.stderr)
        self.in_epoch = 0
