"""The RoC's area as a fraction of the image, at train and at test time (the paper's Fig. 2).

The images are the real ones of a split (a conversion's OUT folder or an ImageFolder tree), read
through the loaders' :func:`~fixres_fast.loaders.source.open_source`; only their sizes matter.
Train RoCs come from the sampler the chosen backend crops with (``ffcv``: geometry's
RandomResizedCrop law; ``torch``: torchvision's ``get_params``, as its CPU pipeline; ``dali``: DALI's
RoC generator), ``draws`` per image. The test RoC is test DA's resize-then-centre-crop box
(:func:`~fixres_fast.geometry.test_box`, the same in every backend): one per image, and its area
fraction (K_test / K_test^image)^2 * short / long side takes one value per aspect ratio, hence
the spiky distribution of Fig. 2 when a data set holds a few aspect ratios.
"""
from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import artifacts, geometry
from ..errors import UserError
from ..seeds import Stream, seed_for
from ..spec import AREA_RANGE, ASPECT_RANGE, RESIZE_RATIO, k_test_image
from .samplers import draw_rocs

SAMPLER_OF_BACKEND = {"ffcv": "geometry", "torch": "torchvision", "dali": "dali"}


@dataclass(frozen=True)
class RocConfig:
    data: str  # a conversion's OUT folder or an ImageFolder tree
    backend: str = "ffcv"  # whose train RoC sampler: ffcv, torch or dali
    split: str = "train"
    k_train: int = 224
    k_test: int = 224
    resize_ratio: float = RESIZE_RATIO  # K_test^image / K_test
    area_range: tuple[float, float] = AREA_RANGE
    aspect_range: tuple[float, float] = ASPECT_RANGE
    draws: int = 10  # train RoCs per image
    limit: int = 10_000  # read the sizes of at most this many images (the first of the split); 0: all
    seed: int = 0

    def __post_init__(self):
        if self.backend not in SAMPLER_OF_BACKEND:
            raise UserError(f"unknown backend {self.backend!r}; choose one of {', '.join(SAMPLER_OF_BACKEND)}")
        if self.k_train <= 0 or self.k_test <= 0 or not self.resize_ratio > 0:
            raise UserError(f"resolutions and the resize ratio must be positive, got k_train={self.k_train}, "
                            f"k_test={self.k_test}, resize_ratio={self.resize_ratio}")
        if not 0 < self.area_range[0] <= self.area_range[1] <= 1:
            raise UserError(f"scale range must satisfy 0 < lo <= hi <= 1 (fractions of the image area), "
                            f"got {self.area_range[0]} {self.area_range[1]}; the paper's is 0.08 1")
        if self.draws < 1 or self.limit < 0:
            raise UserError(f"draws must be at least 1 and limit 0 or more, got draws={self.draws}, limit={self.limit}")


@dataclass(frozen=True)
class RocResult:
    config: RocConfig
    sizes: np.ndarray  # (N, 2) (height, width) of the images read
    train: np.ndarray  # (N * draws,) train RoC area / image area
    test: np.ndarray  # (N,) test RoC area / image area
    skipped: int  # images whose header did not decode


def roc_areas(cfg: RocConfig) -> RocResult:
    from ..loaders.source import open_source

    source = open_source(cfg.data, cfg.split)
    sizes, skipped = image_sizes(source, cfg.limit or len(source), cfg.data)
    if not len(sizes):
        raise UserError(f"no readable image in split {cfg.split!r} of {cfg.data}")
    train = np.empty((len(sizes), cfg.draws))
    groups = Counter(map(tuple, sizes))
    for g, (height, width) in enumerate(sorted(groups)):  # one batch of draws per distinct image size
        rows = np.flatnonzero((sizes[:, 0] == height) & (sizes[:, 1] == width))
        hw = draw_rocs(SAMPLER_OF_BACKEND[cfg.backend], height, width, cfg.area_range, cfg.aspect_range,
                       len(rows) * cfg.draws, seed_for(cfg.seed, 0, g, Stream.ANALYSIS))
        train[rows] = (hw[:, 0] * hw[:, 1] / (height * width)).reshape(len(rows), cfg.draws)
    resize_short = k_test_image(cfg.k_test, cfg.resize_ratio)
    test = []
    for height, width in sizes:
        _, _, h, w = geometry.test_box(int(height), int(width), cfg.k_test, resize_short, 0.5)
        test.append(h * w / (height * width))
    return RocResult(cfg, sizes, train.reshape(-1), np.array(test), skipped)


def image_sizes(source, n: int, where) -> tuple[np.ndarray, int]:
    """(height, width) of the first ``n`` images of ``source`` from their headers, and how many failed."""
    from PIL import Image

    sizes, skipped = [], 0
    for i in range(min(n, len(source))):
        try:
            with Image.open(io.BytesIO(source.read(i).tobytes())) as im:
                sizes.append((im.height, im.width))
        except UserError as e:
            if not sizes and not skipped:  # the source itself cannot be read (e.g. no RecordIO shards)
                raise UserError(f"cannot read image sizes from {where}: {e}") from None
            skipped += 1
        except Exception:  # PIL raises many types for a bad header; counted and reported
            skipped += 1
    return np.array(sizes, dtype=np.int64).reshape(-1, 2), skipped


def report_lines(result: RocResult) -> list[str]:
    cfg = result.config
    values, counts = np.unique(np.round(result.test, 4), return_counts=True)
    top = np.sort(counts)[::-1][:3].sum() / len(result.test)
    lines = [f"{len(result.sizes)} images of split {cfg.split!r} in {cfg.data}"
             + (f" ({result.skipped} unreadable, left out)" if result.skipped else ""),
             f"train ({cfg.backend} sampler, K_train {cfg.k_train}, {cfg.draws} RoCs per image): area fraction "
             f"mean {result.train.mean():.3f}, median {np.median(result.train):.3f}, "
             f"5-95% {np.quantile(result.train, 0.05):.3f}-{np.quantile(result.train, 0.95):.3f}",
             f"test (K_test {cfg.k_test}, K_test^image {k_test_image(cfg.k_test, cfg.resize_ratio)}): area fraction "
             f"mean {result.test.mean():.3f}; {len(values)} distinct values, the 3 commonest hold {100 * top:.0f}% "
             "of the images"]
    return lines


def write_roc(result: RocResult, out) -> dict[str, Path]:
    """OUT/roc.csv (one row per RoC: image, mode, height, width, area fraction) and OUT/roc.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "roc.csv", "png": out / "roc.png"}
    draws = result.config.draws
    rows = []
    for i, (height, width) in enumerate(result.sizes):
        rows += [{"image": i, "mode": "train", "height": height, "width": width, "area_fraction": f"{a:.6f}"}
                 for a in result.train[i * draws:(i + 1) * draws]]
        rows.append({"image": i, "mode": "test", "height": height, "width": width,
                     "area_fraction": f"{result.test[i]:.6f}"})
    artifacts.write_csv(paths["csv"], rows, ("image", "mode", "height", "width", "area_fraction"))
    with artifacts.replacing(paths["png"]) as f:
        _plot(result, f)
    return paths


def _plot(result: RocResult, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 101)
    ax.hist(result.train, bins=bins, density=True, alpha=0.6, label=f"train: RandomResizedCrop ({cfg.backend})")
    ax.hist(result.test, bins=bins, density=True, alpha=0.6, label=f"test: resize {k_test_image(cfg.k_test, cfg.resize_ratio)}, "
            f"centre crop {cfg.k_test}")
    ax.set_xlabel("RoC area / image area")
    ax.set_yscale("log")  # the test spikes would flatten the train density otherwise
    ax.set_ylabel("density (log scale)")
    ax.set_title(f"Region of classification, {len(result.sizes)} images of {Path(cfg.data).name}/{cfg.split}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
