"""Every backend against the spec, on real JPEGs: the batch contract, the RoC law (KS against torchvision),
test DA pixel agreement, DA2's shift, RA copies, sharding, and bad input. CPU only; loaders are reused."""
import shutil

import numpy as np
import pytest
import torch
from scipy import stats

from fixres_fast.errors import UserError
from fixres_fast.loaders import BACKENDS, RecordError, make_loader
from fixres_fast import geometry
from fixres_fast.spec import ASPECT_RANGE, IMAGENET_MEAN, IMAGENET_STD, make_spec

from . import imagesets
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
    for backend in BACKENDS:
        loader = make_loader(backend, spec, ramp_records, "train", batch_size=64, repeats=REPEATS,
                             epoch_fraction=24.0, workers=2, seed=5)
        batches = []
        for epoch in range(12):
            loader.set_epoch(epoch)
            batches += [measure(x, y) for x, y in loader]
        crops[backend] = (np.concatenate(batches), loader)
    return crops


@pytest.mark.parametrize("backend", BACKENDS)
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_augmentation_gives_distinct_copies(train_crops, backend):
    got, loader = train_crops[backend]
    epoch = got[: len(loader) * loader.config.batch_size].reshape(-1, REPEATS, got.shape[1])  # world 1: copies adjacent
    assert (epoch[:, :, 0] == epoch[:, :1, 0]).all()  # the M copies are of one image...
    boxes = np.round(epoch[:, :, 1:5], 3)
    distinct = [len({tuple(b) for b in group}) for group in boxes]
    assert np.mean(np.array(distinct) == REPEATS) > 0.95  # ...each with its own augmentation


@pytest.fixture(scope="module")
def test_batches(imagenet_records):
    """Per backend: test DA at 224 over the converted photos (val, then train), exact epochs."""
    out = {}
    for backend in BACKENDS:
        got = {}
        for split in ("val", "train"):
            loader = make_loader(backend, make_spec("test", 224), imagenet_records["out"], split, batch_size=8, workers=2)
            batches = list(loader)
            assert len(batches) == len(loader)
            got[split] = [torch.cat(t) for t in zip(*batches)]
        out[backend] = got
    return out


@pytest.mark.parametrize("backend", BACKENDS)
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


@pytest.mark.parametrize("backend,mean_tol,max_tol", [("dali", 0.5, 1.01), ("ffcv", 1.5, 12)])
def test_test_da_agrees_with_torchvision(test_batches, backend, mean_tol, max_tol):
    # DALI decodes with libjpeg-turbo's accurate IDCT like PIL; FFCV's library uses the fast IDCT
    for split in ("val", "train"):
        diff = (pixels(test_batches[backend][split][0]) - pixels(test_batches["torch"][split][0])).abs()
        assert float(diff.mean()) < mean_tol and float(diff.max()) < max_tol, f"{backend} {split}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_da2_shift_stays_in_range(ramp_records, backend):
    spec = make_spec("test2", 64, jitter=0.0)
    loader = make_loader(backend, spec, ramp_records, "train", batch_size=64, repeats=8, epoch_fraction=8.0,
                         workers=2, training=True)
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_shards_are_disjoint_and_cover(imagenet_records, backend):
    labels = [make_loader(backend, make_spec("test", 32), imagenet_records["out"], "train", batch_size=4,
                          world_size=2, rank=r, workers=1) for r in range(2)]
    got = [torch.cat([y for _, y in loader]).tolist() for loader in labels]
    index = (imagenet_records["out"] / "train.index.tsv").read_text().splitlines()[1:]
    want = [int(line.split("\t")[1]) for line in index]
    assert got == [want[0::2], want[1::2]]


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_record_is_named(damaged_records, backend):
    loader = make_loader(backend, make_spec("test", 64), damaged_records, "val", batch_size=2, workers=1)
    with pytest.raises(RecordError, match=r"record 2 of split 'val'.*ILSVRC2012_val_00000003\.JPEG"):
        list(loader)


@pytest.mark.parametrize("backend", ["dali", "torch"])
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
    (dict(device="tpu"), "choose one of cpu, cuda"),
    (dict(spec="train"), "mode train, test or test2"),
])
def test_bad_choices_list_the_choices(imagenet_records, kwargs, words):
    args = dict(backend="torch", spec=make_spec("test", 32), device="cpu") | kwargs
    with pytest.raises(UserError, match=words):
        make_loader(args["backend"], args["spec"], imagenet_records["out"], "val", device=args["device"])
    with pytest.raises(UserError, match="choose one of train, test, test2"):
        make_spec("train3", 224)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_batches_match_cpu(test_batches, imagenet_records, backend):
    loader = make_loader(backend, make_spec("test", 224), imagenet_records["out"], "val", batch_size=8, device="cuda")
    images, labels = [torch.cat(t) for t in zip(*loader)]
    assert images.is_cuda and images.is_contiguous(memory_format=torch.channels_last)
    assert labels.cpu().tolist() == test_batches[backend]["val"][1].tolist()
    assert float((pixels(images.cpu()) - pixels(test_batches["torch"]["val"][0])).abs().mean()) < 3
