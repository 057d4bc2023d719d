"""Training at K_train: channels-last, mixed precision, the paper's recipe, torch.distributed.

One process per device. ``train(cfg)`` joins the process group torchrun set up (if any), builds
the model and the loaders, and runs the epochs; after each it evaluates at the epoch's train resolution
(and at ``eval_res``), appends a line to ``metrics.jsonl`` and writes ``last.pt`` (and ``best.pt``)
atomically. K_train may change over the epochs (``spec.ResolutionSchedule``, progressive resizing): each epoch
trains at its own, and a checkpoint records the K_train of the last epoch it trained. SIGTERM or Ctrl-C writes a
resumable checkpoint (with the interrupted epoch's sums so far, so that its metrics line still covers the whole
epoch) and the CLI exits 143 or 130, as a job killed by the signal would; ``resume=True`` continues from it
exactly; a non-finite loss stops the run and leaves the last good checkpoint untouched.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from . import __version__, checkpoint
from .artifacts import git_revision
from .data import backend_for, check_res, data_record, dataset_info
from .distributed import Dist, all_sum, barrier, setup, teardown
from .errors import UserError
from .engine import evaluate_loader, train_step
from .models import build_model
from .seeds import Stream, seed_for
from .runtime import amp_dtype, resolve_device
from .spec import SCHEDULES, SCHEDULES_BY_EPOCHS, Recipe, ResolutionSchedule, TestDA, k_train_at, k_trains, make_spec

CHECK_EVERY = 20  # steps between checks of the loss and of stop requests (each costs a device sync)


@dataclass(frozen=True)
class TrainConfig:
    data: str  # a conversion's OUT folder (or an ImageFolder tree)
    out: str = "runs/train"
    arch: str = "resnet50"
    k_train: int | ResolutionSchedule = 224  # K_train (CLI: --res), or K_train over the epochs (progressive resizing)
    recipe: Recipe = field(default_factory=Recipe)
    aug: str = "train"  # train DA (paper); 'test', 'test2' or 'train-fixed' (Appendix D) for ablations
    backend: str = "auto"  # dali | ffcv | torch | auto
    device: str = "auto"  # cuda | cpu | auto
    amp: str = "auto"  # bf16 where supported, fp16 (GradScaler), off
    compile: bool = False
    eval_res: tuple[int, ...] = ()  # further test resolutions evaluated after each epoch
    resume: bool = False
    seed: int = 0
    workers: int = 0
    on_corrupt: str = "stop"  # a damaged record: stop naming it, or skip and count it (LoaderConfig.on_corrupt)
    tensorboard: bool = False  # also write each epoch's metrics as TensorBoard scalars under OUT/tensorboard
    resume_changed: bool = False  # resume although settings that change the result differ (both are recorded)
    #: start from these weights (fine-tuning, transfer): a checkpoint of ours or pretrained.Pretrained weights of
    #: ``arch``; the classifier is new where their classes differ; their mean, std and interpolation are kept
    init: object = None

    def __post_init__(self):
        if self.resume_changed and not self.resume:
            raise UserError("--resume-changed continues a run from OUT/last.pt with new settings; add --resume")


#: The CLI flags of TrainConfig fields whose names differ from the flag (the paper's names in the config, the
#: users' flags on the command line); earlier checkpoints' configs used the flag's name as the field's.
FLAGS = {"k_train": "res"}

#: TrainConfig fields that say how a run executes, not what it learns: --resume may change them freely.
#: (recipe.epochs too, unless the lr schedule's curve depends on it, SCHEDULES_BY_EPOCHS: extending a run is resuming.)
RESUME_NEUTRAL = ("out", "resume", "resume_changed", "workers", "tensorboard", "device", "backend", "amp", "compile",
                  "eval_res")


def param_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    if not recipe.no_bn_weight_decay:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": recipe.weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.SGD:
    """The recipe's SGD; on CUDA, one fused kernel updates each parameter group."""
    return torch.optim.SGD(param_groups(model, recipe), lr=recipe.base_lr, momentum=recipe.momentum,
                           fused=True if device.type == "cuda" else None)


class _StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks, so a resumable checkpoint gets written."""

    def __init__(self):
        self.requested, self.signum = False, None
        self._old = {s: signal.signal(s, self._set) for s in (signal.SIGTERM, signal.SIGINT)}

    def _set(self, signum, frame):
        self.requested, self.signum = True, signum

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def _check(cfg: TrainConfig, d: Dist) -> None:
    r = cfg.recipe
    ks = k_trains(cfg.k_train, r.epochs)  # every K_train an epoch trains at
    if any(x <= 0 for x in (*ks, *cfg.eval_res)):
        raise UserError(f"resolutions must be positive numbers of pixels, got --res {cfg.k_train} --eval-res {cfg.eval_res}")
    if r.batch_size % d.world_size:
        raise UserError(f"--batch-size {r.batch_size} (over all processes) must divide by the {d.world_size} processes")
    if r.schedule not in SCHEDULES:
        raise UserError(f"unknown --schedule {r.schedule!r}; choose one of {', '.join(SCHEDULES)}")
    for k in ks:
        check_res(make_spec(cfg.aug, k), cfg.data, "--res" if k == cfg.k_train else f"--res {cfg.k_train}'s K_train")
    for k in cfg.eval_res:
        check_res(TestDA(k_test=k), cfg.data, "--eval-res")


def _check_epoch(loader, cfg: TrainConfig, d: Dist) -> None:
    """Refuse an epoch without one whole batch (a training loader drops the partial last batch): it would train on
    nothing and still write checkpoints."""
    if len(loader):
        return
    r, sampler = cfg.recipe, loader.sampler
    per_rank, n = len(sampler), sampler.num_samples
    procs = f" over {d.world_size} processes" if d.world_size > 1 else ""
    if per_rank == 0:
        raise UserError(f"the train split holds {n} images: too few for --repeats {r.repeats}{procs} (each image drawn is "
                        f"read {r.repeats} times); lower --repeats or use more images")
    works = 2 ** int(math.log2(per_rank)) * d.world_size
    raise UserError(f"--batch-size {r.batch_size} is larger than an epoch: this rank reads {per_rank} images per epoch "
                    f"({sampler.num_distinct} distinct images x --repeats {r.repeats}{procs}, of the {n} in the train "
                    f"split), so not one whole batch would be trained on; use --batch-size {works} "
                    f"(at most {per_rank * d.world_size})")


def pixels(init: dict | None) -> dict:
    """Mean, std and interpolation of every spec of the run: those of the ``cfg.init`` document ``init`` (read
    once, by :class:`_Run`), else the defaults."""
    return {} if init is None else checkpoint.pixels_of(checkpoint.meta_of(init).test_da)


def metadata(cfg: TrainConfig, classes: list[str], epoch: int, results: dict, data: dict,
             resumed_from: list = (), pix: dict | None = None) -> checkpoint.CheckpointMeta:
    """What a checkpoint of this run says about itself after training (some of) epoch ``epoch``: K_train is that
    epoch's; also its data set (``data.data_record``) and, where a resume changed settings, the earlier ones
    (``resumed_from``); ``pix``: :func:`pixels`."""
    pix = pix or {}
    k = k_train_at(cfg.k_train, epoch)
    return checkpoint.CheckpointMeta(
        arch=cfg.arch, num_classes=len(classes), classes=tuple(classes), data=data, resumed_from=tuple(resumed_from),
        k_train=k, k_test=k, train_da=make_spec(cfg.aug, k, **pix), test_da=TestDA(k_test=k, **pix),
        recipe=cfg.recipe, epoch=epoch, results=results,
        revision=git_revision(), version=__version__)


def train(cfg: TrainConfig, log=print) -> dict:
    """Train; returns the last epoch's metrics, or {'interrupted': True, 'signal', 'epoch', 'step'} after a stop
    request. Run as is, or under torchrun for several processes: it joins torchrun's process group, or uses the one
    its caller joined (``fixres-fast run`` under torchrun), and destroys only a group it created."""
    d = setup(str(resolve_device(cfg.device)))
    try:
        return _train(cfg, d, log if d.main else (lambda *_: None))
    finally:
        teardown(d)


def _train(cfg: TrainConfig, d: Dist, log) -> dict:
    _check(cfg, d)
    run = _Run(cfg, d, log)
    results = {}
    try:
        loaders = _Loaders(cfg, d, run.pixels)
        for epoch in range(run.state["epoch"], cfg.recipe.epochs):
            k = k_train_at(cfg.k_train, epoch)
            done = run.epoch(loaders.train(k), epoch, k)
            if not done:  # a stop was requested: the CLI exits with 128 + the signal's number, as a killed job would
                return {"interrupted": True, "signal": run.stop.signum, "epoch": epoch, "step": run.state["step"]}
            results = {}
            for res in dict.fromkeys((k, *cfg.eval_res)):
                top1_top5 = evaluate_loader(run.net, loaders.val(res), d, run.dtype, f"val @ {res}")[:2]
                results[f"top1@{res}"], results[f"top5@{res}"] = top1_top5
            results.update(epoch=epoch, k_train=k, lr=cfg.recipe.lr_at(epoch), train_loss=done["loss"],
                           train_img_s=done["img_s"])
            run.end_of_epoch(epoch, results)
    finally:
        run.stop.restore()
    return results


class _Loaders:
    """The train loader at the epoch's K_train and the val loaders at K_train and ``eval_res``, each built when first
    asked for and kept while asked for again (a schedule's K_train only grows: a loader it has left is dropped)."""

    def __init__(self, cfg: TrainConfig, d: Dist, pix: dict):
        from .loaders import LoaderConfig

        self.cfg, self.d, self.pix = cfg, d, pix
        self.backend = backend_for(cfg.backend, d.device, cfg.data)
        per_proc = cfg.recipe.batch_size // d.world_size
        self.common = LoaderConfig(batch_size=per_proc, device=str(d.device), rank=d.rank, world_size=d.world_size,
                                   seed=cfg.seed, workers=cfg.workers, on_corrupt=cfg.on_corrupt)
        self.built = {}  # (split, resolution) -> loader

    def train(self, k: int):
        if ("train", k) not in self.built:
            self._drop(lambda split, res: split == "train" or res not in (k, *self.cfg.eval_res))
            self._make("train", k, make_spec(self.cfg.aug, k, **self.pix),
                       replace(self.common, repeats=self.cfg.recipe.repeats, training=True))
            _check_epoch(self.built["train", k], self.cfg, self.d)
        return self.built["train", k]

    def val(self, k: int):
        if ("val", k) not in self.built:
            self._make("val", k, TestDA(k_test=k, **self.pix), replace(self.common, training=False))
        return self.built["val", k]

    def _make(self, split: str, k: int, spec, config) -> None:
        from .loaders import make_loader

        self.built[split, k] = make_loader(self.backend, spec, self.cfg.data, split, config)

    def _drop(self, unneeded) -> None:
        for key in [key for key in self.built if unneeded(*key)]:
            del self.built[key]


def initialise(model: nn.Module, cfg: TrainConfig, log, doc: dict | None = None) -> None:
    """Load ``cfg.init``'s weights (``doc``, where the caller has read it) into ``model``: all of them where the
    classes agree; else all but the classifier (transfer learning: the new classifier keeps its random
    initialisation)."""
    from .models import classifier

    doc = checkpoint.load(cfg.init, log=log) if doc is None else doc
    meta = checkpoint.meta_of(doc)
    if meta.arch.removeprefix("timm/").split(".")[0] != cfg.arch.removeprefix("timm/").split(".")[0]:
        raise UserError(f"--init {cfg.init} holds a {meta.arch}, but --arch is {cfg.arch}; pass --arch {meta.arch}")
    layer = classifier(model)
    head = {id(m): n for n, m in model.named_modules()}[id(layer)]
    weights = doc["model"]
    if meta.num_classes != layer.out_features:
        weights = {k: v for k, v in weights.items() if not k.startswith(head + ".")}
        log(f"--init: {cfg.init}'s {meta.num_classes}-class classifier ({head}) replaced by a new one for the data's "
            f"{layer.out_features} classes; every other weight loaded")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith(head + ".")]
    if missing or unexpected:
        raise UserError(f"--init {cfg.init} does not fit {cfg.arch}: {', '.join((missing + unexpected)[:3])}; check --arch")


def _tensorboard(logdir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(logdir))


class _Run:
    """One process's training state: model (and its DDP / compiled wrapper), optimizer, AMP, progress."""

    def __init__(self, cfg: TrainConfig, d: Dist, log):
        self.cfg, self.d, self.log = cfg, d, log
        num_classes, self.classes = dataset_info(cfg.data)
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed_for(cfg.seed, 0, 0, Stream.INIT))  # the same initial weights on every rank
        self.model = build_model(cfg.arch, num_classes)
        init = None if cfg.init is None else checkpoint.load(cfg.init, log=log)  # read once: pixels and weights
        self.pixels = pixels(init)
        if init is not None and not cfg.resume:
            initialise(self.model, cfg, log, init)
        self.model = self.model.to(d.device, memory_format=torch.channels_last)
        r = cfg.recipe
        if d.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # one input shape per K_train: let cuDNN time its kernels
        self.optimizer = make_optimizer(self.model, r, d.device)
        self.dtype = amp_dtype(cfg.amp, d.device)
        self.scaler = torch.amp.GradScaler(d.device.type) if self.dtype == torch.float16 else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=r.label_smoothing)
        self.state = {"epoch": 0, "step": 0, "best_top1": -1.0}
        self.data, self.resumed_from = data_record(cfg.data), []
        if cfg.resume:
            self.resume(self.out / "last.pt", num_classes)
        self.net = self.model
        if d.world_size > 1:
            ids = [d.device.index] if d.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net, dynamic=False)  # one shape per K_train (a schedule's: one compile each)
        self.stop = _StopRequest()
        self.board = _tensorboard(self.out / "tensorboard") if cfg.tensorboard and d.main else None

    def epoch(self, loader, epoch: int, k_train: int) -> dict | None:
        """Train one epoch at ``k_train`` (``loader``'s); returns {'loss', 'img_s'} over the whole epoch (a resumed one included: the sums of
        its steps before the stop are in the state), or None when a stop was requested (checkpoint written)."""
        cfg, d, state = self.cfg, self.d, self.state
        self.k_train = k_train
        loader.set_epoch(epoch)
        torch.manual_seed(seed_for(cfg.seed, d.rank, epoch, Stream.TRAIN))  # augmentations drawn from torch's RNG
        self.net.train()
        skip, n, batch = state["step"], len(loader), cfg.recipe.batch_size
        total = torch.zeros((), device=d.device)
        bar = tqdm(total=n * batch, initial=skip * batch, desc=f"epoch {epoch}", unit="img", disable=not d.main,
                   dynamic_ncols=True, mininterval=1.0)
        t0, seen = time.perf_counter(), 0
        for i, (images, labels) in enumerate(loader):
            if i < skip:  # resuming mid-epoch: the same batches, already learnt from; the clock starts after them
                t0 = time.perf_counter()
                continue
            total += self.step(images, labels, epoch + i / n)
            seen += labels.shape[0] * d.world_size
            bar.update(labels.shape[0] * d.world_size)
            checking = (i + 1) % CHECK_EVERY == 0 or i + 1 == n
            if checking and self.should_stop(total, epoch, i, seen, time.perf_counter() - t0):
                bar.close()
                return None
        bar.close()
        loss_sum = all_sum([total.item()], d)[0] + state.get("epoch_loss_sum", 0.0)
        images = seen + state.get("epoch_images", 0)
        seconds = time.perf_counter() - t0 + state.get("epoch_seconds", 0.0)
        steps = n - skip + state.get("epoch_images", 0) // batch  # every step trains on B images over the processes
        state.update(step=0, epoch_loss_sum=0.0, epoch_images=0, epoch_seconds=0.0)
        return {"loss": loss_sum / max(steps, 1) / d.world_size, "img_s": images / seconds}

    def step(self, images, labels, epoch: float) -> torch.Tensor:
        for g in self.optimizer.param_groups:
            g["lr"] = self.cfg.recipe.lr_at(epoch)
        try:
            return train_step(self.net, images, labels, self.optimizer, self.criterion, self.dtype, self.scaler)
        except torch.OutOfMemoryError:
            raise UserError(f"CUDA out of memory at --batch-size {self.cfg.recipe.batch_size} ({labels.shape[0]} "
                            f"per GPU) and --res {self.k_train}: lower one of them") from None

    def should_stop(self, total: torch.Tensor, epoch: int, i: int, seen: int, seconds: float) -> bool:
        """Check the loss, and stop requests on any process (one sync for both). On a stop, write a checkpoint that
        resumes after step ``i``, with the epoch's sums so far (loss over the processes, images, seconds) in its state."""
        loss, stopping = all_sum([total.item(), float(self.stop.requested)], self.d)
        if not math.isfinite(loss):
            raise UserError(f"the loss became {loss} in epoch {epoch}, step {i}: training diverged. "
                            f"{self.out / 'last.pt'} (the last good checkpoint) is intact; lower --lr or use --amp off")
        if stopping:
            s = self.state
            s.update(step=i + 1, epoch_loss_sum=s.get("epoch_loss_sum", 0.0) + loss,
                     epoch_images=s.get("epoch_images", 0) + seen, epoch_seconds=s.get("epoch_seconds", 0.0) + seconds)
            self.save(self.out / "last.pt", epoch, {})
            why = signal.Signals(self.stop.signum).name if self.stop.signum else "a stop request on another process"
            self.log(f"stopped by {why} at epoch {epoch}, step {i + 1}; resume with --resume")
        return bool(stopping)

    def end_of_epoch(self, epoch: int, results: dict) -> None:
        top1 = results[f"top1@{results['k_train']}"]  # best.pt: the best top-1 at the epoch's own K_train
        is_best = top1 > self.state["best_top1"]
        self.state.update(epoch=epoch + 1, step=0, best_top1=max(top1, self.state["best_top1"]))
        self.save(self.out / "last.pt", epoch, results)
        if self.d.main:
            if is_best:
                checkpoint.save(self.out / "best.pt", self.model, self.metadata(epoch, results))
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(results) + "\n")
            if self.board is not None:
                for name, value in results.items():
                    if isinstance(value, (int, float)) and name != "epoch":
                        self.board.add_scalar(name, value, epoch)
                self.board.flush()
        shown = {k: v for k, v in results.items() if len(self.classes) > 5 or not k.startswith("top5@")}  # else 100%
        self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
        barrier(self.d)

    def metadata(self, epoch: int, results: dict) -> checkpoint.CheckpointMeta:
        return metadata(self.cfg, self.classes, epoch, results, self.data, self.resumed_from, self.pixels)

    def save(self, path: Path, epoch: int, results: dict) -> None:
        if self.d.main:
            checkpoint.save(path, self.model, self.metadata(epoch, results),
                            optimizer=self.optimizer.state_dict(), state=dict(self.state), config=asdict(self.cfg),
                            scaler=self.scaler.state_dict() if self.scaler else None)
        barrier(self.d)

    def resume(self, path: Path, num_classes: int) -> None:
        """Continue from ``path`` (OUT/last.pt): refused where the settings that change the result differ,
        unless ``cfg.resume_changed``; then the earlier settings are kept in ``meta['resumed_from']``."""
        cfg = self.cfg
        if not path.is_file():
            raise UserError(f"--resume: no checkpoint at {path}; start without --resume")
        doc = checkpoint.load(path, map_location=self.d.device)
        meta = checkpoint.meta_of(doc)
        if meta.num_classes != num_classes or meta.arch != cfg.arch:
            raise UserError(f"{path} holds a {meta.arch} with {meta.num_classes} classes, but this run is a "
                            f"{cfg.arch} on {num_classes} classes; use another --out, or matching --arch/--data")
        lacking = [k for k in ("optimizer", "state", "config") if not isinstance(doc.get(k), dict)]
        if lacking or not all(_nonnegative(doc["state"].get(k)) for k in ("epoch", "step")):
            raise UserError(f"{path} cannot be resumed: it lacks a training state ({', '.join(lacking) or 'state'}); "
                            "only the last.pt `fixres-fast train` writes can be. Use another --out")
        changed = resume_changes(doc["config"], meta.data, cfg, self.data)
        if changed and not cfg.resume_changed:
            raise UserError(f"--resume: {path} was trained with other settings: {_listed(changed)}. Resume with the "
                            "same ones, use another --out, or add --resume-changed to continue with the new settings "
                            "(the checkpoint then records both)")
        checkpoint.load_weights(self.model, doc, path)
        self._load_optimizer(doc, path)
        if self.scaler is not None and doc.get("scaler"):
            self.scaler.load_state_dict(doc["scaler"])
        self.state = dict(doc["state"])
        self.resumed_from = list(meta.resumed_from)
        if changed:
            self.resumed_from.append({"epoch": self.state["epoch"], "step": self.state["step"],
                                      "config": doc["config"], "data": meta.data,
                                      "changed": {k: list(v) for k, v in changed.items()}})
            self.log(f"--resume-changed: continuing with {_listed(changed)}")
        self.log(f"resuming from {path}: epoch {self.state['epoch']}, step {self.state['step']}")

    def _load_optimizer(self, doc: dict, path: Path) -> None:
        """The saved momentum buffers, under this run's hyper-parameters (lr is set at every step)."""
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(doc["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise UserError(f"the checkpoint {path} is inconsistent: its optimizer state does not fit this run's "
                            f"parameter groups ({e}); use another --out") from None
        for group, settings in zip(self.optimizer.param_groups, fresh):
            group.update(settings)


def _nonnegative(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def resume_changes(old: dict, old_data: dict | None, cfg: TrainConfig, data: dict) -> dict:
    """{option: (old, new)} for each setting that changes what a run learns (all but RESUME_NEUTRAL) and differs
    between the checkpoint's config (and data set record) and ``cfg`` (and ``data``). Options an older
    checkpoint did not record are not compared."""
    new = asdict(cfg)
    old = dict(old)
    for field_name, flag in FLAGS.items():  # an earlier version's config: the field under the flag's name
        if flag in old and field_name not in old:
            old[field_name] = old.pop(flag)
    for side in (old, new):  # a resolution schedule (asdict's dict) as the --res text that gives it
        if isinstance(side.get("k_train"), dict):
            side["k_train"] = str(ResolutionSchedule(**side["k_train"]))
    old_recipe = old["recipe"] if isinstance(old.get("recipe"), dict) else {}
    new_recipe = new.pop("recipe")
    by_epochs = bool(set(SCHEDULES_BY_EPOCHS) & {old_recipe.get("schedule"), new_recipe["schedule"]})
    pairs = [(k, old[k], v) for k, v in new.items() if k not in RESUME_NEUTRAL + ("data",) and k in old]
    pairs += [(k, old_recipe[k], v) for k, v in new_recipe.items() if k in old_recipe and (k != "epochs" or by_epochs)]
    old_data = old_data or {"path": os.path.abspath(str(old.get("data", cfg.data))), "manifest_sha256": None}
    pairs.append(("data", old_data["path"], data["path"]))
    if old_data["manifest_sha256"] and old_data["path"] == data["path"]:
        pairs.append(("data manifest SHA-256", old_data["manifest_sha256"], data["manifest_sha256"]))
    return {f"--{FLAGS.get(k, k).replace('_', '-')}" if " " not in k else k: (a, b) for k, a, b in pairs if _differ(a, b)}


def _differ(a, b) -> bool:
    return (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b)


def _listed(changed: dict) -> str:
    return ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
