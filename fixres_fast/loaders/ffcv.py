"""FFCV backend: the ``.beton``, decoded by one numba-compiled decoder that fuses every mode.

:class:`FixResDecoder` takes a record's crop box from :mod:`fixres_fast.geometry` (train DA's
RoC law; test DA's and test DA2's resize-then-crop window of the resized image), decodes only the
rows and columns of the record that the box's resampling reads (:func:`.kernels.decode_region`:
libjpeg skips the rows above, stops below and crops the columns), at the smallest DCT scale that
keeps the box at least K x K pixels (``reduced_decode``; :func:`~fixres_fast.loaders.dct.dct_reduction`),
resamples the box with PIL's antialiased filter of the spec's interpolation (bilinear or bicubic, the
reference's), then flips and jitters
in place (:mod:`.kernels`). Each thread decodes and resamples in its own workspace, allocated once and reused
for every sample (:meth:`FixResDecoder._workspace`), not in FFCV's per-sample temp buffers, which FFCV allocates
anew each epoch. FFCV's own decoders ignore libjpeg's return code and would hand
over a stale buffer for a damaged record; this one writes :data:`SENTINEL` instead where libjpeg fails or
warns of corrupt data in what it decodes, or where the record is damaged (once per record: its bytes' CRC-32
against the conversion's ``NAME.crc32``, :func:`.kernels.record_crc32`; a conversion without CRCs, libjpeg over
the whole record, :func:`.kernels.check_jpeg`, about as slow as the rest of the work), and the loader stops at
that record, naming it, or leaves it out (``on_corrupt``). The order is a ``TraversalOrder`` that
reads :class:`~fixres_fast.loaders.sampler.RASampler`, so sharding and RA follow the common law.

Seeding: each position of an epoch gets a key drawn from (seed, rank, epoch) (:mod:`..seeds`), carried to the
compiled decoder behind the order's ids (:func:`.kernels.keyed_order`); the decoder seeds numba's
generator with it before a sample's draws. So the boxes, flips and jitter follow the seed and the
epoch, not the thread that decodes the sample, and the RA copies of an image get their own draws.
"""
from __future__ import annotations

import weakref

import numba
import numpy as np
import torch
from ..compat import torch_threads_kept

with torch_threads_kept():  # FFCV's import sets torch's threads to 1
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import ResizedCropRGBImageDecoder
    from ffcv.loader import Loader
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler
    from ffcv.transforms import ToDevice, ToTensor
    from ffcv.traversal_order.base import TraversalOrder

from .. import geometry
from ..geometry import seed as seed_draws
from ..errors import UserError
from ..seeds import Stream, seed_for
from ..spec import TestDA2, TrainDA, TrainFixedDA
from . import kernels
from .common import BatchLoader, LoaderConfig, to_batch, workers

#: Written over the first 8 pixels of the first row of a record libjpeg-turbo could not decode.
SENTINEL = ((np.arange(24) * 37 + 11) % 256).astype(np.uint8).reshape(8, 3)


def box_function(spec):
    """A compiled ``box(height, width)`` -> the :class:`.kernels.Resampling`: the region to resample and how.

    Train DA: the RoC, resized to K x K. Test DA / DA2: the whole image, resized so its short
    side is K_test^image, of which the K_test window at the centre (DA2: shifted) is computed. Train-fixed: the
    same with its own resize and window (:func:`~fixres_fast.geometry.drawn_fixed_window`).
    """
    k = spec.size
    if isinstance(spec, TrainDA):
        (a_lo, a_hi), (r_lo, r_hi), n = spec.area_range, spec.aspect_range, spec.max_attempts
        rrc, resampling = geometry.random_resized_crop, kernels.Resampling

        def box(height, width):
            top, left, h, w = rrc(height, width, a_lo, a_hi, r_lo, r_hi, n)
            return resampling(top, left, h, w, h / k, w / k, 0.0, 0.0)
    elif isinstance(spec, TrainFixedDA):
        short, drawn_fixed_window, resampling = spec.resize_short, geometry.drawn_fixed_window, kernels.Resampling

        def box(height, width):
            window = drawn_fixed_window(height, width, k, short)
            return resampling(0, 0, height, width, height / window.resized_h, width / window.resized_w,
                              float(window.top), float(window.left))
    else:
        short = spec.resize_short
        lo, hi = geometry.da2_position_range(spec.shift) if isinstance(spec, TestDA2) else (0.5, 0.5)
        drawn_test_window, resampling = geometry.drawn_test_window, kernels.Resampling

        def box(height, width):
            window = drawn_test_window(height, width, k, short, lo, hi)
            return resampling(0, 0, height, width, height / window.resized_h, width / window.resized_w,
                              float(window.top), float(window.left))
    return Compiler.compile(box)


_COMPILED: list = []


def _compiled(fn):
    """``fn`` (:func:`.kernels.decode_region`, :func:`.kernels.check_jpeg` or :func:`.kernels.record_crc32`, a ctypes
    call), compiled for one loader as FFCV compiles its own libjpeg call, and kept for the life of the process:
    numba's finalizer of a dropped one prints a KeyError, and one dispatcher shared by several loaders is worse (the
    second loader's compilation fails with that KeyError)."""
    _COMPILED.append(Compiler.compile(fn))
    return _COMPILED[-1]


class FixResDecoder(ResizedCropRGBImageDecoder):
    """Decode + crop + resize (+ flip, + jitter) for train DA, test DA, test DA2 and train-fixed."""

    get_crop_generator = None  # the crop comes from box_function

    def __init__(self, spec, epoch_length: int, verdicts: np.ndarray, crcs: np.ndarray | None,
                 reduced_decode: bool = True):
        """``verdicts``: int8 per record, 0 unchecked, 1 sound, 2 damaged (:class:`.common.DamagedRecords`),
        written by the decoder; ``crcs``: uint32 per record (:attr:`.source.Source.crcs`), or None for the decode
        check. The caller keeps both arrays alive while the loader lives."""
        super().__init__((spec.size, spec.size))
        self.spec, self.epoch_length, self.reduced_decode = spec, epoch_length, reduced_decode
        self.verdicts, self.crcs = verdicts, crcs
        self.workspace = None  # per thread: the decoded region, then resample's scratch (see generate_code)

    def declare_state_and_memory(self, previous_state):
        """FFCV's state and output buffers, but a token temp buffer: the decoder decodes into :attr:`workspace`.

        FFCV allocates its buffers anew each epoch, batch slots x batch size of them: a temp buffer of the largest
        image per sample is ~200 MB at batch 64 of 500 x 375 records, fresh pages that each epoch's first samples
        fault in and the kernel zeroes (~50 us an image on 640-record epochs)."""
        state, (output, _) = super().declare_state_and_memory(previous_state)
        return state, (output, AllocationQuery((1,), np.dtype("<u1")))

    def _workspace(self, k: int):
        """One row per thread of numba's pool (``numba.get_thread_id``), allocated once and reused for every sample
        that thread decodes (FFCV calls generate_code more than once: each compiled decoder gets the same rows):
        the region decode_region writes (the largest image's bytes at most) and resample's scratch after it."""
        decoded = -(-int(self.max_height) * int(self.max_width) * 3 // 64) * 64
        scratch = int(kernels.scratch_size(k, k, int(self.max_width)))
        if self.workspace is None:
            self.workspace = np.zeros((numba.config.NUMBA_NUM_THREADS, decoded + 4 * scratch), np.uint8)
        return decoded, scratch

    def generate_code(self):
        mem_read, my_range = self.memory_read, Compiler.get_iterator()
        decode_region, check_jpeg, reduced_box = _compiled(kernels.decode_region), _compiled(kernels.check_jpeg), kernels.reduced_box
        verdict_address, records, int8_array_at = self.verdicts.ctypes.data, len(self.verdicts), kernels.int8_array_at
        record_crc32, uint32_array_at = _compiled(kernels.record_crc32), kernels.uint32_array_at
        has_crc = self.crcs is not None
        crc_address, crc_count = (self.crcs.ctypes.data, len(self.crcs)) if has_crc else (verdict_address, 0)
        resample, flip_in_place, colour_jitter = kernels.resample, kernels.flip_in_place, kernels.colour_jitter
        trailing_keys, seed, epoch_length = kernels.trailing_keys, seed_draws, self.epoch_length
        box = box_function(self.spec)
        k, reduce, filt = self.spec.size, self.reduced_decode, kernels.FILTERS[self.spec.interpolation]
        flip, jitter, sentinel = bool(getattr(self.spec, "flip", False)), float(getattr(self.spec, "jitter", 0.0)), SENTINEL
        decoded_bytes, scratch_floats = self._workspace(k)
        workspace_address, threads, row_bytes = self.workspace.ctypes.data, *self.workspace.shape
        thread_id = numba.get_thread_id

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination = my_storage[0]
            workspace = int8_array_at(workspace_address, threads * row_bytes).view(np.uint8)
            keys = trailing_keys(batch_indices, epoch_length)
            verdicts, crcs = int8_array_at(verdict_address, records), uint32_array_at(crc_address, crc_count)
            regions = np.zeros((len(batch_indices), 4), np.int32)  # what decode_region decoded, per sample
            for dst_ix in my_range(len(batch_indices)):
                seed(keys[dst_ix])
                field = metadata[batch_indices[dst_ix]]
                image_data = mem_read(field['data_ptr'], storage_state)
                height, width = np.int64(field['height']), np.int64(field['width'])
                jpeg = field['mode'] == 0
                # a JPEG decodes at 1/s where the K x K output still needs no upsampling, and only the region
                # of it that the resampling reads
                s, at_s, blur, region = reduced_box(height, width, k, reduce and jpeg, box(height, width), filt)
                status, i = 0, batch_indices[dst_ix]
                if verdicts[i] == 0:  # once per record
                    if has_crc:  # the CRC-32 the conversion recorded: tens of microseconds
                        verdicts[i] = 1 if record_crc32(image_data) == crcs[i] else 2
                    elif jpeg:  # none recorded: libjpeg over all of it, to its end marker (damage may show only there)
                        verdicts[i] = 1 if check_jpeg(image_data) == 0 else 2
                row = workspace[thread_id() * row_bytes:(thread_id() + 1) * row_bytes]
                if jpeg:
                    temp_buffer, held = row[:decoded_bytes], regions[dst_ix]
                    status = decode_region(image_data, s, region[0], region[1], region[2], region[3], temp_buffer, held)
                    pixels = temp_buffer[:3 * held[2] * held[3]].reshape(held[2], held[3], 3)
                    src_top, src_left = at_s.top - held[0], at_s.left - held[1]  # the box's corner in what was decoded
                else:
                    pixels = image_data.reshape(height, width, 3)
                    src_top, src_left = at_s.top, at_s.left
                if verdicts[i] == 2:
                    status = -4
                out = destination[dst_ix]
                if status != 0:
                    out[:] = 0
                    out[0, :8] = sentinel
                else:
                    resample(pixels, src_top, src_left, at_s.height, at_s.width, at_s.scale_y, at_s.scale_x, at_s.off_y,
                             at_s.off_x, out, blur, filt, row[decoded_bytes:decoded_bytes + 4 * scratch_floats].view(np.float32))
                    if flip and np.random.random() < 0.5:
                        flip_in_place(out)
                    if jitter > 0:
                        colour_jitter(out, jitter)
            return destination[:len(batch_indices)]

        decode.is_parallel = True
        return decode


class SamplerOrder(TraversalOrder):
    """FFCV traversal order = the owner's RASampler epoch (FFCV calls the instance with its Loader)."""

    def __init__(self, owner: BatchLoader):
        self.owner = weakref.proxy(owner)  # weakly: no reference cycle keeps a dropped loader's threads and buffers

    def __call__(self, loader):
        return self

    def sample_order(self, epoch):
        """The sampler's ids for the owner's epoch (FFCV's own count, ``epoch``, is not used), keyed."""
        owner, config = self.owner, self.owner.config
        indices = owner.epoch_indices()  # epoch_length ids: the decoder reads their keys epoch_length places on
        rng = np.random.default_rng(seed_for(config.seed, config.rank, owner.epoch, Stream.AUGMENT))
        keys = rng.integers(2 ** 32, size=len(indices))
        return kernels.keyed_order(indices, keys)


class FFCVLoader(BatchLoader):
    def __init__(self, spec, source, config: LoaderConfig):
        super().__init__(spec, source, config)
        if source.beton is None:
            raise UserError(f"the ffcv backend reads {source.split}.beton, which {source.root} lacks; "
                            "convert with --format beton, or use the dali or torch backend")
        image = [FixResDecoder(spec, self.epoch_length, self.damaged.verdict.numpy(), source.crcs,
                               config.reduced_decode), ToTensor()]
        label = [IntDecoder(), ToTensor()]
        if self.device.type == "cuda":
            image.append(ToDevice(self.device, non_blocking=True))
            label.append(ToDevice(self.device, non_blocking=True))
        with torch_threads_kept():  # FFCV sets torch's threads to its workers, here and at every epoch's start
            self.loader = Loader(str(source.beton), batch_size=config.batch_size, num_workers=workers(config),
                                 order=SamplerOrder(self), drop_last=self.training, batches_ahead=2,
                                 pipelines={"image": image, "label": label})
        if self.loader.reader.num_samples != len(source):
            raise UserError(f"{source.beton} holds {self.loader.reader.num_samples} records but "
                            f"{source.split}.index.tsv lists {len(source)}: the conversion is incomplete; re-run it")
        self._sentinel = torch.from_numpy(SENTINEL).to(self.device)
        self._running = None  # FFCV's thread decoding the current epoch

    def __iter__(self):
        self._stop_epoch()
        batches = self.batches()
        with torch_threads_kept():
            self._running = iter(self.loader)
        for b, (pixels, labels) in enumerate(self._running):
            bad = (pixels[:, 0, :8] == self._sentinel).flatten(1).all(1)
            if bool(bad.any()):  # libjpeg failed or warned of corrupt data in the rows this sample decoded
                self.damaged.found(batches[b][bad.cpu().numpy()], len(bad))
                pixels, labels = pixels[~bad], labels[~bad]
            yield to_batch(pixels, labels, self.device, self.spec)
        self._running = None
        self.damaged.end_epoch(self.epoch)

    def _stop_epoch(self) -> None:
        """Stop the thread of an epoch left unfinished (a loop that broke early) and wait for it, so that one epoch at
        a time decodes: the decoder's workspace rows are per numba thread, and such a thread decodes on its own."""
        if self._running is not None:
            self._running.close()
            self._running.join()
            self._running = None


def build_ffcv_loader(spec, source, config: LoaderConfig) -> FFCVLoader:
    """FFCV loader over ``source.beton``; on CUDA, uint8 crops travel to the device and are normalised there."""
    return FFCVLoader(spec, source, config)
