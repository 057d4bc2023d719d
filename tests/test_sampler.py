"""The RA sampler's law: exact evaluation shards, M copies per drawn image spread over ranks, reshuffling."""
from collections import Counter

import numpy as np
import pytest

from fixres_fast.errors import UserError
from fixres_fast.loaders.sampler import RASampler


@pytest.mark.parametrize("n,world", [(10, 1), (11, 2), (11, 3), (5, 8)])
def test_evaluation_shards_are_disjoint_and_cover(n, world):
    shards = [RASampler(n, world, r, shuffle=False).indices() for r in range(world)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    assert [len(RASampler(n, world, r, shuffle=False)) for r in range(world)] == [len(s) for s in shards]


@pytest.mark.parametrize("repeats,world", [(1, 1), (3, 1), (3, 2), (3, 3), (2, 4), (3, 8)])
def test_repeated_augmentation_gives_each_drawn_image_m_copies(repeats, world):
    n = 50
    samplers = [RASampler(n, world, r, repeats=repeats, seed=7) for r in range(world)]
    shards = [s.indices(epoch=2) for s in samplers]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(samplers[0])  # equal, for DDP
    counts = Counter(np.concatenate(shards).tolist())
    assert set(counts.values()) == {repeats}  # every drawn image exactly M times over all ranks
    assert len(counts) == samplers[0].num_distinct > 0
    if world == repeats:  # torchvision's RASampler: the copies go to different ranks
        assert all(len(set(s.tolist())) == len(s) for s in shards)
    if world == 1:
        assert (shards[0].reshape(-1, repeats) == shards[0][::repeats, None]).all()  # copies side by side


def test_epoch_fraction_sets_the_epoch_length():
    assert len(RASampler(100, repeats=3)) == 99  # 33 images x 3
    assert len(RASampler(100, repeats=3, epoch_fraction=2.0)) == 198  # draws more than one permutation
    assert Counter(RASampler(100, repeats=3, epoch_fraction=2.0).indices().tolist()).most_common(1)[0][1] <= 6


def test_set_epoch_reshuffles_the_same_way_on_every_rank():
    a, b = RASampler(40, 2, 0, seed=1), RASampler(40, 2, 1, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert not set(a.indices()) & set(b.indices())
    assert list(a) == a.indices(3).tolist() and a.indices(3).tolist() != a.indices(4).tolist()
    assert RASampler(40, seed=1).indices(3).tolist() == RASampler(40, seed=1).indices(3).tolist()


@pytest.mark.parametrize("kwargs,words", [(dict(num_replicas=2, rank=2), "rank"), (dict(repeats=0), "repeats"),
                                          (dict(shuffle=False, repeats=3), "exactly once")])
def test_bad_options_say_what_is_wrong(kwargs, words):
    with pytest.raises(UserError, match=words):
        RASampler(10, **kwargs)
