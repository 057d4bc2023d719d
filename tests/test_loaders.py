"""Every backend against the spec, on real JPEGs: the batch contract, the RoC law (KS against torchvision),
test DA pixel agreement, DA2's shift, RA copies, sharding, and bad input. CPU only; loaders are reused."""
import contextlib
import shutil

import numpy as np
import pytest
import torch
from scipy import stats

from fixres_fast.errors import UserError
from fixres_fast.loaders import BACKENDS, RecordError, dct, installed, make_loader
from fixres_fast import geometry
from fixres_fast.spec import ASPECT_RANGE, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, make_spec

from . import imagesets
from .conftest import each, needs
from .test_geometry import torchvision_law

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
K = 32  # px, output side of the crop-law runs
REPEATS = 3


def pixels(images):
    return images * STD + MEAN


def measure(images, labels):
    """From ramp crops: (label, sigma^2, ln alpha, left edge px, top edge px, flipped) per image."""
    px = pixels(images).double()
    cols, rows = px[:, 0, 2:-2, :].mean(1), px[:, 1, :, 2:-2].mean(2)  # red = column, green = row
    u = torch.arange(images.shape[-1], dtype=torch.float64)
    out = []
    for i, lab in enumerate(labels.tolist()):
        height, width = imagesets.RAMP_SHAPES[lab]
        sx, ix = np.polyfit(u[2:-2], cols[i, 2:-2], 1)
        sy, iy = np.polyfit(u[2:-2], rows[i, 2:-2], 1)
        w, h = abs(sx) * len(u) * width / 255, sy * len(u) * height / 255
        left_value = ix - 0.5 * sx if sx > 0 else ix + (len(u) - 0.5) * sx
        out.append((lab, w * h / (width * height), np.log(w / h), left_value * width / 255, (iy - 0.5 * sy) * height / 255, sx < 0))
    return np.array(out)


@pytest.fixture(scope="module")
def train_crops(ramp_records):
    """Per backend: the crops of 12 RA epochs of train DA (no jitter) over the ramp images, measured."""
    spec = make_spec("train", K, jitter=0.0)
    crops = {}
    for backend in filter(installed, BACKENDS):
        loader = make_loader(backend, spec, ramp_records, "train", batch_size=64, repeats=REPEATS,
                             epoch_fraction=24.0, workers=2, seed=5)
        batches = []
        for epoch in range(12):
            loader.set_epoch(epoch)
            batches += [measure(x, y) for x, y in loader]
        crops[backend] = (np.concatenate(batches), loader)
    return crops


@pytest.mark.parametrize("backend", each(BACKENDS))
@pytest.mark.parametrize("shape", range(len(imagesets.RAMP_SHAPES)))
def test_roc_law_is_torchvisions(train_crops, backend, shape):
    got = train_crops[backend][0]
    got = got[got[:, 0] == shape]
    assert len(got) > 300
    area, log_aspect, _ = torchvision_law(*imagesets.RAMP_SHAPES[shape], n=4000)
    # both on a grid finer than the law but coarser than the ~1 px measurement error, centred on the
    # fallback crop (an atom of the law, on the elongated shapes)
    height, width = imagesets.RAMP_SHAPES[shape]
    _, _, fh, fw = geometry.fallback_crop(height, width, *ASPECT_RANGE)
    atom_area, atom_aspect = fh * fw / (height * width), np.log(fw / fh)
    got_area, area = [np.round((np.asarray(v) - atom_area) / 0.01) for v in (got[:, 1], area)]
    got_aspect, log_aspect = [np.round((np.asarray(v) - atom_aspect) / 0.02) for v in (got[:, 2], log_aspect)]
    assert stats.ks_2samp(got_area, area).pvalue > 1e-4, f"{backend}: RoC area fraction differs from torchvision's"
    assert stats.ks_2samp(got_aspect, log_aspect).pvalue > 1e-4, f"{backend}: RoC aspect differs from torchvision's"
    assert 0.4 < got[:, 5].mean() < 0.6  # horizontal flip with p = 1/2


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_repeated_augmentation_gives_distinct_copies(train_crops, backend):
    got, loader = train_crops[backend]
    epoch = got[: len(loader) * loader.config.batch_size].reshape(-1, REPEATS, got.shape[1])  # world 1: copies adjacent
    assert (epoch[:, :, 0] == epoch[:, :1, 0]).all()  # the M copies are of one image...
    boxes = np.round(epoch[:, :, 1:5], 3)
    distinct = [len({tuple(b) for b in group}) for group in boxes]
    assert np.mean(np.array(distinct) == REPEATS) > 0.95  # ...each with its own augmentation


#: The splits test DA runs over, per interpolation: bicubic's table reads only the train split (21 photos, both
#: orientations and the 1024 x 683 one), to spare the ffcv backend's per-loader compilation.
TEST_DA_SPLITS = {"bilinear": ("val", "train"), "bicubic": ("train",)}


def run_test_da(out, interpolation):
    """Per backend: test DA at 224 with ``interpolation`` over the converted photos (TEST_DA_SPLITS), exact epochs,
    full decodes; 'torch_reduced' and 'ffcv_reduced': the default reduced-size DCT decoding."""
    got = {}
    for backend in [b for b in BACKENDS + ("torch_reduced", "ffcv_reduced") if installed(b.split("_")[0])]:
        got[backend] = {}
        for split in TEST_DA_SPLITS[interpolation]:
            options = dict(reduced_decode=backend.endswith("_reduced"))
            loader = make_loader(backend.split("_")[0], make_spec("test", 224, interpolation=interpolation), out, split,
                                 batch_size=8, workers=2, **options)
            batches = list(loader)
            assert len(batches) == len(loader)
            got[backend][split] = [torch.cat(t) for t in zip(*batches)]
    return got


@pytest.fixture(scope="module")
def test_da_runs(imagenet_records):
    """``run(interpolation)``: :func:`run_test_da` of the converted photos, made on first use, then kept."""
    runs = {}

    def run(interpolation):
        if interpolation not in runs:
            runs[interpolation] = run_test_da(imagenet_records["out"], interpolation)
        return runs[interpolation]
    return run


@pytest.fixture(scope="module")
def test_batches(test_da_runs):
    """Test DA at 224, bilinear (the default), per backend and split; 'torch' is the reference backend."""
    return test_da_runs("bilinear")


def torchvision_test_da(out, split, interpolation, k=224):
    """The reference, written out: torchvision's Resize(round(K * 256/224), interpolation, antialias) + CenterCrop(K)
    on the PIL images of ``split`` (PIL's filter), as uint8 NCHW."""
    from torchvision import transforms

    from fixres_fast.loaders.source import open_source

    source = open_source(out, split)
    mode = transforms.InterpolationMode(interpolation)
    tf = transforms.Compose([transforms.Resize(make_spec("test", k).resize_short, mode, antialias=True),
                             transforms.CenterCrop(k)])
    return torch.stack([torch.from_numpy(np.asarray(tf(source.open_image(i).convert("RGB"))).copy())
                        for i in range(len(source))]).permute(0, 3, 1, 2)


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_batch_contract(test_batches, imagenet_records, backend):
    for split in ("val", "train"):
        images, labels = test_batches[backend][split]
        index = (imagenet_records["out"] / f"{split}.index.tsv").read_text().splitlines()[1:]
        assert labels.tolist() == [int(line.split("\t")[1]) for line in index]  # every image once, in order
        assert images.shape == (len(index), 3, 224, 224) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
    loader = make_loader(backend, make_spec("train", 64), imagenet_records["out"], "train", batch_size=8, workers=1)
    assert len(loader) == imagenet_records["expected"]["train"] // 8
    for images, labels in loader:
        assert images.is_contiguous(memory_format=torch.channels_last) and images.shape == (8, 3, 64, 64)
        assert -3 < float(images.mean()) < 3 and labels.dtype == torch.int64


#: A model's own normalisation, unlike ImageNet's in every channel (RGB, fractions of 255).
MODEL_MEAN, MODEL_STD = (0.5, 0.4, 0.3), (0.5, 0.25, 0.2)


@pytest.mark.parametrize("mean,std", [(IMAGENET_MEAN, IMAGENET_STD), (MODEL_MEAN, MODEL_STD)])
def test_cpu_normalisation_is_torchs_arithmetic(mean, std):
    """to_batch on the CPU (one compiled pass) = torch's (x - mean) * (1 / std) with the spec's mean and std, bit
    for bit, channels_last; a strided input view is read as the pixels it shows."""
    from fixres_fast.loaders.common import to_batch

    spec = make_spec("test", 32, mean=mean, std=std)
    nhwc = torch.randint(0, 256, (5, 34, 19, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    m, s = torch.tensor(mean).view(1, 3, 1, 1) * 255, torch.tensor(std).view(1, 3, 1, 1) * 255
    for view in (nhwc, nhwc[:, ::2]):
        images, labels = to_batch(view, np.arange(5), torch.device("cpu"), spec)
        want = view.permute(0, 3, 1, 2).float().sub_(m).mul_(1 / s)
        assert torch.equal(images, want) and images.is_contiguous(memory_format=torch.channels_last)
        assert labels.dtype == torch.int64 and labels.tolist() == list(range(5))


def test_cpu_batches_reuse_only_memory_no_batch_holds():
    """to_batch on the CPU writes into memory of an earlier batch only once no tensor of it is left (batches the
    caller keeps, or views of them, keep their pixels), and does reuse the memory of dropped batches."""
    from fixres_fast.loaders.common import _free_buffer, to_batch

    gen, cpu = torch.Generator().manual_seed(0), torch.device("cpu")
    kept = []
    for b in range(8):
        images, _ = to_batch(torch.randint(0, 256, (4, 6, 5, 3), dtype=torch.uint8, generator=gen), np.arange(4), cpu,
                             make_spec("test", 6))
        if b % 3 == 0:
            kept.append((images[:, :, 1:], images[:, :, 1:].clone()))  # a view keeps the batch's memory too
        del images
    assert all(torch.equal(view, copy) for view, copy in kept)
    first = _free_buffer((2, 7, 3))
    assert _free_buffer((2, 7, 3)) is not first  # first is in use
    address = first.ctypes.data
    del first
    assert _free_buffer((2, 7, 3)).ctypes.data == address  # dropped: its memory is used again


#: Test DA at 224 against torchvision's resize + centre crop on PIL images, per (backend, interpolation): bounds on
#: the mean and the largest difference (grey levels) and on the share of pixels more than 1 grey level off.
#: DALI and the ffcv backend (kernels.decode_region) decode with libjpeg's accurate IDCT, as PIL does. Measured
#: (max / mean): bilinear dali 1 / 0.16, ffcv 1 / 0.15, torch 0 / 0; bicubic dali 8 / 0.15 (on 0.03% of the pixels:
#: DALI does not clip its first pass to 0..255 as PIL does, where the cubic overshoots), ffcv 1 / 0.15, torch 0 / 0.
AGREEMENT = [pytest.param(*row, marks=needs(row[0]) if row[0] != "torch" else ()) for row in (
    ("dali", "bilinear", 0.5, 1.01, 0.0), ("ffcv", "bilinear", 0.5, 1.01, 0.0), ("torch", "bilinear", 0.01, 0.01, 0.0),
    ("dali", "bicubic", 0.5, 10.0, 1e-3), ("ffcv", "bicubic", 0.5, 1.01, 0.0), ("torch", "bicubic", 0.01, 0.01, 0.0),
)]


@pytest.mark.parametrize("backend,interpolation,mean_tol,max_tol,over_1_tol", AGREEMENT)
def test_test_da_agrees_with_torchvision(test_da_runs, imagenet_records, backend, interpolation, mean_tol, max_tol,
                                         over_1_tol):
    got = test_da_runs(interpolation)[backend]
    for split in TEST_DA_SPLITS[interpolation]:
        ref = torchvision_test_da(imagenet_records["out"], split, interpolation).float()
        diff = (pixels(got[split][0]) - ref).abs()
        assert float(diff.mean()) < mean_tol and float(diff.max()) < max_tol, f"{backend} {interpolation} {split}"
        assert float((diff > 1.01).float().mean()) <= over_1_tol, f"{backend} {interpolation} {split}"


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_train_da_follows_the_interpolation(imagenet_records, backend):
    """Train DA with bicubic draws the same boxes (and flips) as with bilinear, then resizes them with its own
    filter: the batches differ by ~1.7 grey levels on average (measured on every backend), where other boxes
    differ by ~65."""
    got = []
    for interpolation in INTERPOLATIONS:
        spec = make_spec("train", 64, jitter=0.0, interpolation=interpolation)
        images, labels = next(iter(make_loader(backend, spec, imagenet_records["out"], "train", batch_size=8,
                                               workers=2, seed=3)))
        got.append((pixels(images), labels.tolist()))
    (bilinear, labels), (bicubic, bicubic_labels) = got
    diff = (bicubic - bilinear).abs()
    assert labels == bicubic_labels and 0.5 < float(diff.mean()) < 4 and float(diff.mean((1, 2, 3)).max()) < 6


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_normalisation_follows_the_spec(test_batches, imagenet_records, backend):
    """A spec with a model's own mean and std: the batches are the ImageNet-normalised batches' pixels, normalised
    with that mean and std instead (float tolerance). Run after the ImageNet loaders in the same process, so a
    normalisation kept per device alone would show."""
    spec = make_spec("test", 224, mean=MODEL_MEAN, std=MODEL_STD)
    images, labels = [torch.cat(t) for t in zip(*make_loader(backend, spec, imagenet_records["out"], "val",
                                                             batch_size=8, workers=2, reduced_decode=False))]
    ref, ref_labels = test_batches[backend]["val"]
    grey = pixels(ref).round()  # the uint8 pixels
    want = (grey - torch.tensor(MODEL_MEAN).view(1, 3, 1, 1) * 255) / (torch.tensor(MODEL_STD).view(1, 3, 1, 1) * 255)
    assert labels.tolist() == ref_labels.tolist()
    assert torch.allclose(images, want, atol=1e-5, rtol=0), backend


@pytest.mark.parametrize("interpolation,mean_tol", [("bilinear", 1.5), ("bicubic", 1.75)])
@pytest.mark.parametrize("backend", each(("torch", "ffcv")))
def test_reduced_decode_batches_agree_with_full_decode(test_da_runs, backend, interpolation, mean_tol):
    # the photos are stored at 512 px: test DA at 224 decodes them at 1/2 size, where the IDCT does the whole
    # downscale (the reference's blur is stood in for by dct.IDCT_BLUR_TAPS, per interpolation). Measured (mean /
    # 99th percentile, both backends): bilinear 0.95 / 7, bicubic (train split) 1.47 / 10; bicubic's reference is
    # sharper than the IDCT's downscale, which the blur taps cannot undo
    runs = test_da_runs(interpolation)
    for split in TEST_DA_SPLITS[interpolation]:
        (ref, ref_labels), (got, labels) = runs[backend][split], runs[f"{backend}_reduced"][split]
        assert labels.tolist() == ref_labels.tolist()
        diff = (pixels(got) - pixels(ref)).abs()
        assert float(diff.mean()) < mean_tol and float(diff.flatten().quantile(0.99)) < 12, split


@needs("ffcv")
def test_ffcv_reduced_decode_keeps_the_draws(imagenet_records):
    """Train DA at 96 on 512-px photos: most boxes decode at 1/2 or 1/4. The draws are keyed by position, so
    with and without reduced decoding the boxes, flips and jitter are the same and only the decode differs."""
    spec = make_spec("train", 96)
    got = {r: torch.cat([x for x, _ in make_loader("ffcv", spec, imagenet_records["out"], "train", batch_size=7,
                                                  workers=2, seed=2, reduced_decode=r)]) for r in (False, True)}
    diff = (pixels(got[True]) - pixels(got[False])).abs()
    assert float(diff.mean()) < 1.5 and float(diff.flatten().quantile(0.99)) < 12
    # a box misplaced by a few pixels would differ by tens of grey levels; the 1/4 decodes differ by up to ~5.4
    # in the torch backend's reduced decoding too (the scaled IDCT's downscale is not the bilinear filter's)
    assert float(diff.mean((1, 2, 3)).max()) < 6


# --- reduced-size DCT decoding (torch backend, CPU): the same boxes, nearly the same pixels -------------

@contextlib.contextmanager
def seeded(seed):
    """torch's and numpy's global generators seeded with ``seed`` inside, restored after."""
    state = np.random.get_state()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def _reference_and_reduced(spec, photo, seed):
    """The reference (full decode + pil_transform) and ReducedDecode on one photo, with the same random draws."""
    from PIL import Image

    from fixres_fast.loaders.torch import ReducedDecode, pil_transform

    with seeded(seed):
        ref = np.asarray(pil_transform(spec)(Image.open(photo).convert("RGB"))).astype(float)
    im = Image.open(photo)
    with seeded(seed):
        got = np.asarray(ReducedDecode(spec)(im)).astype(float)
    return ref, got, im.size


@pytest.mark.parametrize("mode", ["test", "test2", "train", "train-fixed"])
def test_reduced_decode_agrees_with_full_decode(photos, mode):
    from PIL import Image

    from fixres_fast.loaders.torch import ReducedDecode

    k = 224 if mode != "train" else 160
    spec = make_spec(mode, k, **({} if mode == "test" else dict(jitter=0.0)))
    diffs, reduced = [], 0
    for j, photo in enumerate(photos):
        for rep in range(3 if mode == "train" else 1):
            seed = 10 * j + rep
            with seeded(seed):
                box = ReducedDecode(spec).box(Image.open(photo))
            ref, got, size = _reference_and_reduced(spec, photo, seed)
            if mode != "train":
                assert size[0] < Image.open(photo).size[0]  # 512 px (and 1024 x 683) at 224: decoded at 1/2
            if size != Image.open(photo).size:
                reduced += 1
                x0, y0, x1, y1 = box
                assert min(x1 - x0, y1 - y0) >= 2 * k  # ...only where the box keeps >= K px
            diffs.append(np.abs(got - ref))
    assert reduced >= (len(diffs) // 3 if mode == "train" else len(diffs))
    d = np.stack(diffs)
    assert d.mean() < 1.5 and d.mean((1, 2, 3)).max() < 3.5 and np.percentile(d, 99) < 12, mode


def test_reduced_decode_with_a_fixed_box_matches_torchvision_crop(photos):
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    from fixres_fast.loaders.torch import ReducedDecode

    spec = make_spec("train", 128, jitter=0.0, flip=False)
    for photo, (top, left, h, w) in zip(photos[:6], [(0, 0, 512, 512), (40, 17, 300, 260), (100, 90, 256, 384),
                                                   (3, 5, 200, 150), (0, 0, 130, 140), (255, 1, 257, 511)]):
        ref = np.asarray(F.resized_crop(Image.open(photo).convert("RGB"), top, left, h, w, [128, 128], antialias=True))
        im = Image.open(photo)
        got = np.asarray(ReducedDecode(spec)(im, box=(left, top, left + w, top + h)))
        scale = 512 // im.size[0]
        assert scale == (1 if min(h, w) < 256 else 2 if min(h, w) < 512 else 4)
        diff = np.abs(got.astype(float) - ref)
        if scale == 1:
            assert diff.max() <= 1  # full decode: torchvision's crop and resize
        else:
            assert diff.mean() < 3 and np.percentile(diff, 99) < 15


@pytest.mark.parametrize("k,scale", [(64, 4), (128, 2), (224, 2), (256, 1), (288, 1)])
def test_reduced_decode_never_upsamples(photos, k, scale):
    """Test DA resizes the short side to round(K * 256/224): a 512-px photo decodes at 1/2 only while that is
    <= 256 (K <= 224), at 1/4 while <= 128; at 288 (short side 329) it decodes at full size."""
    spec = make_spec("test", k)
    photo = next(p for p in photos if p.stem.startswith("imagenet_00"))  # 512 x 512
    ref, got, size = _reference_and_reduced(spec, photo, 0)
    assert size == (512 // scale, 512 // scale)
    assert 512 // scale >= spec.resize_short
    if scale == 1:
        assert np.abs(got - ref).max() <= 1  # the reference's pixels
    else:
        assert np.abs(got - ref).mean() < 3


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("top,left,h,w,k", [(0, 0, 512, 512, 160), (40, 17, 300, 260, 160), (3, 5, 100, 90, 128),
                                            (255, 1, 257, 511, 224), (0, 0, 130, 140, 160)])
def test_ffcv_resample_kernel_is_pils_filter(photos, top, left, h, w, k, interpolation):
    """FFCV's compiled resample is PIL's antialiased resize (torchvision's on PIL images; bilinear or bicubic) to 1
    grey level, for train DA's crop-then-resize and test DA's resize-then-crop (a window of the resized image)."""
    from PIL import Image

    from fixres_fast.loaders.kernels import FILTERS, resample

    from .test_interpolation import pil_resize

    im, filt = Image.open(photos[0]).convert("RGB"), FILTERS[interpolation]
    src = np.ascontiguousarray(np.asarray(im))
    got = np.empty((k, k, 3), np.uint8)
    resample(src, top, left, h, w, h / k, w / k, 0, 0, got, False, filt)
    ref = pil_resize(im.crop((left, top, left + w, top + h)), (k, k), interpolation)
    assert np.abs(got.astype(int) - ref).max() <= 1
    rh, rw = round(im.height * 1.25), round(im.width * 1.25) if k < 200 else im.width // 2  # up- and downscaling
    resized = pil_resize(im, (rw, rh), interpolation)
    oy, ox = (rh - k) // 2, (rw - k) // 3
    got = np.empty((k, k, 3), np.uint8)
    resample(src, 0, 0, im.height, im.width, im.height / rh, im.width / rw, oy, ox, got, False, filt)
    assert np.abs(got.astype(int) - resized[oy:oy + k, ox:ox + k]).max() <= 1


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_region_decode_is_the_full_decode_restricted(photos, scale):
    """kernels.decode_region (libjpeg skipping rows, cropping columns, at 1/scale): exactly the pixels a full
    decode gives there (at scale 1: PIL's), for progressive photos and their sequential rewrites, on regions at
    the corners, across MCU edges and at random."""
    import io

    from PIL import Image

    from fixres_fast.convert import transcode
    from fixres_fast.loaders.kernels import decode_region

    rng = np.random.default_rng(scale)
    for photo in photos[:3] + photos[-1:]:  # the last one is 1024 x 683
        progressive = open(photo, "rb").read()
        for data in (progressive, transcode.to_sequential(progressive)):
            im, jpeg = Image.open(io.BytesIO(data)), np.frombuffer(data, np.uint8)
            h, w = -(-im.height // scale), -(-im.width // scale)
            dst, held = np.empty(h * w * 3, np.uint8), np.zeros(4, np.int32)
            assert decode_region(jpeg, scale, 0, 0, h, w, dst, held) == 0 and held.tolist() == [0, 0, h, w]
            full = dst.reshape(h, w, 3).copy()
            if scale == 1:
                assert np.array_equal(full, np.asarray(im.convert("RGB")))
            regions = [(0, 0, 1, 1), (h - 1, w - 1, 1, 1), (7, 15, 2, 3), (h // 3, w // 3, h // 3, w // 2)]
            for _ in range(6):
                top, left = int(rng.integers(0, h)), int(rng.integers(0, w))
                regions.append((top, left, int(rng.integers(1, h - top + 1)), int(rng.integers(1, w - left + 1))))
            for top, left, rh, rw in regions:
                assert decode_region(jpeg, scale, top, left, rh, rw, dst, held) == 0
                first_row, first_col, rows, cols = held.tolist()
                assert (first_row, rows) == (top, rh) and first_col <= left and first_col + cols >= left + rw
                got = dst[:rows * cols * 3].reshape(rows, cols, 3)[:, left - first_col:left - first_col + rw]
                assert np.array_equal(got, full[top:top + rh, left:left + rw]), (photo, top, left, rh, rw)


def test_region_decode_reports_bad_input(photos):
    """Not a JPEG, a cut header, damaged scan data, a region outside the image, a buffer too small: each has
    its own failure code, never 0 (the ffcv decoder then writes SENTINEL and the loader names the record)."""
    from fixres_fast.convert import transcode
    from fixres_fast.loaders.kernels import decode_region

    data = np.frombuffer(transcode.to_sequential(open(photos[0], "rb").read()), np.uint8)
    dst, held = np.empty(512 * 512 * 3, np.uint8), np.zeros(4, np.int32)
    assert decode_region(data, 1, 0, 0, 512, 512, dst, held) == 0
    assert decode_region(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8), 1, 0, 0, 8, 8, dst, held) == -1
    assert decode_region(data[:300].copy(), 1, 0, 0, 8, 8, dst, held) == -1
    damaged = data.copy()
    damaged[len(data) // 2:len(data) // 2 + 400] = np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8)
    assert decode_region(damaged, 1, 0, 0, 512, 512, dst, held) in (-1, -4)
    assert decode_region(data, 2, 200, 0, 100, 10, dst, held) == -2  # rows 200-299 of a 256-row image
    assert decode_region(data, 1, 0, 0, 512, 512, dst[:1000], held) == -3


def test_jpeg_size_is_pils_header_size(photos, tmp_path):
    """The frame-header parser the dali feed sizes its boxes with gives PIL's (height, width) for real JPEGs,
    baseline and progressive, as bytes or as a record's uint8 array; an EXIF-rotated one gives its stored size,
    as PIL's Image.open does (the loaders' boxes are drawn on the stored pixels)."""
    from PIL import Image

    from fixres_fast.convert import transcode
    from fixres_fast.loaders.source import image_size, jpeg_size

    files = list(photos)
    for n, photo in enumerate(photos[:3]):
        Image.open(photo).save(tmp_path / f"progressive{n}.jpg", "JPEG", quality=90, progressive=True)
        files.append(tmp_path / f"progressive{n}.jpg")
    imagesets.write_exif_rotated(photos[3], tmp_path / "rotated.jpg")
    files.append(tmp_path / "rotated.jpg")
    for f in files:
        data = f.read_bytes()
        want = Image.open(f).size[::-1]
        assert jpeg_size(data) == want and jpeg_size(np.frombuffer(data, np.uint8)) == want, f
        assert jpeg_size(transcode.to_sequential(data)) == want and image_size(data) == want, f
    assert Image.open(tmp_path / "rotated.jpg").getexif().get(0x0112) == 6


def test_jpeg_size_refuses_what_has_no_frame_header(photos, tmp_path):
    """Truncated before or inside the frame header, garbage, empty, not a JPEG: None, never a size read from
    other bytes; image_size falls back to PIL's header for other formats (a PNG), and is None where PIL fails."""
    from PIL import Image

    from fixres_fast.loaders.source import image_size, jpeg_size

    data = photos[0].read_bytes()
    sof = min(data.find(bytes([0xFF, m])) for m in (0xC0, 0xC1, 0xC2) if data.find(bytes([0xFF, m])) > 0)
    for cut in (0, 1, 2, 3, 10, sof, sof + 4, sof + 8):
        assert jpeg_size(data[:cut]) is None, cut
    assert jpeg_size(data[:sof + 9]) == Image.open(photos[0]).size[::-1]
    garbage = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    for bad in (b"", garbage, b"\xff\xd8" + garbage, b"\xff\xd8\xff\xda\x00\x04" + garbage):
        assert jpeg_size(bad) is None and image_size(bad) is None
    Image.open(photos[0]).save(tmp_path / "photo.png")
    png = (tmp_path / "photo.png").read_bytes()
    assert jpeg_size(png) is None and image_size(png) == Image.open(photos[0]).size[::-1]


def test_ffcv_colour_jitter_kernel_is_torchvisions(photos):
    """FFCV's compiled jitter = torchvision's ColorJitter on PIL images, given the same order and factors."""
    from numba import njit
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    from fixres_fast.loaders.kernels import colour_jitter

    @njit
    def draws(seed, strength):  # the kernel's draws: the order, then one factor per op
        np.random.seed(seed)
        order, factors = np.random.permutation(3), np.empty(3)
        for i in range(3):
            factors[i] = np.random.uniform(max(0.0, 1.0 - strength), 1.0 + strength)
        np.random.seed(seed)
        return order, factors

    ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation)
    for j, photo in enumerate(photos[:6]):
        im = Image.open(photo).convert("RGB").resize((64, 48))
        order, factors = draws(j, 0.4)
        got = np.asarray(im).copy()
        colour_jitter(got, 0.4)
        for op, factor in zip(order, factors):
            im = ops[op](im, float(factor))
        assert np.array_equal(got, np.asarray(im)), j


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_augmentations_follow_the_seed(ramp_records, backend):
    """The same seed gives the same batches (order, boxes, flips, jitter), another seed others."""
    def first_batch(seed, epoch=0, workers=2):
        loader = make_loader(backend, make_spec("train", K), ramp_records, "train", batch_size=8, workers=workers,
                             seed=seed)
        loader.set_epoch(epoch)
        return next(iter(loader))[0]

    a, b, c = first_batch(3), first_batch(3), first_batch(4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    if backend == "ffcv":  # keyed by position in the epoch: the thread count does not matter, the epoch does
        assert torch.equal(a, first_batch(3, workers=1)) and not torch.equal(a, first_batch(3, epoch=1))


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_a_dropped_loader_is_freed_at_once(imagenet_records, backend):
    """No reference cycle: `del loader` frees it (DALI's pipeline, FFCV's buffers, torch's workers) without the
    cyclic collector, which could otherwise run in a DataLoader worker forked later (DALI's pipeline aborts there)."""
    import gc
    import weakref

    loader = make_loader(backend, make_spec("test", 32), imagenet_records["out"], "train", batch_size=4, workers=1)
    next(iter(loader))
    ref = weakref.ref(loader)
    gc.disable()
    try:
        del loader
        assert ref() is None
    finally:
        gc.enable()


def test_ffcv_epoch_after_an_abandoned_one_keeps_its_pixels(imagenet_records):
    """An epoch left after its first batch, then a whole one: the same batches as a loader that never broke off
    (the decoder's per-thread workspace is used by one epoch at a time)."""
    def epoch(loader):
        return torch.cat([x for x, _ in loader])

    options = dict(batch_size=2, workers=1)
    ref = epoch(make_loader("ffcv", make_spec("test", 64), imagenet_records["out"], "train", **options))
    loader = make_loader("ffcv", make_spec("test", 64), imagenet_records["out"], "train", **options)
    for _ in range(3):
        next(iter(loader))
        assert torch.equal(epoch(loader), ref)


@needs("dali")
def test_dali_training_stream_runs_on_with_each_epochs_own_batches(imagenet_records):
    """A training loader's feed runs on into the next epoch (DALI prefetches across the epoch's end); each epoch's
    batches are still a fresh loader's at that epoch (order, labels, pixels). An epoch left mid-way, one asked for
    out of turn or twice restarts the stream at the epoch asked for."""
    spec = make_spec("train", 32, jitter=0.0)

    def loader():
        return make_loader("dali", spec, imagenet_records["out"], "train", batch_size=4, workers=2, seed=7)

    def epoch(loader, e):
        loader.set_epoch(e)
        return [torch.cat(t) for t in zip(*loader)]

    fresh = [epoch(loader(), e) for e in range(3)]
    assert not torch.equal(fresh[0][1], fresh[1][1])  # another order each epoch
    streaming = loader()
    for e in range(3):
        images, labels = epoch(streaming, e)
        assert torch.equal(labels, fresh[e][1]) and torch.equal(images, fresh[e][0]), e
        assert streaming.feed.queue[0][:2] == (e + 1, 0)  # the next epoch's first batch is already fed
    left = loader()
    left.set_epoch(0)
    next(iter(left))
    for e in (1, 0, 0, 2):
        images, labels = epoch(left, e)
        assert torch.equal(labels, fresh[e][1]) and torch.equal(images, fresh[e][0]), e


@pytest.fixture(scope="module")
def raw_records(tmp_path_factory, photos):
    """8 photos in a .beton of raw pixels (max side 256), with no RecordIO beside it."""
    from fixres_fast.convert import ConvertConfig, convert

    root = tmp_path_factory.mktemp("raw")
    for j, p in enumerate(photos[:8]):
        (root / "src" / f"c{j % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / "src" / f"c{j % 2}")
    convert(ConvertConfig(layout="folder", src=str(root / "src"), out=str(root / "out"), formats=("beton",),
                          write_mode="raw", max_side=256, workers=1), log=lambda *_: None)
    return root / "out"


@needs("ffcv", "dali")
def test_raw_records_give_the_same_batches_from_ffcv_and_torch(raw_records):
    """A --write-mode raw .beton: the torch backend reads its pixels too, and agrees with FFCV to 1 grey level."""
    spec = make_spec("test", 96)
    got = {b: next(iter(make_loader(b, spec, raw_records, "train", batch_size=8, workers=1))) for b in ("ffcv", "torch")}
    assert got["ffcv"][1].tolist() == got["torch"][1].tolist() and sorted(got["torch"][1].tolist()) == [0] * 4 + [1] * 4
    assert float((pixels(got["ffcv"][0]) - pixels(got["torch"][0])).abs().max()) <= 1.01
    with pytest.raises(UserError, match="raw pixels"):
        make_loader("dali", spec, raw_records, "train", batch_size=8, workers=1)


def test_reduction_rule():
    reduction = dct.dct_reduction

    assert reduction(448, 448, 224, 224) == 2 and reduction(447.9, 448, 224, 224) == 1
    assert reduction(512, 512, 128, 128) == 4 and reduction(2048, 1800, 224, 224) == 8 and reduction(100, 100, 224, 224) == 1
    rng = np.random.default_rng(0)
    for w, h, k in zip(rng.uniform(1, 3000, 500), rng.uniform(1, 3000, 500), rng.integers(16, 400, 500)):
        s = reduction(w, h, k, k)
        assert s == 1 or (w / s >= k and h / s >= k)  # never below K px once reduced
        assert s == 8 or not (w / (2 * s) >= k and h / (2 * s) >= k)  # the largest such scale


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_da2_shift_stays_in_range(ramp_records, backend):
    spec = make_spec("test2", 64, jitter=0.0)
    loader = make_loader(backend, spec, ramp_records, "train", batch_size=64, repeats=8, epoch_fraction=32.0,
                         workers=2, training=True)  # 64 crops per shape: the range check fails by chance < 1e-7
    got = np.concatenate([measure(x, y) for x, y in loader])
    for shape, (height, width) in enumerate(imagesets.RAMP_SHAPES):
        g = got[got[:, 0] == shape]
        short = min(height, width)
        rw, rh = round(width * spec.resize_short / short), round(height * spec.resize_short / short)
        left, top = g[:, 3] * rw / width, g[:, 4] * rh / height
        assert (left > -1.5).all() and (left < rw - 64 + 1.5).all(), backend  # ~1 px measurement error
        assert np.allclose(top, (rh - 64) / 2, atol=1.0)  # vertically centred
        if rw - 64 > 8:
            assert left.min() < 0.25 * (rw - 64) and left.max() > 0.75 * (rw - 64)  # the whole range is used
    assert 0.3 < got[:, 5].mean() < 0.7


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_shards_are_disjoint_and_cover(imagenet_records, backend):
    labels = [make_loader(backend, make_spec("test", 32), imagenet_records["out"], "train", batch_size=4,
                          world_size=2, rank=r, workers=1) for r in range(2)]
    got = [torch.cat([y for _, y in loader]).tolist() for loader in labels]
    index = (imagenet_records["out"] / "train.index.tsv").read_text().splitlines()[1:]
    want = [int(line.split("\t")[1]) for line in index]
    assert got == [want[0::2], want[1::2]]


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_no_whole_batch_and_an_empty_shard_give_no_batches(imagenet_records, backend):
    """A training loader whose batch is larger than its split, and an evaluation shard without records (more
    processes than records), yield no batches on every backend, as a DataLoader dropping its last batch does."""
    from fixres_fast.loaders.source import open_source

    out = imagenet_records["out"]
    n = len(open_source(out, "train"))
    for training in (False, True):
        loader = make_loader(backend, make_spec("train" if training else "test", 32), out, "train", workers=1,
                             batch_size=n + 1 if training else 4, training=training,
                             world_size=1 if training else n + 1, rank=0 if training else n)
        assert len(loader) == 0 and loader.epoch_length == 0
        assert list(loader) == [] and list(loader) == []  # and again, the next epoch
    full = make_loader(backend, make_spec("train", 32), out, "train", workers=1, batch_size=n, training=True)
    assert [y.shape[0] for _, y in full] == [n]  # one whole batch still comes


@pytest.fixture(scope="module")
def damaged_records(imagenet_records, tmp_path_factory):
    """A copy of the conversion whose val record 2 is garbage (same length) in the .beton and the .rec shards."""
    out = tmp_path_factory.mktemp("damaged") / "out"
    shutil.copytree(imagenet_records["out"], out)
    from fixres_fast.loaders.source import open_source

    jpeg = open_source(out, "val").read(2).tobytes()
    for f in list(out.glob("val*.rec")) + [out / "val.beton"]:
        data = bytearray(f.read_bytes())
        at = data.find(jpeg)
        if at >= 0:
            data[at:at + len(jpeg)] = np.random.default_rng(0).integers(0, 256, len(jpeg), dtype=np.uint8).tobytes()
            f.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_corrupt_record_is_named(damaged_records, backend):
    loader = make_loader(backend, make_spec("test", 64), damaged_records, "val", batch_size=2, workers=1)
    with pytest.raises(RecordError, match=r"record 2 of split 'val'.*ILSVRC2012_val_00000003\.JPEG"):
        list(loader)


# torch first: a DataLoader worker forked after DALI's file reader has run in this process can deadlock on a
# lock one of DALI's threads held (DALI asks for no fork after it starts); one backend per process is safe
@pytest.mark.parametrize("backend", each(("torch", "dali")))
def test_missing_file_in_a_folder_is_named(imagenet_records, tmp_path, backend):
    src = tmp_path / "tree"
    imagesets.imagenet_tree(src, bad=False)
    loader = make_loader(backend, make_spec("test", 32), src, "train", batch_size=4, workers=1)
    victim = sorted((src / "train").glob("*/*_3.JPEG"))[0]
    victim.unlink()
    with pytest.raises(RecordError, match=f"image [0-9]+ of split 'train' .*{victim.name}"):
        list(loader)


@pytest.mark.parametrize("kwargs,words", [
    (dict(backend="tf"), "choose one of dali, ffcv, torch"),
    (dict(device="tpu"), "choose one of auto, cpu, cuda"),
    (dict(spec="train"), "mode train, test, test2, train-fixed"),
])
def test_bad_choices_list_the_choices(imagenet_records, kwargs, words):
    args = dict(backend="torch", spec=make_spec("test", 32), device="cpu") | kwargs
    with pytest.raises(UserError, match=words):
        make_loader(args["backend"], args["spec"], imagenet_records["out"], "val", device=args["device"])
    with pytest.raises(UserError, match="choose one of train, test, test2"):
        make_spec("train3", 224)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("backend", each(BACKENDS))
def test_gpu_batches_match_cpu(test_da_runs, imagenet_records, backend, interpolation):
    split, runs = TEST_DA_SPLITS[interpolation][0], test_da_runs(interpolation)
    loader = make_loader(backend, make_spec("test", 224, interpolation=interpolation), imagenet_records["out"], split,
                         batch_size=8, device="cuda")
    images, labels = [torch.cat(t) for t in zip(*loader)]
    assert images.is_cuda and images.is_contiguous(memory_format=torch.channels_last)
    assert labels.cpu().tolist() == runs[backend][split][1].tolist()
    assert float((pixels(images.cpu()) - pixels(runs["torch"][split][0])).abs().mean()) < 3


@cuda
def test_device_normalisation_follows_the_spec():
    """to_batch on the GPU (torch's arithmetic there) = on the CPU, for ImageNet's and a model's mean and std."""
    from fixres_fast.loaders.common import to_batch

    nhwc = torch.randint(0, 256, (4, 9, 7, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    for mean, std in ((IMAGENET_MEAN, IMAGENET_STD), (MODEL_MEAN, MODEL_STD)):
        spec = make_spec("test", 32, mean=mean, std=std)
        on_cpu, _ = to_batch(nhwc, np.arange(4), torch.device("cpu"), spec)
        on_gpu, labels = to_batch(nhwc, np.arange(4), torch.device("cuda", torch.cuda.current_device()), spec)
        assert labels.is_cuda and torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-6, rtol=0), mean


@needs("ffcv")
def test_ffcv_leaves_torchs_thread_count_alone(imagenet_records):
    """FFCV sets torch's intra-op threads (to 1 on import, to its workers when a Loader is built and at each epoch),
    which made a CPU model's arithmetic, and so a run's numbers, depend on whether FFCV had run earlier in the
    process. Our ffcv backend and verify keep the caller's count."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(2); import fixres_fast.loaders.ffcv; "
            "from fixres_fast.loaders import make_loader; from fixres_fast.spec import make_spec; "
            f"l = make_loader('ffcv', make_spec('test', 64), {str(imagenet_records['out'])!r}, 'val', batch_size=4, "
            "workers=1); next(iter(l)); "
            f"from fixres_fast.convert import verify; verify({str(imagenet_records['out'])!r}, workers=1); "
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "2", out.stdout
