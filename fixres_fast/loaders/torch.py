"""The reference backend: torchvision transforms v2 on PIL images, decoded in DataLoader workers.

With a CUDA device, workers only read the JPEG bytes; the main process decodes the batch with
nvJPEG (``torchvision.io.decode_jpeg(device='cuda')``) and crops and resizes on the GPU, with
the crop boxes from :mod:`fixres_fast.geometry`. This module never imports DALI or FFCV.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from torch.utils.data import DataLoader

from .. import geometry
from ..spec import TestDA2, TrainDA
from .common import BatchLoader, LoaderConfig, to_batch, workers


class DA2Crop(torch.nn.Module):
    """Test DA2's crop on an already resized image: vertically centred, left edge drawn by geometry's law."""

    def __init__(self, k_test: int, shift: float):
        super().__init__()
        self.k_test, self.lo_hi = k_test, geometry.da2_position_range(shift)

    def forward(self, img):
        w, h = img.size
        left = geometry.da2_left(w - self.k_test, np.random.uniform(*self.lo_hi))
        top = geometry.centre_left(h, self.k_test)
        return img.crop((left, top, left + self.k_test, top + self.k_test))


def pil_transform(spec):
    """The spec as a torchvision v2 pipeline on PIL images (the reference for every backend)."""
    from torchvision.transforms import v2

    if isinstance(spec, TrainDA):
        steps = [v2.RandomResizedCrop(spec.k_train, scale=spec.area_range, ratio=spec.aspect_range, antialias=True)]
    elif isinstance(spec, TestDA2):
        steps = [v2.Resize(spec.resize_short, antialias=True), DA2Crop(spec.k_test, spec.shift)]
    else:
        steps = [v2.Resize(spec.resize_short, antialias=True), v2.CenterCrop(spec.k_test)]
    if getattr(spec, "flip", False):
        steps.append(v2.RandomHorizontalFlip())
    if getattr(spec, "jitter", 0):
        steps.append(v2.ColorJitter(spec.jitter, spec.jitter, spec.jitter))
    return v2.Compose(steps)


class PILDataset(torch.utils.data.Dataset):
    """Record i -> (HWC uint8 pixels, label, i, decoded ok). A failed decode is flagged, never passed as pixels."""

    def __init__(self, source, spec):
        self.source, self.transform, self.size = source, pil_transform(spec), spec.size

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self.source.read(i))) as im:
                pixels = np.asarray(self.transform(im.convert("RGB")))
            return torch.from_numpy(pixels.copy()), self.source.labels[i], i, True
        except Exception:  # reported with the record's index and path by the main process
            return torch.zeros(self.size, self.size, 3, dtype=torch.uint8), -1, i, False


class BytesDataset(PILDataset):
    """Record i -> (encoded bytes, label, i, True), for decoding on the GPU."""

    def __getitem__(self, i):
        return torch.from_numpy(self.source.read(i).copy()), self.source.labels[i], i, True


def _collate_bytes(items):
    data, labels, idx, ok = zip(*items)
    return list(data), torch.as_tensor(labels), torch.as_tensor(idx), torch.as_tensor(ok)


class TorchLoader(BatchLoader):
    def __init__(self, spec, source, config: LoaderConfig):
        super().__init__(spec, source, config)
        cuda = self.device.type == "cuda"
        dataset = (BytesDataset if cuda else PILDataset)(source, spec)
        n = workers(config)
        self.loader = DataLoader(dataset, batch_sampler=_Batches(self), num_workers=n, pin_memory=cuda,
                                 persistent_workers=n > 0, collate_fn=_collate_bytes if cuda else None,
                                 prefetch_factor=4 if n > 0 else None)

    def __iter__(self):
        for pixels, labels, idx, ok in self.loader:
            if not bool(torch.as_tensor(ok).all()):
                self.source.check(idx[~ok].tolist())
            if self.device.type == "cuda":
                pixels = gpu_augment(pixels, self.spec, self.device)
            yield to_batch(pixels, labels, self.device)


class _Batches:
    """The loader's current epoch as a batch sampler (re-read at every iteration, so set_epoch applies)."""

    def __init__(self, owner: BatchLoader):
        self.owner = owner

    def __iter__(self):
        return iter([b.tolist() for b in self.owner.batches()])

    def __len__(self):
        return len(self.owner)


def gpu_augment(datas: list[torch.Tensor], spec, device) -> torch.Tensor:
    """nvJPEG-decode a batch and apply the spec to the whole batch at once: uint8 (N, K, K, 3).

    The decoded images are padded into one tensor, and a single ``roi_align`` crops every RoC and
    resizes it to K x K (with ``sampling_ratio=-1`` each output pixel averages ceil(RoC/K)^2
    bilinear samples, an area filter when shrinking). Flip and colour jitter are batched too, so
    the kernels launched per batch do not grow with its size (beyond one copy per image).
    """
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.ops import roi_align

    images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    n, k = len(images), spec.size
    batch = torch.zeros(n, 3, max(i.shape[1] for i in images), max(i.shape[2] for i in images), device=device)
    rois = np.empty((n, 5), dtype=np.float32)
    for b, img in enumerate(images):
        batch[b, :, :img.shape[1], :img.shape[2]] = img
        top, left, h, w = gpu_box(spec, img.shape[1], img.shape[2])
        rois[b] = (b, left, top, left + w, top + h)
    out = roi_align(batch, torch.from_numpy(rois).to(device), (k, k), 1.0, -1, True)
    if getattr(spec, "flip", False):
        flip = torch.from_numpy(np.random.rand(n) < 0.5).to(device)
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    if getattr(spec, "jitter", 0):
        out = batch_jitter(out, spec.jitter)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def batch_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Brightness, contrast, saturation factors ~ U(1 - s, 1 + s) per image, applied in that order
    (as DALI does; torchvision shuffles the order) on float RGB in [0, 255]."""
    factors = torch.from_numpy(np.random.uniform(1 - strength, 1 + strength, (3, x.shape[0], 1, 1, 1))).to(x)
    grey = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x * factors[0]).clamp_(0, 255)
    mean = (x * grey).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - mean) * factors[1] + mean).clamp_(0, 255)
    luma = (x * grey).sum(1, keepdim=True)
    return ((x - luma) * factors[2] + luma).clamp_(0, 255)


def gpu_box(spec, height: int, width: int):
    if isinstance(spec, TrainDA):
        return geometry.random_resized_crop(height, width, *spec.area_range, *spec.aspect_range, spec.max_attempts)
    position = np.random.uniform(*geometry.da2_position_range(spec.shift)) if isinstance(spec, TestDA2) else 0.5
    return geometry.test_box(height, width, spec.k_test, spec.resize_short, position)


def build_torch_loader(spec, source, config: LoaderConfig) -> TorchLoader:
    """torchvision/PIL loader (CPU), or nvJPEG + GPU crops with ``config.device='cuda'``."""
    return TorchLoader(spec, source, config)
