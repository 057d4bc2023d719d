"""The seed law: one seed per (seed, rank, epoch, stream), in the range every consumer takes."""
import torch

from fixres_fast.seeds import Stream, seed_for


def test_each_part_of_the_tuple_gives_its_own_seed():
    base = seed_for(0, 0, 0, Stream.AUGMENT)
    assert seed_for(0, 0, 0, Stream.AUGMENT) == base  # a law: the same tuple, the same seed
    others = [seed_for(1, 0, 0, Stream.AUGMENT), seed_for(0, 1, 0, Stream.AUGMENT), seed_for(0, 0, 1, Stream.AUGMENT),
              *(seed_for(0, 0, 0, s) for s in Stream if s != Stream.AUGMENT)]
    assert len({base, *others}) == 1 + len(others)
    # the rank and epoch are not folded into one number (the old law's seed * 1009 + rank collided)
    assert seed_for(0, 1009, 0, Stream.TRAIN) != seed_for(1, 0, 0, Stream.TRAIN)
    for s in [base, *others]:
        assert 0 <= s < 2 ** 31
        torch.Generator().manual_seed(s)
