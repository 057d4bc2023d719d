"""The seed law: every random stream of a run is drawn from (seed, rank, epoch, stream), in one way.

``seed`` is the run's ``--seed``, ``rank`` the process's rank (0 where every rank must draw alike, as the
sampler's permutation), ``epoch`` the epoch (0 for a stream drawn once per run) and ``stream`` which of the
run's random streams it is. Distinct tuples give independent seeds (numpy's SeedSequence hashes them).
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    SAMPLER = 0  # the order of records in an epoch (the same on every rank)
    AUGMENT = 1  # a loader's augmentation draws: RoC boxes, flips, jitter (ffcv's keys, torch's workers, DALI's boxes)
    PIPELINE = 2  # DALI's own operators' generator
    TRAIN = 3  # torch's global generator during a training epoch
    ADAPT = 4  # the order of cached batches in adaptation
    INIT = 5  # torch's global generator while a model is built (its initial weights)
    ANALYSIS = 6  # the RoCs `analyze roc` draws, one epoch per group of image sizes


def seed_for(seed: int, rank: int, epoch: int, stream: Stream) -> int:
    """A seed in [0, 2**31) for ``stream`` of process ``rank`` in ``epoch`` of a run seeded ``seed`` (every
    consumer takes it: torch, numpy, numba and DALI, whose seeds are signed 32-bit)."""
    return int(np.random.SeedSequence([seed, rank, epoch, int(stream)]).generate_state(1)[0] >> 1)
