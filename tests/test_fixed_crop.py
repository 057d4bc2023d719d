"""Appendix D's train DA without RandomResizedCrop (Table 9, mode ``train-fixed``): torchvision's Resize(K * 256/224)
+ RandomCrop(K) + flip + jitter, on every backend, on real JPEGs: the spec, the offset law (geometry's, and each
backend's measured on ramps, KS against torchvision's ``RandomCrop.get_params``), the pixels of the window against
torchvision's resize at the window's offset, flip, and a training run."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats
from torchvision.transforms import InterpolationMode, v2

from fixres_fast import geometry
from fixres_fast.errors import UserError
from fixres_fast.loaders import BACKENDS, LoaderConfig, installed, make_loader
from fixres_fast.spec import MODES, RESIZE_RATIO, TrainFixedDA, is_train_da, make_spec, mode_of

from . import imagesets
from .conftest import each, needs
from .test_loaders import measure, pixels


def torchvision_offsets(resized_h, resized_w, k, n, seed=0):
    """(n, 2) (top, left) drawn by torchvision's ``RandomCrop.get_params`` on a resized_h x resized_w image."""
    torch.manual_seed(seed)
    img = torch.zeros(1, resized_h, resized_w)
    return np.array([v2.RandomCrop.get_params(img, (k, k))[:2] for _ in range(n)])


# --- the spec ---------------------------------------------------------------------------------------------------

def test_the_spec_is_resize_then_a_fixed_size_crop():
    spec = make_spec("train-fixed", 224)
    assert type(spec) is TrainFixedDA and MODES["train-fixed"] is TrainFixedDA and mode_of(spec) == "train-fixed"
    assert spec.size == spec.k_train == 224 and spec.resize_short == 256 and spec.resize_ratio == RESIZE_RATIO
    assert spec.flip and spec.jitter == 0.3
    assert is_train_da(spec) and LoaderConfig().is_training(spec)  # a training mode: shuffled, RA, whole batches
    assert not is_train_da(make_spec("test2", 224))
    # Eq. 5 with sigma fixed at 1 / resize_ratio: objects look as large at K_test = K_train as in training
    assert geometry.suggest_k_test(224, RESIZE_RATIO, spec.area_range) == 224
    assert geometry.suggest_k_test(128, RESIZE_RATIO, make_spec("train-fixed", 128).area_range) == 128


def test_eq5_is_the_fixed_crops_apparent_size():
    """Eq. 1-5 on a square image: the crop (any offset: one size) scales objects by K_train / its side; Eq. 5 with
    TrainFixedDA.area_range gives the same r_test / r_train."""
    spec = make_spec("train-fixed", 224)
    _, _, h, w = geometry.source_box(10, 20, 224, 500, 500, spec.resize_short)  # the window in the image's pixels
    for k_test in (160, 224, 288):
        measured = geometry.apparent_size_ratio(h, w, 500, 500, 224, make_spec("test", k_test).resize_short)
        eq5 = geometry.expected_apparent_size_ratio(224, k_test, RESIZE_RATIO, spec.area_range)
        assert measured == pytest.approx(eq5, rel=0.01) and (eq5 == pytest.approx(1, abs=0.01)) == (k_test == 224)


@pytest.mark.parametrize("bad,words", [
    (dict(resize_ratio=0.9), "must be at least 1"),
    (dict(resize_ratio=True), "must be at least 1"),
    (dict(k_train=0), "positive number of pixels"),
    (dict(k_train=22.5), "positive number of pixels"),
    (dict(interpolation="nearest"), "choose one of bilinear, bicubic"),
])
def test_the_spec_refuses_what_cannot_crop(bad, words):
    with pytest.raises(UserError, match=words):
        TrainFixedDA(**bad)


def test_a_checkpoint_records_the_mode():
    from fixres_fast.checkpoint import CheckpointMeta

    meta = CheckpointMeta(arch="fixres_cnn", num_classes=3, k_train=96, k_test=96, test_da=make_spec("test", 96),
                          train_da=make_spec("train-fixed", 96, resize_ratio=1.25, jitter=0.0))
    assert CheckpointMeta.from_dict(meta.to_dict()).train_da == meta.train_da


# --- the offset law -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compiled", [True, False])
def test_offsets_are_uniform_over_every_integer_position(compiled):
    """375 x 500 at 224: resized to 256 x 341, slack 32 rows and 117 columns. Each offset uniform over 0..slack, both
    ends included (test DA2's round(U * slack) would give the ends half their share): chi-square per axis."""
    draw = geometry.drawn_fixed_window if compiled else geometry.plain(geometry.drawn_fixed_window)
    geometry.seed(4)
    np.random.seed(4)  # plain Python draws from numpy's generator
    windows = np.array([draw(375, 500, 224, 256) for _ in range(40_000)])
    assert (windows[:, :2] == (256, 341)).all()  # torchvision's Resize(256) of 375 x 500
    for axis, slack in ((2, 32), (3, 117)):
        counts = np.bincount(windows[:, axis], minlength=slack + 1)
        assert len(counts) == slack + 1  # never past the image
        assert stats.chisquare(counts).pvalue > 1e-4, (axis, counts)
    assert abs(np.corrcoef(windows[:, 2], windows[:, 3])[0, 1]) < 0.03  # the axes drawn independently


K = 32  # px, output side of the law runs
RATIO = 2.0  # resize the ramps' short side to 64: a 32-px slack on the short side


@pytest.fixture(scope="module")
def fixed_crops(ramp_records):
    """Per backend: 2 epochs of train-fixed (no jitter, default loader options: a training loader) over the ramps."""
    spec = make_spec("train-fixed", K, jitter=0.0, resize_ratio=RATIO)
    crops = {}
    for backend in filter(installed, BACKENDS):
        loader = make_loader(backend, spec, ramp_records, "train", batch_size=64, repeats=8, epoch_fraction=32.0,
                             workers=2, seed=7)
        assert loader.training
        batches = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            batches += [measure(x, y) for x, y in loader]
        crops[backend] = np.concatenate(batches)
    return crops


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_each_backend_draws_torchvisions_offsets(fixed_crops, backend):
    got = fixed_crops[backend]
    for shape, (height, width) in enumerate(imagesets.RAMP_SHAPES):
        g = got[got[:, 0] == shape]
        rh, rw = geometry.resized_size(height, width, make_spec("train-fixed", K, resize_ratio=RATIO).resize_short)
        top, left = np.round(g[:, 4] * rh / height), np.round(g[:, 3] * rw / width)  # measured to ~0.1 px
        assert len(g) > 100
        assert np.allclose(g[:, 1], K * K / (rh * rw), rtol=0.05)  # a fixed size: K x K of the resized image
        ref = torchvision_offsets(rh, rw, K, 4000, seed=shape)
        for axis, (values, slack) in enumerate(((top, rh - K), (left, rw - K))):
            assert values.min() >= -1 and values.max() <= slack + 1, (backend, shape, axis)
            assert values.min() <= 0.1 * slack and values.max() >= 0.9 * slack  # the whole range is used
            assert stats.ks_2samp(values, ref[:, axis]).pvalue > 1e-4, (backend, shape, axis)
    assert 0.4 < got[:, 5].mean() < 0.6  # horizontal flip with p = 1/2


# --- the pixels: torchvision's resize, then the window --------------------------------------------------------

#: (backend, mean, max, max on the image's border) bounds on the grey-level difference from torchvision at the best
#: offset: those of test DA's table (tests/test_loaders.py AGREEMENT, bilinear), which decodes as these full decodes
#: do; the last, on the window's outer rows and columns that lie on the image's own border (a window flush with an
#: edge, which test DA's centred window never is): there DALI's antialiased filter weighs the border unlike PIL's,
#: by up to 10 grey levels on ~0.2% of the pixels (measured at 48 px), inside it within 1.
AGREEMENT = [("torch", 0.01, 0.01, 0.01), ("ffcv", 0.5, 1.01, 1.01), ("dali", 0.5, 1.01, 12.0)]


def on_border(top, left, k, slack_y, slack_x) -> np.ndarray:
    """The k x k window's pixels that lie on the resized image's first or last row or column."""
    mask = np.zeros((k, k), bool)
    mask[0, :] |= top == 0
    mask[-1, :] |= top == slack_y
    mask[:, 0] |= left == 0
    mask[:, -1] |= left == slack_x
    return mask


def best_offset(resized: np.ndarray, crop: np.ndarray):
    """(mean abs difference, top, left) of the window of ``resized`` (HWC) closest to ``crop`` (k x k x 3)."""
    k = crop.shape[0]
    best = (np.inf, -1, -1)
    for top in range(resized.shape[0] - k + 1):
        for left in range(resized.shape[1] - k + 1):
            d = np.abs(resized[top:top + k, left:left + k] - crop).mean()
            if d < best[0]:
                best = (d, top, left)
    return best


@pytest.mark.parametrize("backend,mean_tol,max_tol,border_tol",
                         [pytest.param(*row, marks=needs(row[0]) if row[0] != "torch" else ()) for row in AGREEMENT])
def test_the_window_is_torchvisions_resize_cropped(imagenet_records, backend, mean_tol, max_tol, border_tol):
    """Evaluation order (every image once, in order), no flip or jitter: each output is torchvision's
    Resize(K * 256/224) of its image, cropped at some offset; the offsets found are spread over the slack."""
    from fixres_fast.loaders.source import open_source

    k = 48
    spec = make_spec("train-fixed", k, flip=False, jitter=0.0)
    loader = make_loader(backend, spec, imagenet_records["out"], "train", batch_size=8, workers=2, training=False,
                         reduced_decode=False)
    got = pixels(torch.cat([x for x, _ in loader])).permute(0, 2, 3, 1).numpy()
    source = open_source(imagenet_records["out"], "train")
    resize = v2.Resize(spec.resize_short, InterpolationMode.BILINEAR, antialias=True)
    assert len(got) == len(source) >= 6
    offsets = []
    for i in range(len(source)):
        ref = np.asarray(resize(source.open_image(i).convert("RGB"))).astype(float)
        mean, top, left = best_offset(ref, got[i])
        diff = np.abs(ref[top:top + k, left:left + k] - got[i]).max(2)
        border = on_border(top, left, k, ref.shape[0] - k, ref.shape[1] - k)
        assert mean < mean_tol and diff[~border].max() < max_tol, (backend, i, mean, diff[~border].max())
        assert diff.max() < border_tol, (backend, i, diff.max())
        offsets.append((top, left, ref.shape[0] - k, ref.shape[1] - k))
    top, left, slack_y, slack_x = np.array(offsets).T
    assert len(set(zip(top, left))) > len(offsets) // 2  # drawn, not one fixed place
    assert (top != slack_y // 2).any() and (left != slack_x // 2).any()  # not test DA's centre


def test_the_torch_gpu_path_applies_the_same_window(photos):
    """The torch backend's CUDA path (run here on the CPU): the workers' drawn window, one roi_align, against the
    PIL reference with the same draws (numpy's generator for the window, as FixedCrop draws it)."""
    from PIL import Image

    from fixres_fast.loaders.torch import gpu_augment, pil_transform
    from .test_gpu_augment import batch_of

    spec = make_spec("train-fixed", 128, flip=False, jitter=0.0)
    got = gpu_augment(batch_of(photos[:6], spec, seed=3), spec, torch.device("cpu")).numpy().astype(float)
    np.random.seed(3)
    ref = np.stack([np.asarray(pil_transform(spec)(Image.open(p).convert("RGB"))) for p in photos[:6]]).astype(float)
    assert np.abs(got - ref).mean() < 3.5  # an area filter (roi_align) against PIL's antialiased bilinear


# --- training with it -----------------------------------------------------------------------------------------

def test_train_and_adapt_with_train_fixed(tmp_path):
    from fixres_fast import checkpoint
    from fixres_fast.cli import main
    from fixres_fast.convert import ConvertConfig, convert
    from fixres_fast.data import check_res
    from fixres_fast.sampledata import composite_tree

    composite_tree(tmp_path / "src", n_train=48, n_val=16, seed=0)
    data = tmp_path / "data"
    convert(ConvertConfig(layout="folder", src=str(tmp_path / "src"), out=str(data), workers=1), log=lambda *_: None)
    res = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--arch", "fixres_cnn",
                                    "--res", "32", "--aug", "train-fixed", "--backend", "torch", "--device", "cpu",
                                    "--workers", "1", "--batch-size", "8", "--repeats", "1", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    # the resized short side, K_train * 256/224, must be stored (--max-side 512): 480 -> 548 px is not; train DA's
    # RoC of 480 px is
    check_res(make_spec("train", 480), data)
    with pytest.raises(UserError, match="--res 480 resizes images to a short side of K_train x resize ratio = 548 px.*"
                                        "--max-side 512.*--res 448 or less"):
        check_res(make_spec("train-fixed", 480), data)
    meta = checkpoint.meta_of(checkpoint.load(tmp_path / "run" / "last.pt"))
    assert meta.train_da == make_spec("train-fixed", 32) and meta.k_train == 32
    res = CliRunner().invoke(main, ["adapt", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--test-res", "48",
                                    "--aug", "train-fixed", "--epochs", "1", "--batch-size", "8", "--backend", "torch",
                                    "--device", "cpu", "--workers", "1", "--out", str(tmp_path / "adapted.pt")])
    assert res.exit_code == 0, res.output
    assert checkpoint.meta_of(checkpoint.load(tmp_path / "adapted.pt")).adapted("aug") == "train-fixed"
