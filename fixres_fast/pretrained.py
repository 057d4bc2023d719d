"""Pretrained models in: a plain state_dict someone else trained (torchvision, timm, a lab's own), with its
architecture and the preprocessing it expects, opened as a checkpoint every job reads.

:func:`document` turns ``Pretrained(weights, arch)`` into the same document :func:`fixres_fast.checkpoint.load`
returns for our own checkpoints: the weights (with their names fitted to the model), and a
:class:`~fixres_fast.checkpoint.CheckpointMeta` whose specs carry the model's own preprocessing. That comes
from timm's ``pretrained_cfg`` (``input_size``, ``crop_pct``, ``mean``, ``std``, ``interpolation``, and
``test_input_size`` / ``test_crop_pct``, timm's own FixRes-style test setting) or torchvision's weight
transforms (``crop_size``, ``resize_size``, ``interpolation``, ``mean``, ``std``), all part of their code:
nothing is fetched from a network. Each value can be overridden.

K_train is the resolution the weights were trained at (timm: ``input_size``; torchvision: the transforms'
``crop_size``), K_test the one they are evaluated at (timm: ``test_input_size`` where given, else
``input_size``). A 1000-class model is taken to predict ImageNet-1k's classes in the standard order (sorted
WordNet IDs, as ``convert imagenet`` numbers them).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError
from .spec import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, RESIZE_RATIO, TestDA, ratio_from_crop_pct

DEFAULT_RES = 224  # K_train where neither timm nor torchvision describes the weights
IMAGENET_CLASSES = 1000
#: Keys under which training scripts nest a state_dict (timm's train.py, torchvision's references, Lightning, ours).
NESTED = ("state_dict", "model", "model_state_dict", "module", "net")
PREFIXES = ("module.", "_orig_mod.", "model.")  # DDP, torch.compile, Lightning wrappers
#: Tensors a state_dict may lack without changing what the model computes (BN's update counter).
OPTIONAL = ("num_batches_tracked",)


@dataclass(frozen=True)
class Pretrained:
    """Weights a job should open instead of a checkpoint of ours, and how to read them.

    ``arch``: a torchvision name (``resnet50``, optionally ``resnet50.IMAGENET1K_V1`` to take that weight
    set's transforms) or a timm name with or without a pretrained tag (``timm/resnet50.a1_in1k``,
    ``tf_efficientnet_lite1``). The other fields override the model's own config (None: keep it)."""

    weights: str
    arch: str
    k_train: int | None = None  # CLI --train-res
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None  # timm's K_test / K_test^image (TestDA.resize_ratio = 1 / crop_pct)

    def __str__(self) -> str:
        return self.weights


@dataclass(frozen=True)
class ModelConfig:
    """What an architecture's own config says about the weights trained for it."""

    k_train: int
    k_test: int
    resize_ratio: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    source: str  # where it came from, for the log


def split_arch(arch: str) -> tuple[str, str | None, str]:
    """(library, name, tag) of ``arch``: library 'torchvision', 'timm' or 'fixres' (ours); a 'timm/' prefix picks timm."""
    import torchvision

    from .models import SMALL_ARCHS

    forced = arch.startswith("timm/")
    base, _, tag = arch.removeprefix("timm/").partition(".")
    if not forced and base in SMALL_ARCHS:
        return "fixres", base, None
    if not forced and base in torchvision.models.list_models(module=torchvision.models):
        return "torchvision", base, tag or None
    return "timm", base, tag or None


def model_config(arch: str, log=print) -> ModelConfig:
    """The preprocessing and resolutions ``arch``'s own config gives its pretrained weights (timm's
    ``pretrained_cfg``, torchvision's weight transforms), else ImageNet's defaults at 224 with a note."""
    library, name, tag = split_arch(arch)
    if library == "timm":
        import timm.models

        cfg = timm.models.get_pretrained_cfg(f"{name}.{tag}" if tag else name)
        if cfg is not None:
            k_train = int(cfg.input_size[-1])
            k_test = int(cfg.test_input_size[-1]) if cfg.test_input_size else k_train
            crop_pct = (cfg.test_crop_pct or cfg.crop_pct) if cfg.test_input_size else cfg.crop_pct
            return ModelConfig(k_train, k_test, ratio_from_crop_pct(crop_pct), tuple(cfg.mean), tuple(cfg.std),
                               cfg.interpolation, f"timm's pretrained_cfg of {name}.{cfg.tag}")
    if library == "torchvision":
        import torchvision

        weights = torchvision.models.get_model_weights(name)
        chosen = getattr(weights, tag, None) if tag else weights.DEFAULT
        if chosen is None:
            raise UserError(f"{name} has no torchvision weight set {tag!r}; choose one of "
                            f"{', '.join(w.name for w in weights)}")
        t = chosen.transforms()
        k, resize = int(t.crop_size[0]), int(t.resize_size[0])
        return ModelConfig(k, k, resize / k, tuple(t.mean), tuple(t.std), t.interpolation.value,
                           f"torchvision's {chosen} transforms")
    log(f"note: {arch} has no pretrained config to read preprocessing from; using ImageNet's mean and std, "
        f"bilinear, K_train = K_test = {DEFAULT_RES} and test DA's 256/224 (override with --train-res, --mean, --std, "
        "--interpolation, --crop-pct)")
    return ModelConfig(DEFAULT_RES, DEFAULT_RES, RESIZE_RATIO, IMAGENET_MEAN, IMAGENET_STD, "bilinear", "defaults")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or of a ``.pth``/``.pt`` file read with ``weights_only=True``
    (nested under a common key, with DDP / compile prefixes stripped)."""
    from .checkpoint import read_plain

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for a damaged header
            raise UserError(f"{path} is not a readable .safetensors file ({type(e).__name__}: {e})") from None
    doc = read_plain(path)
    return _unnested(doc, path)


def _unnested(doc, path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. {'model': {'state_dict': ...}}
        if isinstance(doc, dict) and doc and all(torch.is_tensor(v) for v in doc.values()):
            break
        inner = next((doc[k] for k in NESTED if isinstance(doc, dict) and isinstance(doc.get(k), dict)), None)
        if inner is None:
            keys = ", ".join(map(repr, list(doc)[:6])) if isinstance(doc, dict) else type(doc).__name__
            raise UserError(f"{path} holds no state_dict (parameter names -> tensors) at its top level or under "
                            f"{', '.join(NESTED)}; found {keys}")
        doc = inner
    tensors = {k: v for k, v in doc.items() if torch.is_tensor(v)}
    names = list(tensors)
    while (prefix := next((p for p in PREFIXES if names and all(n.startswith(p) for n in names)), None)) is not None:
        names = [n.removeprefix(prefix) for n in names]  # e.g. 'module._orig_mod.': DDP around a compiled model
    return dict(zip(names, tensors.values()))


def _kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def fit_names(weights: dict, model: torch.nn.Module, path, log=print) -> dict:
    """``weights`` with the names of ``model``'s state_dict: as they are when they match; else, where both hold
    the same tensors in the same order (same shapes and kinds: weight, bias, running_mean, ...), by position
    (e.g. EfficientNet-Lite's original names onto timm's); else a clear error."""
    own = {k: v for k, v in model.state_dict().items() if _kind(k) not in OPTIONAL}
    given = {k: v for k, v in weights.items() if _kind(k) not in OPTIONAL}
    if set(given) == set(own):
        fitted = given
    elif len(given) == len(own) and all(a.shape == b.shape and _kind(x) == _kind(y)
                                        for (x, a), (y, b) in zip(given.items(), own.items())):
        fitted = dict(zip(own, given.values()))
        log(f"note: the names in {path} differ from the model's; its {len(given)} tensors have the model's shapes "
            "and kinds in the same order, so they were matched by position")
    else:
        missing = [k for k in own if k not in given][:2]
        extra = [k for k in given if k not in own][:2]
        shapes = [f"{k} has shape {tuple(given[k].shape)}, the model's {tuple(v.shape)}"
                  for k, v in own.items() if k in given and given[k].shape != v.shape][:2]
        what = "; ".join([*(f"{k} is missing" for k in missing), *(f"{k} is not in the model" for k in extra), *shapes])
        raise UserError(f"the weights in {path} do not fit {type(model).__name__} ({len(given)} tensors, the model "
                        f"has {len(own)}): {what}; check --arch")
    state = model.state_dict()
    return {k: fitted[k].to(state[k].dtype) if k in fitted else state[k] for k in state}


def num_classes_of(weights: dict, model: torch.nn.Module, path) -> int:
    """Outputs of the classifier the weights hold: the first dimension of the weight named as ``model``'s classifier
    is, else (names that differ) of the last 2-d weight (every torchvision and timm classifier is the last layer of
    its state_dict, in the order torch.save keeps; safetensors files sort their names)."""
    from .models import classifier

    head = {id(m): n for n, m in model.named_modules()}[id(classifier(model))]
    if f"{head}.weight" in weights:
        return int(weights[f"{head}.weight"].shape[0])
    last = next((v for k, v in reversed(weights.items()) if v.ndim == 2 and _kind(k) == "weight"), None)
    if last is None:
        raise UserError(f"{path} has no 2-d weight (a linear classifier) to read the number of classes from")
    return int(last.shape[0])


def imagenet_classes() -> tuple[str, ...]:
    """ImageNet-1k's WordNet IDs in the standard label order (sorted), from timm's own copy."""
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo().label_names())


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def document(p: Pretrained, log=print) -> dict:
    """``p`` as a checkpoint document ({'model': weights with the model's names, 'meta': metadata}), as
    :func:`fixres_fast.checkpoint.load` returns one."""
    from .checkpoint import CheckpointMeta
    from .models import build_model

    raw = read_state_dict(p.weights)
    model = build_model(p.arch, IMAGENET_CLASSES)
    n = num_classes_of(raw, model, p.weights)
    if n != IMAGENET_CLASSES:
        model = build_model(p.arch, n)
    cfg = model_config(p.arch, log)
    weights = fit_names(raw, model, p.weights, log)
    interpolation = p.interpolation or cfg.interpolation
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"{cfg.source} says interpolation {interpolation!r}, which the loaders do not implement; "
                        f"pass --interpolation ({', '.join(INTERPOLATIONS)})")
    k_train = p.k_train or cfg.k_train
    k_test = cfg.k_test if p.k_train is None or cfg.k_test != cfg.k_train else k_train
    test_da = TestDA(k_test=k_test, resize_ratio=ratio_from_crop_pct(p.crop_pct) if p.crop_pct else cfg.resize_ratio,
                     mean=p.mean or cfg.mean, std=p.std or cfg.std, interpolation=interpolation)
    classes = imagenet_classes() if n == IMAGENET_CLASSES and split_arch(p.arch)[0] != "fixres" else None
    log(f"{p.weights}: {p.arch}, {n} classes{' (ImageNet-1k)' if classes else ''}, K_train {k_train}, K_test {k_test} "
        f"(K_test^image {test_da.resize_short}), mean {test_da.mean}, std {test_da.std}, {interpolation}; "
        f"from {cfg.source}")
    meta = CheckpointMeta(arch=p.arch, num_classes=n, k_train=k_train, k_test=k_test, test_da=test_da, classes=classes,
                          pretrained={"weights": os.path.abspath(p.weights), "sha256": sha256(p.weights),
                                      "arch": p.arch, "config": cfg.source})
    return {"model": weights, "meta": meta.to_dict()}


def init_source(path: str, arch: str):
    """What ``train --init FILE --arch NAME`` starts from: FILE itself where it is a checkpoint of ours (it carries
    metadata), else ``Pretrained(FILE, NAME)``."""
    from .checkpoint import read_plain

    if Path(path).suffix != ".safetensors":
        doc = read_plain(path)
        if isinstance(doc, dict) and isinstance(doc.get("meta"), dict) and "model" in doc:
            return path
    return Pretrained(weights=path, arch=arch)
