"""FixRes adaptation (Sec. 4.2): fix a network trained at K_train for a larger test resolution K_test.

The default (the paper's) fine-tunes the classifier and the last BatchNorm before global pooling at
K_test, on the training set with test DA, everything else frozen. ``tune`` picks the classifier
alone, the last stage, or only the running statistics of the last BN (or of every BN), with no
labels; ``method='frechet'`` is the supplement's parametric equalisation (:mod:`fixres_fast.frechet`).

Gradients reach only the tuned parameters and no backward pass runs through the frozen trunk. With
test DA the trunk's output for an image never changes, so it is computed once (:func:`models.split_at`
cuts the model before the first tuned layer) and every epoch runs the tuned layers alone; with test
DA2 or train DA, or when the cache would exceed ``cache_mib``, each epoch streams through the frozen
trunk in eval mode. ``k_test=None`` (``--test-res auto``) adapts at each candidate K_test (multiples
of 32, Appendix B) on part of a slice of the training set, measures top-1 on the rest of that slice,
keeps the best, and reports Eq. 5's prediction beside it.

On several processes (torchrun; ``fixres-fast adapt --gpus N``; or the world ``fixres-fast run`` joined), every
process runs ``adapt`` and reads its shard of each split (records r, r + W, ...). The frozen trunk's pass, the cost,
is split over them: each caches its shard, and the shards are gathered back into stored order, so that every process
holds the whole cache and fits the tuned layers on it identically, as one process does (the same weights, up to the
float noise of the trunk's pass). The pooled vectors of the Fréchet fit are gathered the same way; bn-stats averages
the processes' statistics, each weighted by the images it saw; a streamed fine-tuning is data-parallel as training
is (B / W images a process, DDP averaging the gradients). The val top-1 is summed over the shards. Rank 0 alone logs
and writes the checkpoint; every process returns its result.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint, frechet, progress
from .artifacts import git_revision
from .checkpoint import CheckpointMeta, pixels_of
from .data import backend_for, check_res, data_record, label_map
from .distributed import (Dist, all_gather_rows, all_sum, data_parallel, from_main, from_rank_0, setup, teardown,
                          weighted_mean)
from .engine import autocast, evaluate_loader, limited, pooled_features, train_step
from .errors import UserError
from .geometry import RESOLUTION_STEP, k_test_calibrated, suggest_k_test
from .seeds import Stream, seed_for
from .models import TUNE, adaptation_mode, classifier, split_at, tuned_modules
from .pretrained import Pretrained
from .spec import (AREA_RANGE, AUTO_HOLDOUT, AUTO_IMAGES, AUTO_MIN_HELD_OUT, FINETUNE_LR_BATCH, adapt_epochs,
                   finetune_recipe, make_spec)
from .runtime import amp_dtype, resolve_device

AUGS, METHODS, BN_SCOPES = ("test", "test2", "train", "train-fixed"), ("finetune", "frechet"), ("last", "all")


@dataclass(frozen=True)
class AdaptConfig:
    checkpoint: str | Pretrained  # a checkpoint of ours, or plain pretrained weights
    k_test: int | None = None  # K_test (CLI: --test-res); None: choose it on a held-out slice of the training set ('auto')
    data: str | None = None  # a conversion's OUT folder; None: the one the checkpoint was trained on
    classes_map: str | None = None  # a file mapping the records' classes onto the model's (data.read_classes_map)
    tune: str = "bn+fc"  # fc | bn+fc | bn-stats | last-stage
    bn_scope: str = "last"  # bn-stats: 'last' BN before pooling, or 'all'
    aug: str = "test"  # fine-tuning augmentation: test DA (paper), test2 (test DA2), train DA or train-fixed
    method: str = "finetune"  # or 'frechet' (Appendix A.1)
    epochs: int | None = None  # None: the paper's 60 where the trunk is cached, else 10 (spec.adapt_epochs)
    batch_size: int = FINETUNE_LR_BATCH  # B (paper: 512)
    lr: float | None = None  # None: 0.008 * B / 512
    out: str | None = None  # None: CHECKPOINT-adaptedK.pt beside the checkpoint (pretrained weights: in the current folder)
    backend: str = "auto"
    device: str = "auto"
    amp: str = "auto"
    workers: int = 0
    on_corrupt: str = "stop"  # a damaged record: stop naming it, or skip and count it (LoaderConfig.on_corrupt)
    seed: int = 0
    cache: bool = True  # with test DA, run the frozen trunk once and cache what the tuned layers need
    cache_mib: int = 4096  # above this, stream through the trunk every epoch instead
    stats_images: int = 10_000  # training images read by bn-stats and the Fréchet fit
    auto_images: int = AUTO_IMAGES  # 'auto': training images per candidate (the last auto_holdout of them held out)
    auto_holdout: float = AUTO_HOLDOUT
    candidates: tuple[int, ...] = ()  # 'auto': K_test values; (): multiples of 32 from K_train to 2 K_train
    evaluate: bool = True  # top-1 on the validation split at K_test, before and after


@dataclass(frozen=True)
class _Job:
    """What every step needs: the options, the checkpoint's metadata, the data and the device."""
    cfg: AdaptConfig
    meta: CheckpointMeta
    data: str
    classes_map: dict | None  # {records' class: the model's output index}, None where they are the same classes
    device: torch.device
    dtype: torch.dtype | None
    backend: str
    d: Dist = Dist()  # the processes adapting together (each reads its shard of every split)

    def loader(self, k: int, mode: str = "test", training: bool = False, split: str = "train", batch_size: int = 0):
        """Images at resolution ``k`` with ``mode``'s DA (test DA with the checkpoint's resize ratio); in stored
        order unless ``training`` (shuffled, whole batches)."""
        from .loaders import LoaderConfig, make_loader

        spec = self.meta.test_spec(k) if mode == "test" else make_spec(mode, k, **pixels_of(self.meta.test_da))
        c = LoaderConfig(batch_size=batch_size or self.cfg.batch_size, device=str(self.device), rank=self.d.rank,
                         world_size=self.d.world_size, seed=self.cfg.seed, workers=self.cfg.workers, training=training,
                         on_corrupt=self.cfg.on_corrupt, label_map=label_map(self.classes_map, self.data))
        return make_loader(self.backend, spec, self.data, split, c)

    def share(self, limit: int | None) -> int | None:
        """How many of the split's first ``limit`` images are in this process's shard (None: all of it)."""
        return None if limit is None else len(range(self.d.rank, limit, self.d.world_size))

    def bar(self, loader, desc: str, limit: int | None = None):
        """``loader``'s batches, counted on a progress bar (rank 0's) of its first ``limit`` images."""
        return progress.images(loader, desc, int(min(limit or math.inf, loader.epoch_length)), enabled=self.d.main)

    @property
    def k_train(self) -> int:
        return self.meta.k_train


def adapt(cfg: AdaptConfig, log=print) -> dict:
    """Adapt ``cfg.checkpoint`` to K_test and save it; returns the new checkpoint's 'adaptation' metadata (with
    'out'). Run as is, or under torchrun on several processes: it joins torchrun's process group, or uses the one its
    caller joined (``fixres-fast run`` under torchrun), and destroys only a group it created."""
    d = setup(str(resolve_device(cfg.device)))
    try:
        check(cfg, d.world_size)
        return _adapt(cfg, d, log if d.main else (lambda *_: None))
    finally:
        teardown(d)


def check(cfg: AdaptConfig, processes: int = 1) -> None:
    """Refuse, in one line, options that cannot work on ``processes`` processes (the CLI asks before starting them)."""
    for name, value, allowed in (("--tune", cfg.tune, TUNE), ("--aug", cfg.aug, AUGS), ("--method", cfg.method, METHODS),
                                 ("--bn-scope", cfg.bn_scope, BN_SCOPES)):
        if value not in allowed:
            raise UserError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
    if (cfg.epochs is not None and cfg.epochs < 1) or cfg.batch_size < 2:
        raise UserError(f"expected --epochs >= 1 and --batch-size >= 2 (BN needs 2 images), got {cfg.epochs} and {cfg.batch_size}")
    if cfg.k_test is not None and cfg.k_test <= 0:
        raise UserError(f"--test-res must be a positive number of pixels (or 'auto'), got {cfg.k_test}")
    if _streams(cfg):  # where a too large cache makes it stream, it is checked then
        _per_process_batch(cfg, processes)


def _adapt(cfg: AdaptConfig, d: Dist, log) -> dict:
    model, meta = checkpoint.open_model(cfg.checkpoint, d.device, log)
    data, cmap = checkpoint.data_for(meta, cfg.data, cfg.checkpoint, cfg.classes_map)
    backend = backend_for(cfg.backend, d.device, data)
    job = _Job(cfg, meta, data, cmap, d.device, amp_dtype(cfg.amp, d.device), backend, d)
    tuned_modules(model, cfg.tune if cfg.method == "finetune" else "fc", cfg.bn_scope, job.k_train)  # fail early
    if d.world_size > 1:  # every process's shard must hold an image, or the gathers wait for ever; each says so
        from .loaders.source import open_source

        images = len(open_source(job.data, "train"))
        if images < d.world_size:
            raise UserError(f"{job.data}'s train split holds {images} images, fewer than the {d.world_size} processes "
                            "that would each adapt on a share of them: use fewer processes")
    t0 = time.perf_counter()
    auto = None
    if cfg.k_test is None:
        k_test, auto = choose_k_test(model, job, log)
    else:
        k_test = check_res(job.meta.test_spec(cfg.k_test), job.data, "--test-res")
    t_auto = time.perf_counter() - t0
    before = _val(model, job, k_test, "before", log)
    t1 = time.perf_counter()
    info = adapt_at(model, job, k_test, log)
    seconds = time.perf_counter() - t1
    after = _val(model, job, k_test, "after", log)
    if before[0] is not None:
        log(f"val top-1 at K_test={k_test}: {before[0]:.2f}% before, {after[0]:.2f}% after adaptation")
    result = {"k_test": k_test, "method": cfg.method, "tune": cfg.tune, "bn_scope": cfg.bn_scope, "aug": cfg.aug,
              "batch_size": cfg.batch_size, "lr": finetune_recipe(1, cfg.batch_size, cfg.lr).base_lr,
              "data": os.path.abspath(job.data), "from": os.path.abspath(str(cfg.checkpoint)), "seconds": seconds,
              "seconds_auto": t_auto, "auto": auto, "processes": d.world_size,
              "val_top1_before": before[0], "val_top1_after": after[0], "val_loss_before": before[1],
              "val_loss_after": after[1], **info}
    src = Path(str(cfg.checkpoint))
    here = src.parent if not isinstance(cfg.checkpoint, Pretrained) else Path()  # pretrained weights: maybe read-only
    out = Path(cfg.out) if cfg.out else here / f"{src.stem}-adapted{k_test}.pt"
    if d.main:
        checkpoint.save(out, model, replace(meta, k_test=k_test, test_da=meta.test_spec(k_test),
                                            revision=git_revision(), adaptation=result, data=data_record(job.data),
                                            classes_map=cmap))
    log(f"adapted in {seconds:.1f} s; wrote {out}")
    result = {**result, "out": str(out)}
    return result if d.world_size == 1 else from_main(result, None)  # rank 0's (its times), once it has saved


def _streams(cfg: AdaptConfig) -> bool:
    """Whether the fine-tuning streams through the trunk whatever the cache would hold (not test DA, or --no-cache)."""
    return cfg.method == "finetune" and cfg.tune != "bn-stats" and (cfg.aug != "test" or not cfg.cache)


def _per_process_batch(cfg: AdaptConfig, processes: int) -> int:
    """B / W: each process's share of a streamed fine-tuning's batch (data-parallel, as training is)."""
    if cfg.batch_size % processes:
        why = (f"--aug {cfg.aug}" if cfg.aug != "test" else "--no-cache" if not cfg.cache else
               f"a cache larger than --cache-mib {cfg.cache_mib}")
        raise UserError(f"--batch-size {cfg.batch_size} (over all processes) must divide by the {processes} processes: "
                        f"with {why} the fine-tuning streams through the trunk, B / {processes} images a process; "
                        f"use e.g. --batch-size {(cfg.batch_size // processes + 1) * processes}")
    return cfg.batch_size // processes


def _val(model, job: _Job, k: int, when: str, log) -> tuple[float | None, float | None]:
    """(top-1 %, mean cross-entropy) on the validation split at ``k`` (``when``: before or after adaptation, for the
    bar); Nones where the data set has no validation split (said once). Any other problem with the split (a missing
    file) is an error."""
    if not job.cfg.evaluate:
        return None, None
    from .loaders.source import MissingSplit

    try:
        loader = job.loader(k, split="val", batch_size=min(job.cfg.batch_size, 256))
    except MissingSplit:
        if when == "before":
            log(f"{job.data} has no validation split: top-1 before and after adaptation is not measured")
        return None, None
    top1, _, loss, _ = evaluate_loader(model, loader, job.d, job.dtype, f"val @ {k}, {when} adaptation")
    return top1, loss


# --- One adaptation at K_test ---------------------------------------------------------------------------


def adapt_at(model, job: _Job, k: int, log) -> dict:
    """Adapt ``model`` in place at K_test = ``k`` with the configured method; returns what was done."""
    cfg = job.cfg
    if cfg.method == "frechet":
        return {"frechet": fit_equalizer(model, job, k, log)}
    tuned = tuned_modules(model, cfg.tune, cfg.bn_scope, k)
    if cfg.tune == "bn-stats":
        share = job.share(cfg.stats_images)
        loader = job.bar(job.loader(k), f"BN statistics @ {k}", share)
        seen = reestimate_bn(model, tuned.values(), limited((((x,), y) for x, y in loader), share), job.dtype)
        weighted_mean([s for bn in tuned.values() for s in (bn.running_mean, bn.running_var)], seen, job.d)
        return {"tuned": list(tuned), "cached": False}
    cached = _cache(model, tuned, job, k, log) if cfg.aug == "test" and cfg.cache else None
    adaptation_mode(model, tuned.values())
    if cached is not None:  # the same cache on every process: each fits the same layers identically
        tail, inputs, labels = cached
        batches = lambda epoch: _shuffled(inputs, labels, cfg.batch_size, seed_for(cfg.seed, 0, epoch, Stream.ADAPT))
        steps = max(1, labels.shape[0] // cfg.batch_size)
    else:
        loader = job.loader(k, cfg.aug, training=True, batch_size=_per_process_batch(cfg, job.d.world_size))
        tail, steps = data_parallel(model, job.d), len(loader)

        def batches(epoch):
            loader.set_epoch(epoch)
            return (((x,), y) for x, y in loader)
    epochs = cfg.epochs or adapt_epochs(cached is not None)
    fit(tail, list(tuned.values()), batches, steps, epochs, job, log)
    if cached is None:  # each BN's running statistics are its own process's batches': rank 0's are saved
        from_rank_0([t for m in tuned.values() for t in m.state_dict().values()], job.d)
    model.eval()
    return {"tuned": list(tuned), "cached": cached is not None, "epochs": epochs}


def _cache(model, tuned, job: _Job, k: int, log, limit: int | None = None):
    """(tail, inputs, labels): the frozen trunk's outputs that the tuned layers need, over the training set
    (in stored order, the first ``limit`` images) with test DA at ``k``; None where they cannot be cached. Each
    process runs the trunk over its shard; every process gets the whole cache."""
    split = split_at(model, tuned, k)
    if split is None:
        log("streaming through the trunk every epoch: torch.fx cannot cut this model before its tuned layers")
        return None
    head, tail = split
    loader = job.loader(k)
    n = int(min(limit or math.inf, loader.sampler.num_samples))  # over all processes
    outs, labels = [], []
    model.eval()
    with torch.no_grad(), autocast(job.device.type, job.dtype):
        share = job.share(limit)
        for x, y in limited(job.bar(loader, f"caching the frozen trunk @ {k}", share), share):
            outs.append(head(x))
            labels.append(y)
            if len(outs) == 1:
                mib = sum(t.nelement() * t.element_size() for t in outs[0]) / y.shape[0] * n / 2 ** 20
                if mib > job.cfg.cache_mib:
                    log(f"streaming through the trunk every epoch: caching it would take {mib:.0f} MiB "
                        f"> --cache-mib {job.cfg.cache_mib}")
                    return None
    mine = [*(torch.cat(parts) for parts in zip(*outs)), torch.cat(labels)]
    *inputs, labels = _in_stored_order(loader, mine, job.d, n)
    shared = f"; each of {job.d.world_size} processes ran it over ~{mine[-1].shape[0]}" if job.d.world_size > 1 else ""
    log(f"cached the frozen trunk's output for {inputs[0].shape[0]} images at K_test={k} "
        f"({sum(t.nelement() * t.element_size() for t in inputs) / 2 ** 20:.0f} MiB{shared})")
    return tail, tuple(inputs), labels


def _in_stored_order(loader, tensors: list, d: Dist, n: int) -> list:
    """``tensors``, whose rows are the images this process read of ``loader``'s evaluation epoch (its shard: records
    r, r + W, ...), with every other process's, in stored order, the first ``n``: on every process what one process
    reading the split in order holds."""
    if d.world_size > 1:
        idx = loader.epoch_indices()
        idx = idx[loader.damaged.verdict.numpy()[idx] != 2][:tensors[0].shape[0]]  # less those --on-corrupt skip left out
        *tensors, index = all_gather_rows([*tensors, torch.from_numpy(idx)], d)
        order = index.argsort()
        tensors = [t[order] for t in tensors]
    return [t[:n] for t in tensors]


def _shuffled(inputs, labels, batch_size: int, seed: int):
    """Shuffled whole batches of cached tensors (a partial last batch is dropped, as a training loader does)."""
    n = labels.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(labels.device)
    bs = min(batch_size, n)
    for s in range(0, n - bs + 1, bs):
        idx = order[s:s + bs]
        yield tuple(t[idx] for t in inputs), labels[idx]


def fit(tail, modules, batches, steps: int, epochs: int, job: _Job, log) -> None:
    """SGD on the tuned ``modules`` through ``tail(*inputs)`` for ``epochs``, with the paper's fine-tuning recipe."""
    cfg = job.cfg
    recipe = finetune_recipe(epochs, cfg.batch_size, cfg.lr)
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=recipe.base_lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    scaler = torch.amp.GradScaler(job.device.type) if job.dtype == torch.float16 else None
    bar = progress.bar(recipe.epochs, "adapt", unit="epoch", enabled=job.d.main)
    for epoch in range(recipe.epochs):
        total, n = torch.zeros((), device=job.device), 0
        for i, (inputs, labels) in enumerate(batches(epoch)):
            for g in optimizer.param_groups:
                g["lr"] = recipe.lr_at(epoch + i / steps)
            total += train_step(tail, tuple(inputs), labels, optimizer, F.cross_entropy, job.dtype, scaler)
            n += 1
        loss_sum, steps_done = all_sum([total.item(), n], job.d)  # over the processes (a streamed fine-tuning's)
        last = loss_sum / max(steps_done, 1)
        bar.set_postfix(loss=f"{last:.4f}", lr=f"{recipe.lr_at(epoch):.2e}", refresh=False)
        bar.update()
    bar.close()
    log(f"fine-tuned {recipe.epochs} epochs: last epoch's loss {last:.4f}, lr {recipe.lr_at(recipe.epochs - 1):.2e}")


@torch.no_grad()
def reestimate_bn(tail, bns, batches, dtype=None) -> int:
    """Replace the running statistics of ``bns`` by their averages over ``batches`` (no labels, no gradients);
    returns the number of images."""
    adaptation_mode(tail, [])
    saved = {}
    for bn in bns:
        saved[bn] = bn.momentum
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the pass
        bn.train()
    images = 0
    try:
        for inputs, _ in batches:
            with autocast(inputs[0].device.type, dtype):
                tail(*inputs)
            images += inputs[0].shape[0]
    finally:
        for bn, momentum in saved.items():
            bn.momentum = momentum
        tail.eval()
    return images


# --- The Fréchet equalisation (Appendix A.1) -----------------------------------------------------------


def fit_equalizer(model, job: _Job, k: int, log, limit: int | None = None) -> dict:
    """Fit the pooled activations' Fréchet law at K_train and at ``k`` on training images (test DA) and
    attach the affine map between them before the classifier; returns its parameters."""
    limit = limit or job.cfg.stats_images
    ref = frechet.fit_frechet(_pooled(model, job, job.k_train, limit)[0].numpy())
    observed = frechet.fit_frechet(_pooled(model, job, k, limit)[0].numpy())
    scale, shift = frechet.equalizer(ref, observed)
    frechet.attach(classifier(model), scale, shift)
    sign = "-" if shift < 0 else "+"
    log(f"Fréchet fit (xi={frechet.XI}): mu, sigma = {ref[0]:.4f}, {ref[1]:.4f} at K_train={job.k_train}; "
        f"{observed[0]:.4f}, {observed[1]:.4f} at K_test={k}; map x -> {scale:.4f} x {sign} {abs(shift):.4f}")
    return {"xi": frechet.XI, "reference": ref, "observed": observed, "scale": scale, "shift": shift}


def _pooled(model, job: _Job, k: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled activations (N x C), labels) on the CPU of the first ``limit`` training images at ``k`` with test DA,
    every process's shard gathered."""
    loader, share = job.loader(k), job.share(limit)
    x, y = pooled_features(model, job.bar(loader, f"pooled activations @ {k}", share), share)
    x, y = _in_stored_order(loader, [x, y], job.d, min(limit, loader.sampler.num_samples))
    return x.cpu(), y.cpu()


# --- --test-res auto ---------------------------------------------------------------------------------


def candidates(job: _Job) -> list[int]:
    """Multiples of 32 from K_train (rounded down) to 2 K_train that the stored records allow."""
    k_train = job.k_train
    step = RESOLUTION_STEP  # candidates are multiples of it (Appendix B)
    ks = job.cfg.candidates or tuple(range(max(step, k_train // step * step), 2 * k_train + 1, step))
    allowed = []
    for k in ks:
        try:
            allowed.append(check_res(job.meta.test_spec(k), job.data, "--test-res"))
        except UserError:
            pass
    if not allowed:
        raise UserError(f"no candidate test resolution ({', '.join(map(str, ks))}) fits the stored records: "
                        "convert with a larger --max-side, or give --test-res")
    return allowed


def choose_k_test(model, job: _Job, log) -> tuple[int, dict]:
    """Adapt at each candidate on the first images of a training slice, measure top-1 on the rest, keep the best."""
    state = copy.deepcopy(model.state_dict())
    n, n_fit = _auto_slice(job)
    top1 = {}
    for k in candidates(job):
        top1[k] = _held_out_top1(model, job, k, n, n_fit, log)
        model.load_state_dict(state)
        classifier(model)._forward_pre_hooks.clear()  # a Fréchet map attached by the trial
        log(f"auto: K_test={k}: top-1 {top1[k]:.2f}% on the {n - n_fit} held-out training images")
    best = max(top1, key=top1.get)
    area = getattr(job.meta.train_da, "area_range", AREA_RANGE)  # train DA's; AREA_RANGE for other modes
    ratio = job.meta.test_spec(best).resize_ratio
    eq5 = suggest_k_test(job.k_train, ratio, tuple(area), RESOLUTION_STEP)
    log(f"auto: K_test = {best} (best on the held-out slice); Eq. 5 predicts {eq5} "
        f"(calibrated {k_test_calibrated(job.k_train, ratio, tuple(area)):.1f}, rounded to a multiple of {RESOLUTION_STEP})")
    return best, {"top1": top1, "chosen": best, "eq5": eq5, "images": n, "held_out": n - n_fit}


def _auto_slice(job: _Job) -> tuple[int, int]:
    """(images, images fitted on): the first min(--auto-images, the split's size) training images, the last
    --auto-holdout of them held out; refused when fewer than AUTO_MIN_HELD_OUT would be held out (spec.py: why)."""
    from .loaders.source import open_source

    cfg = job.cfg
    if cfg.auto_images < 1 or not 0 < cfg.auto_holdout < 1:
        raise UserError(f"expected --auto-images >= 1 and 0 < --auto-holdout < 1, got {cfg.auto_images} and {cfg.auto_holdout}")
    available = len(open_source(job.data, "train"))
    n = min(cfg.auto_images, available)
    held_out = round(n * cfg.auto_holdout)
    if held_out < AUTO_MIN_HELD_OUT:
        raise UserError(f"--test-res auto would measure each candidate on {held_out} held-out training images "
                        f"(--auto-holdout {cfg.auto_holdout:g} of {n}; the train split holds {available}), but it needs "
                        f"at least {AUTO_MIN_HELD_OUT} to tell candidates apart; raise --auto-holdout or --auto-images "
                        "if the split allows, or give --test-res")
    return n, n - held_out


def _held_out_top1(model, job: _Job, k: int, n: int, n_fit: int, log) -> float:
    """Top-1 at ``k`` on training images n_fit..n after adapting on the first ``n_fit``."""
    cfg = job.cfg
    if cfg.method == "frechet":
        fit_equalizer(model, job, k, log, limit=n_fit)
        x, y = _pooled(model, job, k, n)
        return _top1(classifier(model), (x[n_fit:].to(job.device),), y[n_fit:].to(job.device))
    tuned = tuned_modules(model, cfg.tune, cfg.bn_scope, k)
    cached = _cache(model, tuned, job, k, log, limit=n)
    if cached is None:
        raise UserError("--test-res auto needs the tuned layers' inputs cached (a model torch.fx can trace, and "
                        "--cache-mib large enough for --auto-images); give --test-res instead")
    tail, inputs, labels = cached
    fit_part = tuple(t[:n_fit] for t in inputs), labels[:n_fit]
    if cfg.tune == "bn-stats":
        reestimate_bn(tail, tuned.values(), _shuffled(*fit_part, cfg.batch_size, seed_for(cfg.seed, 0, 0, Stream.ADAPT)),
                      job.dtype)
    else:
        adaptation_mode(model, tuned.values())
        fit(tail, list(tuned.values()), lambda e: _shuffled(*fit_part, cfg.batch_size, seed_for(cfg.seed, 0, e, Stream.ADAPT)),
            max(1, n_fit // cfg.batch_size), cfg.epochs or adapt_epochs(True), job, lambda *_: None)
        model.eval()
    return _top1(tail, tuple(t[n_fit:] for t in inputs), labels[n_fit:])


@torch.no_grad()
def _top1(tail, inputs, labels, batch_size: int = 256) -> float:
    tail.eval()
    hits = sum((tail(*(t[s:s + batch_size] for t in inputs)).argmax(1) == labels[s:s + batch_size]).sum().item()
               for s in range(0, labels.shape[0], batch_size))
    return 100 * hits / max(labels.shape[0], 1)
