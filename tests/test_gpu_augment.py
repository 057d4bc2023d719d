"""The torch backend's GPU path (workers draw, nvJPEG decodes, one roi_align crops), run here on the
CPU: the same functions, decoding with libjpeg instead of nvJPEG."""
import numpy as np
import pytest
import torch
from PIL import Image

from fixres_fast.loaders.source import RecordError, Source
from fixres_fast.loaders.torch import (BytesDataset, _collate_bytes, batch_jitter, decode_batch, gpu_augment,
                                       overlapped, pil_transform)
from fixres_fast.spec import make_spec


class Files(Source):
    """Records that are files on disk (real JPEGs, or damaged ones)."""

    def __init__(self, paths):
        super().__init__(paths[0].parent, "val", [str(p) for p in paths], np.arange(len(paths)))

    def read(self, i):
        return np.fromfile(self.paths[i], dtype=np.uint8)


def batch_of(paths, spec, seed=0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    ds = BytesDataset(Files(paths), spec)
    return _collate_bytes([ds[i] for i in range(len(paths))])


@pytest.mark.parametrize("res", [128, 224, 288])
def test_batched_test_da_matches_the_pil_reference(photos, res):
    spec = make_spec("test", res)
    got = gpu_augment(batch_of(photos[:6], spec), spec, torch.device("cpu")).numpy().astype(float)
    ref = np.stack([np.asarray(pil_transform(spec)(Image.open(p).convert("RGB"))) for p in photos[:6]]).astype(float)
    assert got.shape == (6, res, res, 3)
    assert np.abs(got - ref).mean() < 3.5  # an area filter (roi_align) against PIL's antialiased bilinear


def test_train_da_draws_follow_the_seed_and_are_applied(photos):
    spec = make_spec("train", 160)
    a, b, c = batch_of(photos[:6], spec, 0), batch_of(photos[:6], spec, 0), batch_of(photos[:6], spec, 1)
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.flips, b.flips) and torch.equal(a.factors, b.factors)
    assert not torch.equal(a.boxes, c.boxes)
    out = gpu_augment(a, spec, torch.device("cpu"))
    assert out.shape == (6, 160, 160, 3) and out.dtype == torch.uint8 and out.is_contiguous()
    assert torch.equal(out, gpu_augment(b, spec, torch.device("cpu")))
    # every box lies inside its image, and the factors in U(1 - 0.3, 1 + 0.3)
    for (x0, y0, x1, y1), p in zip(a.boxes.tolist(), photos[:6]):
        w, h = Image.open(p).size
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert float((a.factors - 1).abs().max()) <= 0.3


def test_flip_mirrors_the_same_box(photos):
    spec = make_spec("train", 96)
    batch = batch_of([photos[0], photos[0]], spec)
    batch = batch._replace(boxes=batch.boxes[[0, 0]], flips=torch.tensor([False, True]), factors=torch.ones(2, 3))
    out = gpu_augment(batch, spec, torch.device("cpu"))
    assert torch.equal(out[1], out[0].flip(1))  # NHWC: width is dim 1 of an image


def test_a_damaged_record_is_named(photos, tmp_path):
    bad = tmp_path / "damaged.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg" * 10)
    paths = [photos[0], bad, photos[1]]
    spec = make_spec("test", 64)
    batch = batch_of(paths, spec)
    assert batch.ok.tolist() == [True, False, True]
    with pytest.raises(RecordError, match="record 1 of split 'val' .*damaged.jpg"):
        decode_batch(batch, spec, Files(paths), torch.device("cpu"))
    images, labels = decode_batch(batch_of([photos[0], photos[1]], spec), spec, Files(paths), torch.device("cpu"))
    assert images.shape == (2, 3, 64, 64) and images.is_contiguous(memory_format=torch.channels_last)


def test_a_truncated_jpeg_whose_header_parses_is_named(photos, tmp_path):
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photos[0].read_bytes()[:2000])
    paths = [photos[1], cut]
    spec = make_spec("test", 64)
    batch = batch_of(paths, spec)
    assert batch.ok.tolist() == [True, True]  # the header alone is whole
    with pytest.raises(RecordError, match="record 1 of split 'val' .*cut.jpg"):
        decode_batch(batch, spec, Files(paths), torch.device("cpu"))


def test_overlapped_keeps_order_and_raises_in_the_caller():
    def slow_square(i):
        import time
        time.sleep(0.01 * (i % 3))
        if i == 7:
            raise ValueError("seven")
        return (torch.tensor(i * i),)

    got = [int(t[0]) for t in overlapped(range(7), slow_square, torch.device("cpu"), depth=3)]
    assert got == [i * i for i in range(7)]
    with pytest.raises(ValueError, match="seven"):
        list(overlapped(range(10), slow_square, torch.device("cpu")))


def test_batch_jitter_keeps_range_and_identity_at_unit_factors():
    x = torch.rand(4, 3, 8, 8) * 255
    assert torch.allclose(batch_jitter(x.clone(), torch.ones(4, 3)), x, atol=1e-3)
    y = batch_jitter(x.clone(), torch.empty(4, 3).uniform_(0.7, 1.3))
    assert y.min() >= 0 and y.max() <= 255 and not torch.allclose(y, x)
