"""Checkpoints: a plain model ``state_dict`` that torchvision/timm load, plus FixRes metadata.

Like timm's pretrained configs (``input_size`` / ``test_input_size``, ``crop_pct``), a checkpoint
carries its train and test resolutions and pre-processing as data, so later commands use them by
default, and the data set it was trained or adapted on (absolute path and the manifest's SHA-256).
Files are written atomically (temporary file, fsync, rename: :mod:`fixres_fast.artifacts`).

:class:`CheckpointMeta` is the typed form of the metadata; jobs read it, never a key by string. On disk it is
a dict of plain types whose keys are those every earlier version wrote (``train_res``, ``test_res``,
``preprocessing``, ...), so old checkpoints load unchanged (:meth:`CheckpointMeta.from_dict`).

A checkpoint holds plain types only (tensors, numbers, strings, lists, tuples, dicts, None) and is
read with ``torch.load(weights_only=True)``: a file whose unpickling would call other Python objects
(which can run any code) is refused before anything in it runs.
"""
from __future__ import annotations

import dataclasses
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .artifacts import torch_save
from .errors import UserError
from .spec import MODES, RESIZE_RATIO, Pixels, Recipe, TestDA, TrainDA, mode_of

REQUIRED_META = ("arch", "num_classes", "train_res", "test_res", "preprocessing")
PLAIN = (bool, int, float, str, type(None))  # with tensors, and lists, tuples and dicts of them


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def plain(value, where: str = "checkpoint"):
    """``value`` as plain types that ``torch.load(weights_only=True)`` reads: numpy scalars become Python
    numbers, paths strings, dataclasses dicts; anything else that is not plain is a programming error."""
    if type(value) in PLAIN or isinstance(value, torch.Tensor):  # exact types: numpy's float64 is a float
        return value
    if isinstance(value, dict):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return (list if isinstance(value, list) else tuple)(plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value), where)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a numpy scalar
        return value.item()
    raise TypeError(f"{where} is a {type(value).__name__}; a checkpoint holds only plain types")


def save(path: str | Path, model: torch.nn.Module, meta: CheckpointMeta | dict, **state) -> None:
    """``model``'s weights, ``meta`` and further training ``state`` (plain types), written atomically."""
    meta = meta.to_dict() if isinstance(meta, CheckpointMeta) else meta
    torch_save(path, {"model": unwrap(model).state_dict(), "meta": plain(meta, "meta"), **plain(state)})


def read_plain(path: str | Path, map_location="cpu"):
    """What ``torch.save`` wrote to ``path``, read with ``weights_only=True``: plain types only, so nothing in the
    file runs; a clear error for a file that is damaged, not torch's, or needs other objects."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns (on stderr) before refusing a foreign pickle protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged, foreign or hostile file
        raise UserError(_unreadable(path, e)) from None


def load(source, map_location="cpu", log=print) -> dict:
    """The checkpoint at ``source`` (a path), read without running code from it, its metadata checked; or, for a
    :class:`~fixres_fast.pretrained.Pretrained`, its weights and the model's own config as the same document."""
    from .pretrained import Pretrained, document

    if isinstance(source, Pretrained):
        return document(source, log)
    path = Path(source)
    doc = read_plain(path, map_location)
    meta = doc.get("meta") if isinstance(doc, dict) else None
    missing = [k for k in REQUIRED_META if not isinstance(meta, dict) or k not in meta]
    if not isinstance(doc, dict) or "model" not in doc or missing:
        raise UserError(f"{path} has no fixres-fast metadata (missing: {', '.join(missing) or 'model'}); "
                        "checkpoints written by `fixres-fast train` or `adapt` carry it (for plain weights from "
                        "torchvision, timm or elsewhere, pass --weights FILE --arch NAME)")
    problem = _invalid(doc)
    if problem:
        raise UserError(f"{path} has invalid fixres-fast metadata ({problem}); checkpoints written by "
                        "`fixres-fast train` or `adapt` carry valid metadata")
    return doc


def _unreadable(path: Path, e: Exception) -> str:
    blocked = re.search(r"GLOBAL (\S+?)(?: |$)", str(e))
    if blocked:
        return (f"{path} needs arbitrary Python objects to unpickle ({blocked.group(1)}), which could run code; "
                "fixres-fast loads only plain tensors and metadata. If you trust the file, open it in Python yourself "
                "and re-save its state_dict and metadata as plain types (tensors, numbers, strings, lists, dicts)")
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    first = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")
    return (f"{path} is not a readable checkpoint: not a file torch.save wrote, or a damaged one "
            f"({type(e).__name__}: {first[:200]})")


def _positive_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def _index(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _invalid(doc: dict) -> str | None:
    """What is wrong with a checkpoint's metadata types, or None."""
    meta, weights = doc["meta"], doc["model"]
    if not isinstance(weights, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()):
        return "'model' must be a state_dict: parameter names and tensors"
    if not isinstance(meta["arch"], str):
        return f"arch must be a model name, found {meta['arch']!r}"
    for key in ("num_classes", "train_res", "test_res"):
        if not _positive_int(meta[key]):
            return f"{key} must be a positive integer, found {meta[key]!r}"
    pre = meta["preprocessing"]
    if not isinstance(pre, dict) or not isinstance(pre.get("test"), dict) or not isinstance(pre.get("train", {}), dict):
        return "preprocessing must hold a 'test' (and 'train') dict"
    ratio = pre["test"].get("resize_ratio", 1.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
        return f"preprocessing.test.resize_ratio must be a positive number, found {ratio!r}"
    adaptation = meta.get("adaptation") or {}
    eq = adaptation.get("frechet") if isinstance(adaptation, dict) else None
    if not isinstance(adaptation, dict) or eq is not None and not (
            isinstance(eq, dict) and all(isinstance(eq.get(k), (int, float)) for k in ("scale", "shift"))):
        return "adaptation must be a dict, its frechet map a dict with a numeric scale and shift"
    rec = meta.get("data")
    if rec is not None and not (isinstance(rec, dict) and isinstance(rec.get("path"), str)
                                and isinstance(rec.get("manifest_sha256"), (str, type(None)))):
        return "data must be a dict of the data set's path and its manifest's SHA-256 (or None)"
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        return "classes must be a list of class names"
    cmap = meta.get("classes_map")
    if cmap is not None and not (isinstance(cmap, dict) and all(isinstance(k, str) and _index(v)
                                                                for k, v in cmap.items())):
        return "classes_map must map class names of the records to the model's output indices"
    if not isinstance(meta.get("pretrained") or {}, dict):
        return "pretrained must be a dict"
    return None


# --- The metadata, typed ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself (cf. timm's pretrained cfg: ``input_size``, ``test_input_size``,
    ``crop_pct``): the model, its classes, K_train and K_test with their augmentation specs and normalisation,
    the recipe, the data set it was trained or adapted on, and how it was adapted."""

    arch: str
    num_classes: int
    k_train: int  # on disk: train_res
    k_test: int  # on disk: test_res
    test_da: TestDA  # test DA at k_test, with the resize ratio the checkpoint is evaluated with
    train_da: TrainDA | TestDA | None = None  # the augmentation it was trained with (None: an early checkpoint)
    classes: tuple[str, ...] | None = None  # class names in label order (None: only their number is known)
    recipe: Recipe | None = None
    data: dict | None = None  # {'path': absolute, 'manifest_sha256': str or None} (data.data_record)
    adaptation: dict | None = None  # what `fixres-fast adapt` did (k_test, method, tune, frechet, ...)
    resumed_from: tuple = ()  # earlier settings of a run `train --resume-changed` continued
    #: {records' class name: the model's output index} where the records' classes are another set (--classes-map)
    classes_map: dict | None = None
    pretrained: dict | None = None  # plain weights this came from: {weights (absolute), sha256, arch, config}
    epoch: int | None = None
    results: dict = field(default_factory=dict)
    revision: str = "unknown"  # on disk: git
    version: str | None = None  # on disk: fixres_fast
    #: the data set an older checkpoint names without a record (adaptation.data or config.data); never written
    legacy_data: str | None = field(default=None, compare=False)

    def test_spec(self, k_test: int) -> TestDA:
        """Test DA at ``k_test`` with the checkpoint's resize ratio, normalisation and interpolation."""
        return dataclasses.replace(self.test_da, k_test=k_test)

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.test_da.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.test_da.std

    def adapted(self, key: str):
        """The adaptation record's ``key`` (e.g. 'k_test', 'tune', 'method'), or None (not adapted, or not recorded)."""
        return (self.adaptation or {}).get(key)

    @property
    def frechet(self) -> dict | None:
        """The Fréchet equalisation an adaptation attached after pooling ({scale, shift, ...}), or None."""
        return self.adapted("frechet")

    def to_dict(self) -> dict:
        """The plain dict written into the checkpoint, with the keys every earlier version wrote."""
        pre = {"test": {"mode": "test", **asdict(self.test_da)}, "mean": tuple(self.mean), "std": tuple(self.std)}
        if self.train_da is not None:
            pre = {"train": {"mode": mode_of(self.train_da), **asdict(self.train_da)}, **pre}
        doc = {"arch": self.arch, "num_classes": self.num_classes,
               "classes": None if self.classes is None else list(self.classes), "data": self.data,
               "resumed_from": list(self.resumed_from), "classes_map": self.classes_map,
               "pretrained": self.pretrained, "train_res": self.k_train, "test_res": self.k_test,
               "preprocessing": pre, "recipe": None if self.recipe is None else asdict(self.recipe),
               "epoch": self.epoch, "results": dict(self.results), "git": self.revision, "fixres_fast": self.version}
        if self.adaptation is not None:
            doc["adaptation"] = self.adaptation
        return doc

    @classmethod
    def from_dict(cls, meta: dict, config: dict | None = None) -> CheckpointMeta:
        """The metadata of a checkpoint (``meta``, checked by :func:`load`; any earlier version's layout), with
        the training ``config`` it carries, if any (an early checkpoint names its data set only there)."""
        pre = meta["preprocessing"]
        norm = {k: pre[k] for k in ("mean", "std") if k in pre}  # before issue 17: one normalisation beside the specs
        test = {"k_test": meta["test_res"], "resize_ratio": RESIZE_RATIO, **norm, **pre["test"]}
        recipe = meta.get("recipe")
        names = {f.name for f in dataclasses.fields(Recipe)}
        history = meta.get("resumed_from")
        legacy = (meta.get("adaptation") or {}).get("data") or (config if isinstance(config, dict) else {}).get("data")
        return cls(arch=meta["arch"], num_classes=meta["num_classes"], k_train=meta["train_res"],
                   k_test=meta["test_res"], test_da=_spec(test, "test"),
                   train_da=_spec({**norm, **pre["train"]}, "train") if isinstance(pre.get("train"), dict) else None,
                   classes=None if meta.get("classes") is None else tuple(meta["classes"]),
                   recipe=Recipe(**{k: v for k, v in recipe.items() if k in names}) if isinstance(recipe, dict) else None,
                   data=meta.get("data"), adaptation=meta.get("adaptation"),
                   resumed_from=tuple(history) if isinstance(history, list) else (),
                   classes_map=meta.get("classes_map"), pretrained=meta.get("pretrained"),
                   epoch=meta.get("epoch"), results=dict(meta.get("results") or {}),
                   revision=meta.get("git", "unknown"), version=meta.get("fixres_fast"),
                   legacy_data=legacy if isinstance(legacy, str) and legacy else None)


def _spec(d: dict, default_mode: str):
    """The TrainDA / TestDA / TestDA2 a preprocessing entry ({'mode', **fields}) describes; lists become tuples."""
    kind = MODES[d.get("mode", default_mode)]
    names = {f.name for f in dataclasses.fields(kind)}
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


def pixels_of(spec) -> dict:
    """The :class:`~fixres_fast.spec.Pixels` fields (mean, std, interpolation) of a spec, to build another with."""
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(Pixels)}


def meta_of(doc: dict) -> CheckpointMeta:
    """The typed metadata of a checkpoint :func:`load` returned."""
    return CheckpointMeta.from_dict(doc["meta"], doc.get("config"))


# --- A checkpoint against what it is used with: its own weights, the model, the data set ---------------


def load_weights(model: torch.nn.Module, doc: dict, path) -> None:
    """Load ``doc``'s weights into ``model`` (strict); a clear error where they do not fit the model its
    metadata describes."""
    meta, weights = meta_of(doc), doc["model"]
    if meta.classes is not None and len(meta.classes) != meta.num_classes:
        raise UserError(f"the checkpoint {path} is inconsistent: its metadata says {meta.num_classes} classes "
                        f"but lists {len(meta.classes)} class names; re-save it with matching metadata")
    own = model.state_dict()
    problems = [f"{k} has shape {tuple(weights[k].shape)}, the model's {tuple(v.shape)}"
                for k, v in own.items() if k in weights and weights[k].shape != v.shape]
    problems += [f"{k} is missing" for k in own if k not in weights]
    problems += [f"{k} is not in the model" for k in weights if k not in own]
    if problems:
        more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
        raise UserError(f"the checkpoint {path} is inconsistent: its metadata says a {meta.arch} with "
                        f"{meta.num_classes} classes, but its weights do not fit that model: "
                        f"{'; '.join(problems[:2])}{more}; re-save it with the metadata of the model it holds")
    model.load_state_dict(weights)


def model_from_checkpoint(doc: dict, device: torch.device, path="the checkpoint") -> torch.nn.Module:
    """The model a checkpoint (read from ``path``) describes, weights loaded, in eval mode, channels-last, with an
    adapted checkpoint's Fréchet equalisation attached after pooling."""
    from . import frechet
    from .models import build_model, classifier

    meta = meta_of(doc)
    model = build_model(meta.arch, meta.num_classes)
    load_weights(model, doc, path)
    model = model.to(device, memory_format=torch.channels_last).eval()
    if meta.frechet:
        frechet.attach(classifier(model), meta.frechet["scale"], meta.frechet["shift"])
    return model


def open_model(source, device: torch.device, log=print) -> tuple[torch.nn.Module, CheckpointMeta]:
    """(model, metadata) of the checkpoint at ``source`` (or of :class:`~fixres_fast.pretrained.Pretrained`
    weights): read safely, checked, on ``device`` in eval mode."""
    doc = load(source, log=log)
    return model_from_checkpoint(doc, device, source), meta_of(doc)


def data_for(meta: CheckpointMeta, data: str | None, path, classes_map: str | None = None) -> tuple[str, dict | None]:
    """(the data set, the classes map) to use with the checkpoint ``meta`` (read from ``path``). The data set:
    ``data`` when given, else the one it records (its path and manifest checked), else (older checkpoints)
    ``adaptation.data`` or ``config.data``. Its classes are checked against the checkpoint's: equal, or mapped
    onto the model's outputs by the ``classes_map`` file (--classes-map) or the map the checkpoint was adapted
    with; the map is returned as {records' class name: the model's output index}, None where they are equal."""
    from .data import check_classes, check_mapped, data_record, resolve_classes_map

    rec = meta.data
    if data:
        chosen = str(data)
    elif rec is not None:
        chosen = rec["path"]
        now = data_record(chosen) if Path(chosen).is_dir() else None
        if now is None:
            raise UserError(f"{path} was trained or adapted on {chosen}, which no longer exists (moved or deleted); "
                            "pass --data OUT with the data set's new place")
        if rec["manifest_sha256"] and now["manifest_sha256"] != rec["manifest_sha256"]:
            raise UserError(f"the records in {chosen} changed after {path} was trained or adapted on them (its "
                            "manifest.json's SHA-256 differs: converted again?); pass --data OUT to use them anyway")
    else:
        chosen = meta.legacy_data
        if chosen is None:
            raise UserError(f"{path} does not say which data set it was trained on; pass --data OUT")
    classes = None if meta.classes is None else list(meta.classes)
    if classes_map:
        return chosen, resolve_classes_map(classes_map, classes, meta.num_classes, chosen)
    if meta.classes_map:
        check_mapped(meta.classes_map, chosen, f"the classes map {path} was adapted with")
        return chosen, meta.classes_map
    check_classes(classes, meta.num_classes, chosen, f"the checkpoint {path}")
    return chosen, None
