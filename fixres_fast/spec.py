"""The paper's augmentation modes, as frozen data.

This module is the only place where the FixRes pre-processing constants live
(Touvron et al., "Fixing the train-test resolution discrepancy", NeurIPS 2019).
Loaders, converters, analysis and adaptation read them from here; the
mathematics that uses them lives in :mod:`fixres_fast.geometry`.

Field names say what they are: ``resize_short`` is a length in pixels,
``crop_fraction`` a fraction of a side, ``area_range`` a fraction of the image
area (sigma^2 in the paper) and ``aspect_range`` a width/height ratio (alpha).
No field is called a bare ``ratio``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UserError  # a ValueError

#: K_test^image / K_test for standard test DA: resize the short side to 256, crop 224 (Sec. 3.1).
RESIZE_RATIO = 256 / 224
#: Channel means and standard deviations of ImageNet, RGB, as fractions of 255.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Paper defaults (Sec. 3.1, Sec. 5 "Training protocol").
AREA_RANGE = (0.08, 1.0)  # sigma^2 ~ U(area_range), fraction of the image area
ASPECT_RANGE = (3 / 4, 4 / 3)  # ln(alpha) ~ U(ln lo, ln hi), width / height
JITTER = 0.3  # brightness, contrast, saturation of train DA's colour jitter
DA2_JITTER = 0.05  # the "mild" colour jitter of test DA2
REPEATS = 3  # repeated augmentation (Sec. 5, [Hoffer et al.])
#: Samples per training epoch, as a fraction of the images in the split (RA draws this many / repeats
#: distinct images, each `repeats` times). 1.0 is torchvision's RASampler; the paper's 5005 x 512 / B
#: batches of B on ImageNet-1k is 2.0.
EPOCH_FRACTION = 1.0
DA2_SHIFT = 1.0  # test DA2: fraction of the horizontal slack the crop's left edge may use (1: flush-left..flush-right)
#: Resampling filters every backend implements, antialiased as PIL does (a support widened by the scale when shrinking).
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True, kw_only=True)
class Pixels:
    """How every mode resamples and normalises pixels: the model's own preprocessing (timm's ``pretrained_cfg``
    mean, std and interpolation; torchvision's weight transforms). Keyword-only, after each mode's own fields."""

    mean: tuple[float, float, float] = IMAGENET_MEAN  # RGB, fractions of 255
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"  # one of INTERPOLATIONS

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(f"unknown interpolation {self.interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise UserError(f"{name} must be three numbers (R, G, B as fractions of 255), got {v!r}")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if not all(x > 0 for x in self.std):
            raise UserError(f"std must be positive, got {self.std!r}")


@dataclass(frozen=True)
class TrainDA(Pixels):
    """Train DA: RandomResizedCrop to ``k_train``, horizontal flip, optional colour jitter."""

    k_train: int = 224
    area_range: tuple[float, float] = AREA_RANGE
    aspect_range: tuple[float, float] = ASPECT_RANGE
    flip: bool = True
    jitter: float = JITTER
    max_attempts: int = 10  # torchvision's rejection loop before the centre-crop fallback

    @property
    def size(self) -> int:
        return self.k_train


@dataclass(frozen=True)
class TestDA(Pixels):
    """Test DA: resize the short side to ``resize_short``, then centre crop ``k_test``.

    Order is resize-then-crop (torchvision's), never crop-then-resize.
    """

    k_test: int = 224
    resize_ratio: float = RESIZE_RATIO  # K_test^image / K_test

    @property
    def size(self) -> int:
        return self.k_test

    @property
    def resize_short(self) -> int:
        """K_test^image in pixels: floor(K_test * resize_ratio) (:func:`k_test_image`)."""
        return k_test_image(self.k_test, self.resize_ratio)


@dataclass(frozen=True)
class TestDA2(TestDA):
    """Test DA2: test DA's resize, a centre crop shifted at random horizontally, flip, mild jitter.

    The horizontal offset of the crop is uniform over every position the resized
    image allows (from flush-left to flush-right); the crop stays vertically centred.
    """

    flip: bool = True
    jitter: float = DA2_JITTER
    shift: float = DA2_SHIFT  # 0: centred crop; 1: left edge uniform over all positions the image allows


# --- Train DA without RandomResizedCrop (Appendix D, Table 9) ----------------------------------------


@dataclass(frozen=True)
class TrainFixedDA(Pixels):
    """Appendix D's train DA: "a Resize followed by a random crop with a fixed size instead of RandomResizedCrop".

    The short side resized to ``resize_short`` (K_train * resize_ratio, floored as test DA's K_test^image: 256 for
    224), then a K_train x K_train crop whose top and left offsets are each uniform over every integer position the
    resized image allows (torchvision's ``Resize(256)`` + ``RandomCrop(224)``), horizontal flip, colour jitter. The
    crop covers what test DA's centre crop covers at the same resolution: objects look as large in training as at
    test time when K_test = K_train (Eq. 5 with a fixed sigma = 1 / resize_ratio, :attr:`area_range`).
    """

    k_train: int = 224
    resize_ratio: float = RESIZE_RATIO  # resized short side / K_train, as test DA's K_test^image / K_test
    flip: bool = True
    jitter: float = JITTER

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.k_train, bool) or not isinstance(self.k_train, int) or self.k_train <= 0:
            raise UserError(f"train-fixed's K_train must be a positive number of pixels, got {self.k_train!r}")
        ratio = self.resize_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio >= 1:
            raise UserError(f"train-fixed's resize_ratio (resized short side / K_train) must be at least 1, so "
                            f"that the K_train crop fits in the resized image (the paper's is 256/224), got {ratio!r}")

    @property
    def size(self) -> int:
        return self.k_train

    @property
    def resize_short(self) -> int:
        """The resized short side in pixels: floor(K_train * resize_ratio) (:func:`k_test_image`)."""
        return k_test_image(self.k_train, self.resize_ratio)

    @property
    def area_range(self) -> tuple[float, float]:
        """sigma^2 of Eq. 5, fixed: the crop's side is 1 / resize_ratio of a square image's side (not a field)."""
        return (1 / self.resize_ratio ** 2,) * 2


MODES = {"train": TrainDA, "test": TestDA, "test2": TestDA2, "train-fixed": TrainFixedDA}
#: Each mode's name in the paper's words (reports, legends).
DA_NAMES = {"train": "train DA", "test": "test DA", "test2": "test DA2", "train-fixed": "train DA without RoC (App. D)"}
#: The training modes: a loader shuffles, repeats (RA) and drops the last partial batch for these by default
#: (LoaderConfig.training), and their resolution is K_train. The others are test DA's, used for fine-tuning too.
TRAIN_SPECS = (TrainDA, TrainFixedDA)


def is_train_da(spec) -> bool:
    """Whether ``spec`` is a training mode (train DA, or Appendix D's train-fixed): see :data:`TRAIN_SPECS`."""
    return isinstance(spec, TRAIN_SPECS)


def mode_of(spec) -> str:
    """The mode name (a key of :data:`MODES`) of a spec object."""
    for name, cls in MODES.items():
        if type(spec) is cls:
            return name
    raise ValueError(f"expected a {', '.join(c.__name__ for c in MODES.values())} spec, got {type(spec).__name__}")


#: Float slack of k_test_image's floor: 224 * (256 / 224) must be 256, not 255.99999999999997.
FLOOR_SLACK = 1e-9


def k_test_image(k_test: int, resize_ratio: float = RESIZE_RATIO) -> int:
    """Short side the image is resized to before the centre crop of ``k_test``: floor(K_test * resize_ratio), as the
    authors' own DeiT code (``int((256 / 224) * input_size)``) and timm (``math.floor(img_size / crop_pct)``) do, so a
    timm model's ``crop_pct`` gives its own K_test^image (224 at crop_pct 0.9: 248, where rounding gives 249)."""
    if k_test <= 0:
        raise ValueError(f"test resolution must be a positive number of pixels, got {k_test}")
    return int(k_test * resize_ratio + FLOOR_SLACK)


def ratio_from_crop_pct(crop_pct: float) -> float:
    """TestDA.resize_ratio (K_test^image / K_test) from timm's ``crop_pct`` (K_test / K_test^image); both floor the
    product (:func:`k_test_image`), so the short side is timm's."""
    if not 0 < crop_pct <= 1:
        raise UserError(f"crop_pct must be in (0, 1] (the centre crop's fraction of the resized short side), got {crop_pct}")
    return 1 / crop_pct


def crop_pct_from_ratio(resize_ratio: float) -> float:
    """timm's ``crop_pct`` (K_test / K_test^image) of a TestDA.resize_ratio."""
    return 1 / resize_ratio


def make_spec(mode: str, res: int, **overrides):
    """Build the spec for ``mode`` (a key of :data:`MODES`) at resolution ``res``."""
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if res <= 0:
        raise UserError(f"resolution must be a positive number of pixels, got {res}")
    cls = MODES[mode]
    key = "k_train" if cls in TRAIN_SPECS else "k_test"
    return cls(**{key: res}, **overrides)


# --- The training and fine-tuning recipes (Sec. 5, "Training protocol") -----------------------------

#: Learning-rate schedules after the warm-up (Recipe.schedule): x0.1 every step_epochs, a cosine to 0, or a straight
#: line to 0 at the last epoch's end (with a warm-up, the triangle of FFCV's ImageNet example: its 'cyclic' schedule).
SCHEDULES = ("step", "cosine", "linear")
#: The schedules whose curve depends on Recipe.epochs (extending such a run is not resuming it).
SCHEDULES_BY_EPOCHS = ("cosine", "linear")
#: Reference batch of the learning-rate rules: lr = BASE_LR * B / LR_BATCH (Goyal et al.).
BASE_LR, LR_BATCH = 0.1, 256
#: Fine-tuning at the test resolution: "the initial learning rate is 0.008 same decay, B = 512, 60 epochs".
FINETUNE_LR, FINETUNE_LR_BATCH, FINETUNE_EPOCHS = 0.008, 512, 60


@dataclass(frozen=True)
class Recipe:
    """The optimisation recipe. Defaults are the paper's ResNet-50 training: SGD, momentum 0.9,
    weight decay 1e-4, lr 0.1*B/256 divided by 10 every 30 epochs, 120 epochs, B = 512, RA with 3 repeats."""

    epochs: int = 120
    batch_size: int = 512  # B, over all processes
    lr: float | None = None  # None: BASE_LR * batch_size / LR_BATCH
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"  # 'step' (x0.1 every step_epochs), 'cosine' or 'linear' (SCHEDULES)
    step_epochs: int = 30
    warmup_epochs: float = 0.0  # linear warm-up from 0
    label_smoothing: float = 0.0
    no_bn_weight_decay: bool = False  # no weight decay on BatchNorm parameters and biases
    repeats: int = REPEATS

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else BASE_LR * self.batch_size / LR_BATCH

    def lr_at(self, epoch: float) -> float:
        """Learning rate at a fractional epoch: warm-up, then step (x0.1 every step_epochs), cosine, or linear (from
        base_lr at the warm-up's end to 0 at ``epochs``)."""
        base = self.base_lr
        if epoch < self.warmup_epochs:
            return base * epoch / self.warmup_epochs
        if self.schedule == "cosine":
            return 0.5 * base * (1 + math.cos(math.pi * min(epoch / self.epochs, 1.0)))
        if self.schedule == "linear":
            return base * max(0.0, (self.epochs - epoch) / max(self.epochs - self.warmup_epochs, 1e-9))
        return base * 0.1 ** int(epoch // self.step_epochs)

#: Adaptation epochs when every epoch streams through the frozen trunk (test DA2, train DA, or a cache too
#: large): a quick default. Where the trunk's output is cached (test DA), an epoch costs only the tuned
#: layers and the default is the paper's FINETUNE_EPOCHS (:func:`adapt_epochs`).
ADAPT_EPOCHS_STREAMED = 10


def adapt_epochs(cached: bool) -> int:
    """Default fine-tuning epochs: the paper's 60 where the frozen trunk is cached, else ADAPT_EPOCHS_STREAMED.
    (Measured on composites, docs/BENCHMARKS.md: with the paper's lr, 10 epochs moved top-1 by 0 points and 60
    by +1.0.)"""
    return FINETUNE_EPOCHS if cached else ADAPT_EPOCHS_STREAMED


def finetune_recipe(epochs: int = FINETUNE_EPOCHS, batch_size: int = FINETUNE_LR_BATCH, lr: float | None = None) -> Recipe:
    """Fine-tuning at K_test (Sec. 5): SGD, lr FINETUNE_LR * B / FINETUNE_LR_BATCH, "same decay" (x0.1 at
    half of the epochs, as 30 of the paper's 60), no repeated augmentation."""
    lr = FINETUNE_LR * batch_size / FINETUNE_LR_BATCH if lr is None else lr
    return Recipe(epochs=epochs, batch_size=batch_size, lr=lr, step_epochs=max(1, -(-epochs // 2)), repeats=1)

#: ``--test-res auto``: training images tried per candidate K_test, and the fraction of them held out to measure
#: top-1 on. Fewer than AUTO_MIN_HELD_OUT held-out images cannot decide: one image is then more than a point of
#: top-1, while neighbouring candidates (32 px apart) typically differ by a point or two.
AUTO_IMAGES, AUTO_HOLDOUT, AUTO_MIN_HELD_OUT = 5000, 0.2, 100


# --- Progressive resizing: K_train over the epochs (FFCV's ImageNet example) ---------------------------

#: Inside the ramp, K_train is rounded to a multiple of this many pixels (FFCV's ImageNet example, get_resolution).
RAMP_STEP = 32
#: What --res (and a recipe's train.k_train) takes.
RES_SYNTAX = ("a resolution such as 224, or MIN:MAX@START-END such as 160:192@65-76 (K_train MIN up to epoch START, "
              "then a linear ramp to MAX at epoch END)")


@dataclass(frozen=True)
class ResolutionSchedule:
    """Progressive resizing as FFCV's ImageNet example does it (``get_resolution`` of its train_imagenet.py): K_train
    is ``min_res`` at every epoch up to ``start_ramp``, ``max_res`` from ``end_ramp`` on, and in between the straight
    line from (start_ramp, min_res) to (end_ramp, max_res), rounded to the nearest multiple of RAMP_STEP, a half to
    the even multiple (numpy's round). Epochs count from 0, as the trainer's do."""

    min_res: int
    max_res: int
    start_ramp: int
    end_ramp: int

    def __post_init__(self):
        values = (self.min_res, self.max_res, self.start_ramp, self.end_ramp)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise UserError(f"a resolution schedule takes whole numbers, got {values}; expected {RES_SYNTAX}")
        if self.min_res <= 0:
            raise UserError(f"--res {self}: MIN must be a positive number of pixels; expected {RES_SYNTAX}")
        if self.min_res > self.max_res:
            raise UserError(f"--res {self}: MIN {self.min_res} is above MAX {self.max_res} (the ramp grows K_train); "
                            f"expected {RES_SYNTAX}")
        if self.start_ramp < 0 or self.start_ramp > self.end_ramp:
            raise UserError(f"--res {self}: the ramp must start at an epoch >= 0 and not after it ends, got START "
                            f"{self.start_ramp}, END {self.end_ramp}; expected {RES_SYNTAX}")

    def __str__(self) -> str:
        return f"{self.min_res}:{self.max_res}@{self.start_ramp}-{self.end_ramp}"

    def k_train_at(self, epoch: int) -> int:
        """K_train of epoch ``epoch`` (counted from 0)."""
        if epoch <= self.start_ramp:
            return self.min_res
        if epoch >= self.end_ramp:
            return self.max_res
        slope = (self.max_res - self.min_res) / (self.end_ramp - self.start_ramp)
        return round((slope * (epoch - self.start_ramp) + self.min_res) / RAMP_STEP) * RAMP_STEP  # a half to even


def parse_res(text, option: str = "--res") -> int | ResolutionSchedule:
    """--res's text (or a recipe's train.k_train): one resolution as an int, or MIN:MAX@START-END as a
    :class:`ResolutionSchedule`; a one-line UserError pointing at the syntax for anything else."""
    text = str(text).strip()
    res, _, ramp = text.partition("@")
    low, colon, high = res.partition(":")
    start, dash, end = ramp.partition("-")
    numbers = (low, high, start, end) if colon else (low,)
    if not all(x.strip().isascii() and x.strip().isdigit() for x in numbers) or bool(colon) != bool(ramp) or (ramp and not dash):
        raise UserError(f"{option} {text!r}: expected {RES_SYNTAX}")
    if not colon:
        if int(low) <= 0:
            raise UserError(f"{option} {text}: a resolution must be a positive number of pixels; expected {RES_SYNTAX}")
        return int(low)
    try:
        return ResolutionSchedule(*map(int, numbers))
    except UserError as e:
        raise UserError(str(e).replace("--res", option, 1)) from None


def k_train_at(k_train: int | ResolutionSchedule, epoch: int) -> int:
    """K_train of epoch ``epoch``: ``k_train`` itself, or its schedule's at that epoch."""
    return k_train.k_train_at(epoch) if isinstance(k_train, ResolutionSchedule) else k_train


def k_trains(k_train: int | ResolutionSchedule, epochs: int) -> tuple[int, ...]:
    """Every K_train that epochs 0 .. epochs - 1 train at, in order, once each."""
    return tuple(dict.fromkeys(k_train_at(k_train, e) for e in range(max(epochs, 1))))
