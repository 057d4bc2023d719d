"""DALI backend: one graph per mode, run on the GPU (mixed nvJPEG decoder) or on the CPU (device_id=None).

The encoded images come in through ``fn.external_source`` from :class:`~.source.Records`
(bytes straight out of the RecordIO shards at their ``.idx`` offsets, or out of a JPEG .beton) or :class:`~.source.Folder`
(the files), in the order of :class:`~.sampler.RASampler`, so sharding and repeated augmentation
follow the same law as the other backends and evaluation epochs end exactly, the last batch short.

* train DA: the RoC drawn by :func:`fixres_fast.geometry.random_resized_crop` in the feed (see
  :func:`roc_boxes`), decoded with the fused ROI decoder ``decoders.image_slice``, resized to
  K_train, colour twist, random mirror.
* test DA / test DA2: the window drawn by :func:`fixres_fast.geometry.drawn_test_window` in the feed (see
  :func:`test_windows`; centred, or at ``U(da2_position_range(shift))`` for test DA2); full decode, resize
  the short side to K_test^image, crop the window, mirror, twist.

Every resize is antialiased, with the spec's interpolation (:data:`INTERP`). ``crop_mirror_normalize`` only crops
and mirrors here (uint8 out): :func:`.common.to_batch` normalises, with the spec's mean and std, as for every backend.
"""
from __future__ import annotations

import io
import weakref

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from .. import geometry
from ..errors import UserError
from ..seeds import Stream, seed_for
from ..spec import TestDA2, TrainDA
from .common import BatchLoader, LoaderConfig, to_batch, workers


class _Feed:
    """The external source: each iteration of it is one epoch of (encoded images, labels) batches.

    DALI decodes around corrupt JPEG data with a printed warning; so each record is checked once
    (:meth:`.common.DamagedRecords.sound`: the CRC-32 of its bytes, or without CRCs libjpeg at 1/8 scale; in a
    thread pool, as zlib and ctypes release the GIL)
    and damaged ones are not fed. ``fed`` and ``dropped`` say, per batch, which records went in and (the
    damaged ones, the batch's size) which were left out; the loader applies the policy to them as each batch
    comes out."""

    def __init__(self, owner: BatchLoader, threads: int):
        self.owner, self.fed, self.dropped = weakref.proxy(owner), [], []  # weakly: a dropped loader's pipeline goes
        self.threads = threads

    def __iter__(self):
        from concurrent.futures import ThreadPoolExecutor

        self.fed, self.dropped = [], []
        source, spec, damaged = self.owner.source, self.owner.spec, self.owner.damaged
        verdict = damaged.verdict.numpy()
        with ThreadPoolExecutor(self.threads) as pool:
            for idx in self.owner.batches():
                list(pool.map(damaged.sound, idx[verdict[idx] == 0].tolist()))  # the records not yet checked
                sound = verdict[idx] == 1
                self.dropped.append((idx[~sound], len(idx)))
                if sound.any():  # a wholly damaged batch goes in as it is: the policy stops the loader at it
                    idx = idx[sound]
                self.fed.append(idx)
                yield _batch(source, spec, idx)


def _batch(source, spec, idx):
    jpegs, labels = [source.read(int(i)) for i in idx], source.labels[idx].astype(np.int32).reshape(-1, 1)
    if isinstance(spec, TrainDA):  # and the RoCs' anchors and shapes
        boxes = roc_boxes(jpegs, spec)
        return jpegs, labels, boxes[:, :2].copy(), boxes[:, 2:].copy()
    return jpegs, labels, test_windows(jpegs, spec)  # and the test windows


def _size(data) -> tuple[int, int] | None:
    """(height, width) from a JPEG's header, or None where it is not an image (DALI then reports the record)."""
    from PIL import Image

    try:
        width, height = Image.open(io.BytesIO(data)).size
    except Exception:
        return None
    return height, width


def roc_boxes(jpegs, spec) -> np.ndarray:
    """Train DA's RoC per image as (x, y, w, h), drawn by geometry's law from the JPEG header's size.

    DALI's own generator (``decoders.image_random_crop``) falls back far more often than
    torchvision on elongated images (a 4:1 image: KS p ~ 1e-7), so the RoC is drawn here and
    decoded with the fused ROI decoder ``decoders.image_slice``.
    """
    boxes = np.zeros((len(jpegs), 4), np.float32)  # not an image: decoded whole, so DALI reports the record
    for b, data in enumerate(jpegs):
        size = _size(data)
        if size is not None:
            top, left, h, w = geometry.random_resized_crop(*size, *spec.area_range, *spec.aspect_range, spec.max_attempts)
            boxes[b] = (left, top, w, h)
    return boxes


def test_windows(jpegs, spec) -> np.ndarray:
    """Test DA's (DA2's) window per image, :func:`fixres_fast.geometry.drawn_test_window` from the JPEG header's
    size, as (resized height, resized width, crop_pos_y, crop_pos_x) for ``resize`` and ``crop_mirror_normalize``."""
    k, short = spec.k_test, spec.resize_short
    lo, hi = geometry.da2_position_range(spec.shift) if isinstance(spec, TestDA2) else (0.5, 0.5)
    windows = np.full((len(jpegs), 4), (k, k, 0, 0), np.float32)  # not an image: DALI reports the record
    for b, data in enumerate(jpegs):
        size = _size(data)
        if size is not None:
            rh, rw, top, left = geometry.drawn_test_window(*size, k, short, lo, hi)
            windows[b] = (rh, rw, _crop_pos(top, rh - k), _crop_pos(left, rw - k))
    return windows


def _crop_pos(offset: int, slack: int) -> float:
    """DALI's normalised crop_pos for a window ``offset`` px in (of ``slack``): DALI rounds ``crop_pos * slack``,
    so aim a quarter pixel past the offset (a flush-right window: exactly at it), which lands on it."""
    return min((offset + 0.25) / max(slack, 1), 1.0)


#: DALI's antialiased filter for each of :data:`fixres_fast.spec.INTERPOLATIONS`.
INTERP = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}


def decode_and_crop(jpegs, placement, spec, decoder: str):
    """The mode's decode + geometry: HWC uint8 images, not yet mirrored or jittered. ``placement``: what the feed
    drew per image (:func:`_batch`): the RoC's (anchor, shape), or the test window. The resize is antialiased,
    with the spec's interpolation."""
    interp = INTERP[spec.interpolation]
    if isinstance(spec, TrainDA):
        anchor, shape = placement
        images = fn.decoders.image_slice(jpegs, anchor, shape, device=decoder, output_type=types.RGB, axis_names="WH",
                                         normalized_anchor=False, normalized_shape=False)
        return fn.resize(images, size=[spec.k_train, spec.k_train], antialias=True, interp_type=interp), {}
    window, = placement
    images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
    images = fn.resize(images, resize_x=window[1], resize_y=window[0], antialias=True, interp_type=interp)
    k = spec.k_test
    return images, {"crop": (k, k), "crop_pos_x": window[3], "crop_pos_y": window[2]}


@pipeline_def
def fixres_pipeline(feed, spec, decoder: str):
    outputs = 4 if isinstance(spec, TrainDA) else 3  # see _batch
    jpegs, labels, *box = fn.external_source(source=feed, num_outputs=outputs, batch=True, cycle="raise",
                                             dtype=[types.UINT8, types.INT32, types.FLOAT, types.FLOAT][:outputs])
    images, crop = decode_and_crop(jpegs, box, spec, decoder)
    j = getattr(spec, "jitter", 0.0)
    if j:
        factor = dict(range=[max(0.0, 1 - j), 1 + j])
        images = fn.color_twist(images, brightness=fn.random.uniform(**factor), contrast=fn.random.uniform(**factor),
                                saturation=fn.random.uniform(**factor))
    mirror = fn.random.coin_flip(probability=0.5) if getattr(spec, "flip", False) else 0
    images = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="HWC", mirror=mirror, **crop)
    if decoder == "mixed":
        labels = labels.gpu()
    return images, labels


class DALILoader(BatchLoader):
    def __init__(self, spec, source, config: LoaderConfig):
        if source.raw:
            raise UserError(f"{source.root} stores raw pixels (--write-mode raw); the dali backend decodes JPEG: "
                            "use the ffcv or torch backend, or convert with --write-mode jpg")
        super().__init__(spec, source, config)
        cuda = self.device.type == "cuda"
        self.feed = _Feed(self, workers(config))
        geometry.seed(seed_for(config.seed, config.rank, 0, Stream.AUGMENT))
        seed = seed_for(config.seed, config.rank, 0, Stream.PIPELINE)
        self.pipe = fixres_pipeline(self.feed, spec, "mixed" if cuda else "cpu", batch_size=config.batch_size,
                                    num_threads=workers(config), device_id=self.device.index if cuda else None,
                                    seed=seed, prefetch_queue_depth=2)
        self.iterator = None

    def __iter__(self):
        if self.iterator is None:
            self.iterator = DALIGenericIterator([self.pipe], ["image", "label"], auto_reset=False,
                                                last_batch_policy=LastBatchPolicy.PARTIAL)
        else:
            self.iterator.reset()
        yielded = 0
        while True:
            try:
                out = next(self.iterator)[0]
            except StopIteration:
                self.damaged.end_epoch(self.epoch)
                return
            except Exception:
                self._dropped(yielded)
                self.source.check(np.concatenate(self.feed.fed[yielded:] or [np.zeros(0, np.int64)]))
                raise
            self._dropped(yielded)
            yielded += 1
            yield to_batch(out["image"], out["label"], self.device, self.spec)

    def _dropped(self, b: int) -> None:
        """The policy for the damaged records left out of batch ``b`` (the feed runs ahead, so it has that batch)."""
        if b < len(self.feed.dropped):
            self.damaged.found(*self.feed.dropped[b])


def build_dali_loader(spec, source, config: LoaderConfig) -> DALILoader:
    """DALI loader fed by the RA sampler; ``config.device='cuda'`` runs the graph on the GPU."""
    return DALILoader(spec, source, config)
