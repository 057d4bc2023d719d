"""The reference backend: torchvision transforms v2 on PIL images, decoded in DataLoader workers.

With a CUDA device, workers only read the JPEG bytes and headers and draw the crop boxes, flips
and jitter (:class:`BytesDataset`); threads of the main process decode each batch with nvJPEG
(``torchvision.io.decode_jpeg(device='cuda')``) and crop and resize it on the GPU, a batch ahead of
the caller (:func:`overlapped`). This module never imports DALI or FFCV.
"""
from __future__ import annotations

import io
import math
import signal
import threading
import weakref
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader

from .. import geometry
from ..errors import UserError
from ..seeds import Stream, seed_for
from ..spec import TestDA2, TrainDA, TrainFixedDA
from .common import BatchLoader, LoaderConfig, to_batch, workers
from .dct import IDCT_BLUR_TAPS, dct_reduction
from .source import RecordError


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


class FixedCrop(torch.nn.Module):
    """Train-fixed's crop on an already resized image: top and left drawn by geometry's law (torchvision's
    ``RandomCrop``, from numpy's generator as :class:`DA2Crop` draws)."""

    def __init__(self, k_train: int):
        super().__init__()
        self.k_train = k_train

    def forward(self, img):
        w, h = img.size
        top, left = geometry.plain(geometry.random_crop_offsets)(h, w, self.k_train)
        return img.crop((left, top, left + self.k_train, top + self.k_train))


def pil_filter(spec) -> Image.Resampling:
    """PIL's filter for the spec's interpolation ('bilinear' or 'bicubic'): what torchvision uses on PIL images."""
    return Image.Resampling[spec.interpolation.upper()]


def pil_transform(spec):
    """The spec as a torchvision v2 pipeline on PIL images (the reference for every backend); the resize is PIL's,
    antialiased, with the spec's interpolation."""
    from torchvision.transforms import InterpolationMode, v2

    mode = InterpolationMode(spec.interpolation)
    if isinstance(spec, TrainDA):
        steps = [v2.RandomResizedCrop(spec.k_train, scale=spec.area_range, ratio=spec.aspect_range,
                                      interpolation=mode, antialias=True)]
    elif isinstance(spec, TestDA2):
        steps = [v2.Resize(spec.resize_short, mode, antialias=True), DA2Crop(spec.k_test, spec.shift)]
    elif isinstance(spec, TrainFixedDA):
        steps = [v2.Resize(spec.resize_short, mode, antialias=True), FixedCrop(spec.k_train)]
    else:
        steps = [v2.Resize(spec.resize_short, mode, antialias=True), v2.CenterCrop(spec.k_test)]
    if getattr(spec, "flip", False):
        steps.append(v2.RandomHorizontalFlip())
    if getattr(spec, "jitter", 0):
        steps.append(v2.ColorJitter(spec.jitter, spec.jitter, spec.jitter))
    return v2.Compose(steps)


#: the 3 x 3 kernels of :data:`~.dct.IDCT_BLUR_TAPS`, for PIL, per interpolation
IDCT_BLUR = {name: ImageFilter.Kernel((3, 3), [a * b for a in taps for b in taps], scale=1)
             for name, taps in IDCT_BLUR_TAPS.items()}


def draft(im, scale: int) -> int:
    """Ask PIL (lazily opened, not yet decoded) to decode at 1/``scale``; the scale it will use (1 if it can't).

    libjpeg's reduced output pixel j covers input pixels [j*s, (j+1)*s): coordinates map by x / s."""
    if scale == 1:
        return 1
    width, height = im.size
    got = im.draft(im.mode, (width // scale, height // scale))  # PIL picks the largest s with size // s >= asked
    return 1 if got is None else int(round(width / got[1][2]))


class ReducedDecode:
    """The spec's crop and resize with reduced-size DCT decoding (``LoaderConfig.reduced_decode``).

    The box is drawn on the full-size image (the JPEG header gives its size; nothing is decoded yet)
    with the reference's own law and random draws (torchvision's ``RandomResizedCrop.make_params``;
    test DA's resize-then-centre-crop window; test DA2's shifted window, drawn as :class:`DA2Crop`
    draws it; train-fixed's window, drawn as :class:`FixedCrop` draws it). Then libjpeg decodes at the
    largest 1/s (s in 8, 4, 2, 1) at which that box still spans at least K x K pixels, and PIL's antialiased
    resize with the spec's interpolation maps the box (divided by s) to K x K. Flip and colour jitter are the
    reference's modules, in its order. With s = 1 the output is the reference's; with s > 1 libjpeg's scaled IDCT
    does part of the downscaling (a few grey levels from the reference, on a few pixels; tests/test_loaders.py
    bounds it).
    """

    def __init__(self, spec):
        from torchvision.transforms import v2

        self.spec, self.k = spec, spec.size
        ref = pil_transform(spec).transforms
        self.train = isinstance(spec, TrainDA)
        self.rrc = ref[0] if self.train else None
        rest = ref[1:] if self.train else ref[2:]  # flip, jitter
        self.rest = v2.Compose(rest) if rest else (lambda img: img)
        self.lo_hi = geometry.da2_position_range(spec.shift) if isinstance(spec, TestDA2) else None
        self.fixed = isinstance(spec, TrainFixedDA)

    def box(self, im):
        """(x0, y0, x1, y1) in ``im``'s full-size pixels: the region that becomes the K x K output."""
        k, (width, height) = self.k, im.size
        if self.train:
            p = self.rrc.make_params([im])  # reads only im.size
            return p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]
        if self.fixed:
            window = geometry.plain(geometry.drawn_fixed_window)(height, width, k, self.spec.resize_short)
        else:
            position = 0.5 if self.lo_hi is None else np.random.uniform(*self.lo_hi)
            window = geometry.plain(geometry.test_window)(height, width, k, self.spec.resize_short, position)
        sx, sy = width / window.resized_w, height / window.resized_h
        return window.left * sx, window.top * sy, (window.left + k) * sx, (window.top + k) * sy

    def __call__(self, im, box=None):
        """``im``: a PIL image as ``Image.open`` returns it (not yet decoded); ``box``: (x0, y0, x1, y1)
        in its full-size pixels, or None to draw it (:meth:`box`). Returns the K x K RGB PIL image."""
        x0, y0, x1, y1 = self.box(im) if box is None else box
        s = draft(im, dct_reduction.py_func(x1 - x0, y1 - y0, self.k, self.k))  # plain Python, as geometry.plain
        img = im.convert("RGB")
        if s > 1 and abs((x1 - x0) / s - self.k) < 1e-6 and abs((y1 - y0) / s - self.k) < 1e-6:
            img = img.filter(IDCT_BLUR[self.spec.interpolation])  # libjpeg did the whole downscale: the resize copies
        # train DA: torchvision crops, then resizes; test DA (and train-fixed) resizes the whole image, then crops
        box = (x0 / s, y0 / s, x1 / s, y1 / s)
        return self.rest(resize_box(img, box, self.k, crop_first=self.train, resample=pil_filter(self.spec)))


def resize_box(im, box, k: int, crop_first: bool, resample: Image.Resampling):
    """``box`` (float, in ``im``'s pixels) resized to k x k with PIL's antialiased filter ``resample``.

    ``crop_first``: cut the box out first (its integer hull), so the filter stops at the box's edges as
    torchvision's crop-then-resize does; otherwise the filter reads the pixels around it, as resizing
    the whole image and then cropping does."""
    if crop_first:
        x0, y0 = int(box[0]), int(box[1])
        x1, y1 = min(im.width, math.ceil(box[2])), min(im.height, math.ceil(box[3]))
        im = im.crop((x0, y0, x1, y1))
        box = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
    if resample == Image.Resampling.BICUBIC:
        # the horizontal pass first, as the reference's resize and the other backends run it: PIL clips each pass to
        # 0..255, so for a filter that overshoots the order shows, and Pillow 13 may start a box's with the vertical one
        im = im.resize((k, im.height), resample, box=(box[0], 0, box[2], im.height))
        box = (0, box[1], k, box[3])
    return im.resize((k, k), resample, box=box)


class PILDataset(torch.utils.data.Dataset):
    """Record i -> (HWC uint8 pixels, label, i, decoded ok). A failed decode is flagged, never passed as pixels.

    ``reduced``: decode through :class:`ReducedDecode`; else the reference (:func:`pil_transform` on a full decode)."""

    def __init__(self, source, spec, damaged=None, reduced: bool = False):
        self.source, self.size, self.damaged = source, spec.size, damaged
        self.reduced = ReducedDecode(spec) if reduced else None
        self.transform = pil_transform(spec)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        try:
            # PIL decodes around corrupt data: the record's CRC-32 (or libjpeg's verdict), once per record
            if self.damaged is not None and not self.damaged.sound(i):
                raise RecordError("damaged")
            with self.source.open_image(i) as im:
                out = self.reduced(im) if self.reduced is not None else self.transform(im.convert("RGB"))
                pixels = np.asarray(out)
            return torch.from_numpy(pixels.copy()), self.source.labels[i], i, True
        except Exception:  # reported with the record's index and path by the main process
            return torch.zeros(self.size, self.size, 3, dtype=torch.uint8), -1, i, False


class BytesDataset(torch.utils.data.Dataset):
    """Record i -> (encoded bytes, label, i, ok, box, flip, jitter factors), for decoding on the GPU.

    The worker reads only the JPEG header (for the image's size) and draws every random choice here,
    with the reference's law and the worker's seeded generators (as :class:`ReducedDecode` does on
    the CPU): ``box`` (x0, y0, x1, y1) in the image's pixels, ``flip`` and the brightness, contrast and
    saturation factors. The GPU side then only decodes and applies them, so its output follows
    (seed, rank) whatever thread runs it. A header that does not parse flags the record (``ok`` False)."""

    def __init__(self, source, spec, damaged=None):
        self.source, self.boxes, self.damaged = source, ReducedDecode(spec), damaged
        self.flip, self.jitter = getattr(spec, "flip", False), getattr(spec, "jitter", 0)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        flip = bool(torch.rand(()) < 0.5) if self.flip else False
        factors = torch.empty(3).uniform_(1 - self.jitter, 1 + self.jitter) if self.jitter else torch.ones(3)
        try:
            # nvJPEG decodes around corrupt data: the record's CRC-32 (or libjpeg's verdict), once per record
            if self.damaged is not None and not self.damaged.sound(i):
                raise RecordError("damaged")
            data = self.source.read(i)
            with Image.open(io.BytesIO(data)) as im:
                box = self.boxes.box(im)
            return data, self.source.labels[i], i, True, box, flip, factors
        except Exception:  # reported with the record's index and path by the main process
            return np.zeros(0, np.uint8), -1, i, False, (0.0, 0.0, 1.0, 1.0), False, torch.ones(3)


class EncodedBatch(NamedTuple):
    """One batch of JPEG bytes as the workers hand it over: one buffer (one shared-memory transfer
    per batch, not one per image) with each image's length, and the draws of :class:`BytesDataset`."""
    data: torch.Tensor  # uint8, every image's bytes back to back
    sizes: list[int]
    labels: torch.Tensor
    idx: torch.Tensor
    ok: torch.Tensor
    boxes: torch.Tensor  # float64 (N, 4): x0, y0, x1, y1
    flips: torch.Tensor  # bool (N,)
    factors: torch.Tensor  # float32 (N, 3): brightness, contrast, saturation

    def images(self) -> list[torch.Tensor]:
        return list(torch.split(self.data, self.sizes))


#: The signals a stop request arrives by (SIGTERM from torchrun or a scheduler, SIGINT from Ctrl-C).
STOPS = {signal.SIGTERM, signal.SIGINT}


def _leave_stops_to_the_trainer(worker_id: int) -> None:
    """A DataLoader worker ignores SIGTERM and SIGINT: the process that trains handles them (it writes a resumable
    checkpoint, then shuts its workers down). torchrun stops its processes by signalling their whole process group,
    and Ctrl-C reaches the terminal's; a worker killed by it first failed the step before the checkpoint was written."""
    for s in STOPS:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)  # blocked by _started: one that came meanwhile is dropped


def _collate_bytes(items) -> EncodedBatch:
    data, labels, idx, ok, boxes, flips, factors = zip(*items)
    return EncodedBatch(torch.from_numpy(np.concatenate(data)), [len(d) for d in data], torch.as_tensor(labels),
                        torch.as_tensor(idx), torch.as_tensor(ok), torch.tensor(boxes, dtype=torch.float64),
                        torch.as_tensor(flips), torch.stack(factors))


class TorchLoader(BatchLoader):
    def __init__(self, spec, source, config: LoaderConfig):
        super().__init__(spec, source, config)
        cuda = self.device.type == "cuda"
        if cuda and source.raw:
            raise UserError(f"{source.root} stores raw pixels (--write-mode raw), and the torch backend on CUDA "
                            "decodes JPEG with nvJPEG: use the ffcv backend, or the torch backend on the CPU")
        self.damaged.share()  # the workers check records
        dataset = (BytesDataset(source, spec, self.damaged) if cuda
                   else PILDataset(source, spec, self.damaged, reduced=config.reduced_decode))
        n = workers(config)
        # the generator seeds each worker's random, numpy and torch when an epoch starts (re-seeded then, with
        # workers started afresh): augmentations follow (seed, rank, epoch), so that a run resumed at an epoch
        # draws what an uninterrupted one draws (persistent workers would carry their RNG over from earlier epochs)
        self.loader = DataLoader(dataset, batch_sampler=_Batches(self), num_workers=n,
                                 collate_fn=_collate_bytes if cuda else None,
                                 prefetch_factor=4 if n > 0 else None, generator=torch.Generator(),
                                 worker_init_fn=_leave_stops_to_the_trainer)

    def __iter__(self):
        self.loader.generator.manual_seed(seed_for(self.config.seed, self.config.rank, self.epoch, Stream.AUGMENT))
        if self.device.type == "cuda":
            # decoding and augmenting batch i + 1 (nvJPEG and roi_align, GIL released) overlaps the
            # caller's work on batch i
            yield from overlapped(self._started(), lambda b: decode_batch(self._sound(b), self.spec, self.source,
                                                                          self.device), self.device)
        else:
            for pixels, labels, idx, ok in self._started():
                if not bool(torch.as_tensor(ok).all()):
                    self.damaged.found(idx[~ok].tolist(), len(idx))
                    pixels, labels = pixels[ok], labels[ok]
                yield to_batch(pixels, labels, self.device, self.spec)
        self.damaged.end_epoch(self.epoch)

    def _started(self):
        """The DataLoader's iterator, its worker processes started with SIGTERM and SIGINT blocked. A worker installs
        torch's SIGTERM handler (which dies) before :func:`_leave_stops_to_the_trainer` ignores the signal, so a stop
        that reached the process group then (torchrun signals it whole; workers start afresh each epoch) killed the
        worker and failed the step; blocked, it waits in the worker until ignored, and reaches this process when the
        mask is restored here."""
        if not self.loader.num_workers:
            return iter(self.loader)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
        try:
            return iter(self.loader)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _sound(self, batch: "EncodedBatch") -> "EncodedBatch":
        """The batch without its damaged records (or RecordError, by the policy)."""
        if bool(batch.ok.all()):
            return batch
        self.damaged.found(batch.idx[~batch.ok].tolist(), len(batch.idx))
        keep = batch.ok.tolist()
        images = [im for im, k in zip(batch.images(), keep) if k]
        return EncodedBatch(torch.cat(images), [len(im) for im in images], *(t[batch.ok] for t in (
            batch.labels, batch.idx, batch.ok, batch.boxes, batch.flips, batch.factors)))


class _Batches:
    """The loader's current epoch as a batch sampler (re-read at every iteration, so set_epoch applies).

    It holds its owner weakly: a reference cycle would leave a dropped loader's persistent workers to
    the cyclic garbage collector, and a DataLoader worker forked before that collection would inherit
    the garbage and fail to stop workers that are not its own ('can only test a child process'); the
    loaders' clean-up then also waited on those workers (minutes of idle time in `fixres-fast demo`)."""

    def __init__(self, owner: BatchLoader):
        self.owner = weakref.proxy(owner)

    def __iter__(self):
        return iter([b.tolist() for b in self.owner.batches()])

    def __len__(self):
        return len(self.owner)


def decode_batch(batch: EncodedBatch, spec, source, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of bytes -> the batch contract, on ``device``; a record that does not decode raises
    :class:`RecordError` with its index and source file (found by a full PIL decode, only on failure)."""
    if not bool(batch.ok.all()):
        source.check(batch.idx[~batch.ok].tolist())
    try:
        pixels = gpu_augment(batch, spec, device)
    except RuntimeError:  # nvJPEG names no image: find the culprit
        source.check(batch.idx.tolist())
        raise
    return to_batch(pixels, batch.labels, device, spec)


def gpu_augment(batch: EncodedBatch, spec, device) -> torch.Tensor:
    """nvJPEG-decode a batch and apply its drawn boxes, flips and jitter at once: uint8 (N, K, K, 3).

    Bilinear: each image's box, with a 1-pixel margin, is cut out of its decoded image into one zero-padded
    tensor, and a single ``roi_align`` resizes every box to K x K (with ``sampling_ratio=-1`` each
    output pixel averages ceil(box/K)^2 bilinear samples, an area filter when shrinking). Bicubic: PIL's
    antialiased filter per image (:func:`bicubic_resize`). Flip and colour jitter are batched, so the kernels
    launched per batch do not grow with its size (beyond one copy, bicubic: two resizes, per image). On the CPU the
    same function decodes with libjpeg (tests).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    images = decode_jpeg(batch.images(), mode=ImageReadMode.RGB, device=device)
    resize = bicubic_resize if spec.interpolation == "bicubic" else roi_resize
    out = resize(images, batch.boxes.numpy(), spec.size, crop_first=isinstance(spec, TrainDA))
    if getattr(spec, "flip", False):
        flip = batch.flips.to(device)
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    if getattr(spec, "jitter", 0):
        out = batch_jitter(out, batch.factors.to(device))
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def bicubic_resize(images: list[torch.Tensor], boxes: np.ndarray, k: int, crop_first: bool) -> torch.Tensor:
    """PIL's antialiased bicubic resize of each image's box to k x k, as float (N, 3, k, k) in [0, 255].

    ``interpolate(mode='bicubic', antialias=True)`` is PIL's filter (a = -0.5, widened when shrinking) in float;
    run as PIL runs it, the horizontal pass first, clipped to 0..255 (PIL stores it in uint8), then the vertical
    (a pass at scale 1 copies). Train DA (``crop_first``): the box (whole pixels) is cut out, then resized. Test DA:
    the whole image is resized and the window cut out; the box is that window in the image's pixels
    (:meth:`ReducedDecode.box`), so the resized size and the window's corner are the box's, rounded."""
    import torch.nn.functional as F

    out = []
    for img, (x0, y0, x1, y1) in zip(images, boxes):
        h, w = img.shape[1:]
        if crop_first:
            img, size, top, left = img[:, int(y0):int(y1), int(x0):int(x1)], (k, k), 0, 0
        else:
            size = (round(k * h / (y1 - y0)), round(k * w / (x1 - x0)))
            top, left = round(y0 * size[0] / h), round(x0 * size[1] / w)
        x = img[None].float()
        for pass_size in ((x.shape[2], size[1]), size):  # horizontal, then vertical
            x = F.interpolate(x, size=pass_size, mode="bicubic", antialias=True).clamp_(0, 255)
        out.append(x[0, :, top:top + k, left:left + k])
    return torch.stack(out)


def roi_resize(images: list[torch.Tensor], boxes: np.ndarray, k: int, crop_first: bool) -> torch.Tensor:
    """Each image's box resized to k x k by one ``roi_align`` over the batch (an area filter when shrinking; the
    same for both modes' orders), as float (N, 3, k, k)."""
    from torchvision.ops import roi_align

    n, device = len(images), images[0].device
    width_height = np.array([(img.shape[2], img.shape[1]) for img in images])
    lo = np.maximum(np.floor(boxes[:, :2]) - 1, 0).astype(np.int64)
    hi = np.minimum(np.ceil(boxes[:, 2:]) + 1, width_height).astype(np.int64)
    (w, h) = (hi - lo).max(0)
    cut = torch.zeros(n, 3, int(h), int(w), device=device)
    for b, img in enumerate(images):
        (x0, y0), (x1, y1) = lo[b], hi[b]
        cut[b, :, :y1 - y0, :x1 - x0] = img[:, y0:y1, x0:x1]
    rois = np.concatenate([np.arange(n)[:, None], boxes - np.tile(lo, 2)], 1).astype(np.float32)
    return roi_align(cut, torch.from_numpy(rois).to(device), (k, k), 1.0, -1, True)


def batch_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation, applied in that order (as DALI does; torchvision shuffles
    the order) on float RGB in [0, 255], with ``factors`` (N, 3) drawn per image from U(1 - s, 1 + s)."""
    f = factors.to(x).T.reshape(3, -1, 1, 1, 1)
    grey = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x * f[0]).clamp_(0, 255)
    mean = (x * grey).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - mean) * f[1] + mean).clamp_(0, 255)
    luma = (x * grey).sum(1, keepdim=True)
    return ((x - luma) * f[2] + luma).clamp_(0, 255)


def overlapped(items, fn, device: torch.device, depth: int = 2):
    """``fn(item)`` for each item, computed up to ``depth`` items ahead in threads, yielded in order.

    On CUDA each thread works on its own stream; the caller's stream waits for a result before using
    it, and the result's memory is marked as used there (so the allocator cannot hand it out again
    while the caller's kernels still read it). An exception in ``fn`` is raised by the caller."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    cuda = device.type == "cuda"
    local = threading.local()

    def run(item):
        if not cuda:
            return fn(item), None
        if not hasattr(local, "stream"):
            local.stream = torch.cuda.Stream(device)
        with torch.cuda.stream(local.stream):
            out = fn(item)
            done = torch.cuda.Event()
            done.record(local.stream)
        return out, done

    def take(future):
        out, done = future.result()
        if done is not None:
            stream = torch.cuda.current_stream(device)
            stream.wait_event(done)
            for t in out:
                t.record_stream(stream)
        return out

    with ThreadPoolExecutor(depth, thread_name_prefix="fixres-decode") as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(run, item))
            if len(pending) > depth:
                yield take(pending.popleft())
        while pending:
            yield take(pending.popleft())


def build_torch_loader(spec, source, config: LoaderConfig) -> TorchLoader:
    """torchvision/PIL loader (CPU), or nvJPEG + GPU crops with ``config.device='cuda'``."""
    return TorchLoader(spec, source, config)
