"""DALI backend: one graph per mode, run on the GPU (mixed nvJPEG decoder) or on the CPU (device_id=None).

The encoded images come in through ``fn.external_source`` from :class:`~.source.Records`
(bytes straight out of the RecordIO shards at their ``.idx`` offsets, or out of a JPEG .beton) or :class:`~.source.Folder`
(the files), in the order of :class:`~.sampler.RASampler`, so sharding and repeated augmentation
follow the same law as the other backends and evaluation epochs end exactly, the last batch short. A training
loader's feed runs on from one epoch into the next (:class:`_Feed`), so DALI prefetches across the epoch's end
as its own readers do; each batch's draws are keyed by (seed, rank, epoch, batch) (:func:`batch_seed`), so an
epoch's batches are the same whether the loader streamed into it or started there.

* train DA: the RoC drawn by :func:`fixres_fast.geometry.random_resized_crop` in the feed (see
  :func:`roc_boxes`), decoded with the fused ROI decoder ``decoders.image_slice``, resized to
  K_train (mirrored in the same pass where the feed drew a flip), colour twist.
* test DA / test DA2: the window drawn by :func:`fixres_fast.geometry.drawn_test_window` in the feed (see
  :func:`test_windows`; centred, or at ``U(da2_position_range(shift))`` for test DA2); full decode, then one
  resize of the part of the image the window shows (``roi_start``/``roi_end``), which is resize-then-crop
  without resizing the pixels the crop drops; mirror (DA2) in the same pass, twist.
* train-fixed (Appendix D): as test DA, with the window drawn by :func:`fixres_fast.geometry.drawn_fixed_window`.

The feed reads each image's size from its JPEG frame header (:func:`.source.image_size`: ~1.5 us, where PIL's
header parse took ~35). Measured on ImageNet-shaped records (500x375, CPU, 2 threads), the time goes to DALI's
decoder (~45%) and its antialiased resize (~50%); the Python work per image is ~20 us (the feed ~7, the
CPU normalisation ~10, the iterator's copy ~3: ~1.5%). Before the feed ran on, each epoch ended with the pipeline
drained and began with an unoverlapped refill: with 10 batches an epoch, ~10% of the time.

Every resize is antialiased, with the spec's interpolation (:data:`INTERP`); :func:`.common.to_batch` normalises,
with the spec's mean and std, as for every backend.
"""
from __future__ import annotations

import collections
import weakref

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from .. import geometry
from ..errors import UserError
from ..seeds import Stream, seed_for
from ..spec import TestDA2, TrainDA, TrainFixedDA
from .common import BatchLoader, LoaderConfig, to_batch, workers
from .source import image_size


class _Feed:
    """The external source: a stream of batches (encoded images, labels, placement), epoch after epoch.

    The stream starts at the loader's epoch. A training loader's runs on into the epochs after it (the sampler's
    order of epoch e + 1 is a function of the seed and e + 1, each batch's draws one of the seed, the rank, the
    epoch and the batch: :func:`batch_seed`), so DALI goes on prefetching across the epoch's end, as its own
    readers do, instead of draining the pipeline there and starting the next epoch with an empty queue. An
    evaluation loader's stream ends with its epoch (the last batch short). :attr:`queue`: per batch fed and not yet
    taken by the loader, in order, ``(epoch, batch, records fed, damaged records left out, batch size)``;
    :attr:`halt` ends the stream at the next batch (the loader's :meth:`DALILoader.restart`).

    DALI decodes around corrupt JPEG data with a printed warning; so each record is checked once
    (:meth:`.common.DamagedRecords.sound`: the CRC-32 of its bytes, or without CRCs libjpeg at 1/8 scale; in a
    thread pool, as zlib and ctypes release the GIL) and damaged ones are not fed; the loader applies the policy to
    them as each batch comes out."""

    def __init__(self, owner: BatchLoader, threads: int):
        self.owner, self.threads = weakref.proxy(owner), threads  # weakly: a dropped loader's pipeline goes
        self.queue: collections.deque = collections.deque()
        self.halt = False

    def __iter__(self):
        from concurrent.futures import ThreadPoolExecutor

        self.queue.clear()
        owner, epoch = self.owner, self.owner.epoch
        with ThreadPoolExecutor(self.threads) as pool:
            while True:
                batches = owner.batches(epoch)
                for b, idx in enumerate(batches):
                    if self.halt:
                        return
                    yield self._batch(pool, epoch, b, idx)
                if not owner.training or not batches:
                    return
                epoch += 1

    def _batch(self, pool, epoch: int, b: int, idx: np.ndarray):
        """Batch ``b`` of ``epoch``: its sound records (checked first where not yet), with its draws."""
        owner = self.owner
        damaged, verdict = owner.damaged, owner.damaged.verdict.numpy()
        list(pool.map(damaged.sound, idx[verdict[idx] == 0].tolist()))  # the records not yet checked
        sound = verdict[idx] == 1
        fed = idx[sound] if sound.any() else idx  # a wholly damaged batch goes in as it is: the policy stops at it
        self.queue.append((epoch, b, fed, idx[~sound], len(idx)))
        seed = batch_seed(owner.config, epoch, b)
        geometry.seed(seed)  # the RoCs' and DA2's draws (numba's generator, in this thread)
        flips = np.random.default_rng(seed).random(len(fed)) < 0.5 if getattr(owner.spec, "flip", False) else None
        return _batch(owner.source, owner.spec, fed, np.zeros(len(fed), bool) if flips is None else flips)


def batch_seed(config: LoaderConfig, epoch: int, b: int) -> int:
    """The seed of batch ``b``'s draws in ``epoch`` (RoC boxes, DA2 positions, flips): a function of the run's seed,
    the rank, the epoch and the batch alone, so that an epoch's batches do not depend on what the loader fed before
    it (epochs fed ahead and dropped, an epoch left mid-way)."""
    augment = seed_for(config.seed, config.rank, epoch, Stream.AUGMENT)
    return int(np.random.SeedSequence([augment, b]).generate_state(1)[0] >> 1)


def _batch(source, spec, idx, flips):
    """One batch for the external source: the encoded images, labels and what the feed drew per image (the RoC's
    anchor and shape for ``decoders.image_slice``, and the region ``resize`` reads, see :func:`roc_boxes` and
    :func:`test_windows`). ``flips``: a bool per image (mirrored), drawn by the caller."""
    jpegs, labels = [source.read(int(i)) for i in idx], source.labels[idx].astype(np.int32).reshape(-1, 1)
    sizes = [image_size(data) for data in jpegs]
    if isinstance(spec, TrainDA):
        boxes = roc_boxes(sizes, spec)
        anchor, shape = boxes[:, :2].copy(), boxes[:, 2:].copy()
        return jpegs, labels, anchor, shape, _roi(np.zeros_like(shape), shape[:, ::-1], flips)
    return jpegs, labels, test_windows(sizes, spec, flips)


def _roi(start, end, flips) -> np.ndarray:
    """``resize``'s (start y, start x, end y, end x) per image from (y, x) corners; a mirrored image has its x
    ends swapped (DALI's resize flips a region whose end precedes its start), so no separate mirror pass."""
    roi = np.concatenate([start, end], axis=1).astype(np.float32)
    roi[flips, 1], roi[flips, 3] = roi[flips, 3], roi[flips, 1].copy()
    return roi


def roc_boxes(sizes, spec) -> np.ndarray:
    """Train DA's RoC per image as (x, y, w, h), drawn by geometry's law from its header's (height, width).

    DALI's own generator (``decoders.image_random_crop``) falls back far more often than
    torchvision on elongated images (a 4:1 image: KS p ~ 1e-7), so the RoC is drawn here and
    decoded with the fused ROI decoder ``decoders.image_slice``.
    """
    boxes = np.ones((len(sizes), 4), np.float32)  # not an image: DALI reports the record when it decodes it
    for b, size in enumerate(sizes):
        if size is not None:
            top, left, h, w = geometry.random_resized_crop(*size, *spec.area_range, *spec.aspect_range, spec.max_attempts)
            boxes[b] = (left, top, w, h)
    return boxes


def test_windows(sizes, spec, flips) -> np.ndarray:
    """Test DA's (DA2's) window per image, :func:`fixres_fast.geometry.drawn_test_window` from its header's
    (height, width), as the region of the image it shows, for ``resize``'s ``roi_start`` and ``roi_end``
    (:func:`_roi`). Resizing only that region to K_test x K_test is test DA's resize-then-crop (the same scale;
    the filter's taps read past the region's edges, as in the whole resize) without resizing what the crop drops."""
    k, short = spec.size, spec.resize_short
    lo, hi = geometry.da2_position_range(spec.shift) if isinstance(spec, TestDA2) else (0.5, 0.5)
    fixed = isinstance(spec, TrainFixedDA)  # train-fixed: its window, drawn by the same generator
    corners = np.tile(np.array([0, 0, 1, 1], np.float64), (len(sizes), 1))  # not an image: DALI reports the record
    for b, size in enumerate(sizes):
        if size is not None:
            height, width = size
            rh, rw, top, left = (geometry.drawn_fixed_window(height, width, k, short) if fixed
                                 else geometry.drawn_test_window(height, width, k, short, lo, hi))
            sy, sx = height / rh, width / rw
            corners[b] = (top * sy, left * sx, (top + k) * sy, (left + k) * sx)
    return _roi(corners[:, :2], corners[:, 2:], flips)


#: DALI's antialiased filter for each of :data:`fixres_fast.spec.INTERPOLATIONS`.
INTERP = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}


def decode_and_crop(jpegs, placement, spec, decoder: str):
    """The mode's decode + geometry + mirror: HWC uint8 K x K images, not yet jittered. ``placement``: what the
    feed drew per image (:func:`_batch`): the RoC's anchor and shape and the region to resize, or the region. The
    resize is antialiased, with the spec's interpolation."""
    k = spec.size
    *box, roi = placement
    if isinstance(spec, TrainDA):
        anchor, shape = box
        images = fn.decoders.image_slice(jpegs, anchor, shape, device=decoder, output_type=types.RGB, axis_names="WH",
                                         normalized_anchor=False, normalized_shape=False)
    else:
        images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
    return fn.resize(images, size=[k, k], roi_start=roi[0:2], roi_end=roi[2:4], antialias=True,
                     interp_type=INTERP[spec.interpolation])


@pipeline_def
def fixres_pipeline(feed, spec, decoder: str):
    outputs = 5 if isinstance(spec, TrainDA) else 3  # see _batch
    jpegs, labels, *placement = fn.external_source(source=feed, num_outputs=outputs, batch=True, cycle="raise",
                                                   dtype=[types.UINT8, types.INT32] + [types.FLOAT] * (outputs - 2))
    images = decode_and_crop(jpegs, placement, spec, decoder)
    j = getattr(spec, "jitter", 0.0)
    if j:
        factor = dict(range=[max(0.0, 1 - j), 1 + j])
        images = fn.color_twist(images, brightness=fn.random.uniform(**factor), contrast=fn.random.uniform(**factor),
                                saturation=fn.random.uniform(**factor))
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
        seed = seed_for(config.seed, config.rank, 0, Stream.PIPELINE)
        self.pipe = fixres_pipeline(self.feed, spec, "mixed" if cuda else "cpu", batch_size=config.batch_size,
                                    num_threads=workers(config), device_id=self.device.index if cuda else None,
                                    seed=seed, prefetch_queue_depth=2)
        self.iterator = None

    def __iter__(self):
        if len(self) == 0:  # no whole batch to train on, or an empty shard: no batches, as from the other backends
            return iter(())  # (DALI's iterator refuses a pipeline with nothing to read)
        if self.iterator is None:
            self.iterator = DALIGenericIterator([self.pipe], ["image", "label"], auto_reset=False,
                                                last_batch_policy=LastBatchPolicy.PARTIAL)
        elif not (self.feed.queue and self.feed.queue[0][:2] == (self.epoch, 0)):
            self.restart()
        return self._epoch()

    def _epoch(self):
        """The current epoch's batches: a training epoch's ``len(self)`` out of the stream that runs on, an
        evaluation epoch's until its stream ends."""
        yielded, queue = 0, self.feed.queue
        while not self.training or yielded < len(self):
            try:
                out = next(self.iterator)[0]
            except StopIteration:
                break
            except Exception:
                if queue:
                    self.damaged.found(*queue[0][3:])
                self.source.check(np.concatenate([fed for _, _, fed, _, _ in queue] or [np.zeros(0, np.int64)]))
                raise
            self.damaged.found(*queue.popleft()[3:])
            yielded += 1
            yield to_batch(out["image"], out["label"], self.device, self.spec)
        self.damaged.end_epoch(self.epoch)

    def restart(self) -> None:
        """Drop what the pipeline holds (the rest of an epoch left mid-way, or batches fed ahead of another epoch
        than the one now asked for: at most ``prefetch_queue_depth`` + 1 of them were decoded) and start the stream
        at the current epoch."""
        self.feed.halt = True
        try:
            while True:
                next(self.iterator)
        except StopIteration:
            pass
        finally:
            self.feed.halt = False
        self.iterator.reset()


def build_dali_loader(spec, source, config: LoaderConfig) -> DALILoader:
    """DALI loader fed by the RA sampler; ``config.device='cuda'`` runs the graph on the GPU."""
    return DALILoader(spec, source, config)
