"""The torch backend's batched GPU augmentation (nvJPEG + one roi_align), run here on the CPU:
the same function, decoding with libjpeg instead of nvJPEG."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from fixres_fast.loaders.torch import batch_jitter, gpu_augment, pil_transform
from fixres_fast.spec import make_spec


@pytest.fixture(scope="module")
def encoded(photos):
    return [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in photos[:6]]


@pytest.mark.parametrize("res", [128, 224, 288])
def test_batched_test_da_matches_the_pil_reference(encoded, photos, res):
    spec = make_spec("test", res)
    got = gpu_augment(encoded, spec, torch.device("cpu")).numpy().astype(float)
    ref = np.stack([np.asarray(pil_transform(spec)(Image.open(p).convert("RGB"))) for p in photos[:6]]).astype(float)
    assert got.shape == (6, res, res, 3)
    assert np.abs(got - ref).mean() < 3.5  # an area filter (roi_align) against PIL's antialiased bilinear


def test_train_da_output_and_flip(encoded):
    np.random.seed(0)
    out = gpu_augment(encoded, make_spec("train", 160), torch.device("cpu"))
    assert out.shape == (6, 160, 160, 3) and out.dtype == torch.uint8 and out.is_contiguous()
    assert len({float(o.float().mean()) for o in out}) == 6


def test_batch_jitter_keeps_range_and_identity_at_zero_strength():
    x = torch.rand(4, 3, 8, 8) * 255
    assert torch.allclose(batch_jitter(x.clone(), 0.0), x, atol=1e-3)
    y = batch_jitter(x.clone(), 0.3)
    assert y.min() >= 0 and y.max() <= 255 and not torch.allclose(y, x)
