"""Which records each rank reads in an epoch: sharding, shuffling and repeated augmentation (RA).

One law for every backend (the torch DataLoader, FFCV's TraversalOrder and DALI's external
source all take their indices from :class:`RASampler`):

* Evaluation epochs (``shuffle=False``) are exact: rank r reads records r, r + W, r + 2W, ...
  of the split, in order; together the ranks read every record exactly once.
* Training epochs (``shuffle=True``) draw a permutation from (seed, epoch) (the seed law,
  :func:`~fixres_fast.seeds.seed_for`), keep its first D images and repeat each ``repeats``
  times in a row (Hoffer et al.; FixRes Sec. 5), then deal the sequence out to ranks in turn, so
  the M copies of an image land on different ranks when W > 1 (torchvision's ``RASampler``).
  D = floor(epoch_fraction * N / repeats), rounded down so that every rank gets the same number
  of samples and every drawn image exactly M copies.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import UserError
from ..seeds import Stream, seed_for


class RASampler:
    """Indices of one rank's epoch. Usable as a ``torch.utils.data.Sampler`` (iteration, len, set_epoch)."""

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, repeats: int = 1,
                 shuffle: bool = True, seed: int = 0, epoch_fraction: float = 1.0):
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise UserError(f"rank must be in [0, world size); got rank {rank} of world size {num_replicas}")
        if repeats < 1:
            raise UserError(f"repeats must be at least 1 (the paper uses 3), got {repeats}")
        if not shuffle and (repeats != 1 or epoch_fraction != 1.0):
            raise UserError("evaluation epochs read every image exactly once: use repeats=1 and epoch_fraction=1 "
                            f"(got repeats={repeats}, epoch_fraction={epoch_fraction}), or a training loader")
        if epoch_fraction <= 0:
            raise UserError(f"epoch_fraction must be positive, got {epoch_fraction}")
        self.num_samples, self.num_replicas, self.rank = num_samples, num_replicas, rank
        self.repeats, self.shuffle, self.seed, self.epoch_fraction = repeats, shuffle, seed, epoch_fraction
        self.epoch = 0

    @property
    def num_distinct(self) -> int:
        """D: distinct images drawn per training epoch, over all ranks."""
        step = self.num_replicas // math.gcd(self.repeats, self.num_replicas)
        return int(self.epoch_fraction * self.num_samples / self.repeats) // step * step

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.num_samples, self.num_replicas))
        return self.num_distinct * self.repeats // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's record indices for ``epoch`` (default: the one set by :meth:`set_epoch`), int64."""
        if not self.shuffle:
            return np.arange(self.rank, self.num_samples, self.num_replicas, dtype=np.int64)
        rng = np.random.default_rng(seed_for(self.seed, 0, self.epoch if epoch is None else epoch, Stream.SAMPLER))
        d = self.num_distinct
        perms = [rng.permutation(self.num_samples) for _ in range(-(-d // max(self.num_samples, 1)))]
        drawn = np.concatenate(perms or [np.zeros(0, np.int64)])[:d]  # epoch_fraction > repeats draws again
        return np.repeat(drawn, self.repeats)[self.rank::self.num_replicas].astype(np.int64)

    def __iter__(self):
        return iter(self.indices().tolist())
