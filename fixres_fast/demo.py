"""``fixres-fast demo``: the method end to end on small data sets that build offline, on a CPU in minutes.

1. Converters: an ImageNet-shaped tree of 20 real photos plus the awkward files real data sets hold
   (CMYK, greyscale, PNG data, EXIF rotation, truncated, empty, garbage) is converted to .beton and
   RecordIO, and every record is read back through FFCV and DALI.
2. FixRes: real Fashion-MNIST objects pasted at random sizes on crops of real photos (64 px, objects
   of varied apparent size, :func:`sampledata.composite_tree`) are converted; a small CNN is trained at
   K_train = 32 (train DA), evaluated at several test resolutions, adapted at K_test = 64 (the paper's
   BN+fc fine-tuning, test DA), and evaluated again; a second network trained at K_test itself is the
   baseline FixRes saves compute against. The results are the paper's Fig. 5 (accuracy against test
   resolution, before and after adaptation), the time adaptation took as a fraction of training, and
   the pooled activations' distribution at each test resolution before and after adaptation (Fig. 3, 4).

The training recipe is the benchmark's (docs/BENCHMARKS.md, "Adaptation"), not the paper's 120 epochs:
8 epochs of cosine schedule without repeated augmentation suit 4000 images and a few minutes. The
adaptation is the paper's (60 epochs, lr 0.008 B/512 with B = 64), made cheap by caching the frozen trunk.
"""
from __future__ import annotations

# The demo is the top of the package: it orchestrates the jobs (convert, train, adapt, evaluate, analyze), so it
# is the one module that imports them; no job imports another.

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .records import Manifest
from .spec import Recipe


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    k_train: int = 32  # train resolution of the FixRes network
    k_test: int = 64  # test resolution: the composites' size
    n_train: int = 4000
    n_val: int = 2000
    epochs: int = 8
    adapt_epochs: int | None = None  # None: the paper's 60 (the trunk is cached)
    baseline: bool = True  # also train at K_test, the cost FixRes avoids
    workers: int = 0
    seed: int = 0

    def recipe(self) -> Recipe:
        return Recipe(epochs=self.epochs, batch_size=64, lr=0.1, schedule="cosine", warmup_epochs=1,
                      weight_decay=5e-4, repeats=1)


def demo(cfg: DemoConfig = DemoConfig(), log=print) -> dict:
    """Run both parts; returns the summary written to OUT/summary.json."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"config": asdict(cfg), "converters": converters(out, cfg.workers, log)}
    summary["fixres"] = fixres(out, cfg, log)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    log(report(summary["fixres"]))
    log(f"wrote {out / 'summary.json'}, {out / 'evaluate'} (accuracy.png: Fig. 5), {out / 'activations'} "
        f"(activations.png: Fig. 3 and 4) and the checkpoints under {out}")
    return summary


def converters(out: Path, workers: int, log) -> dict:
    """Part 1: real photos and bad files -> .beton + RecordIO -> read back through FFCV and DALI."""
    from .convert import ConvertConfig, convert, verify
    from .sampledata import imagenet_tree

    log("== 1. converters: an ImageNet-shaped tree of real photos and bad files")
    src = out / "imagenet-sample"
    if src.exists():
        shutil.rmtree(src)
    expected = imagenet_tree(src)
    log(f"built {src}: {expected['train']} train + {expected['val']} val usable images, "
        f"{len(expected['skipped'])} bad or unannotated files")
    convert(ConvertConfig(layout="imagenet", src=str(src), out=str(out / "records"), workers=workers, shards=2,
                          overwrite=True), log=log)
    splits = Manifest.read(out / "records").splits
    report_ = verify(out / "records", workers=workers, log=log)
    return {"records": {name: s.count for name, s in splits.items()},
            "skipped": {name: len(s.skipped) for name, s in splits.items()}, "verified": report_}


def fixres(out: Path, cfg: DemoConfig, log) -> dict:
    """Part 2: train at K_train, adapt at K_test, evaluate both (and a network trained at K_test) at several K."""
    from .adapt import AdaptConfig, adapt
    from .analysis.activations import ActivationsConfig, pooled_activations, report_lines, write_activations
    from .convert import ConvertConfig, convert
    from .evaluate import EvalConfig, evaluate, write_results
    from .sampledata import composite_tree
    from .train import TrainConfig, train

    log(f"== 2. FixRes: train at K_train={cfg.k_train}, adapt at K_test={cfg.k_test}, on composites of real objects "
        "on real photos")
    src, data = out / "composites", out / "composites-records"
    if src.exists():
        shutil.rmtree(src)
    composite_tree(src, cfg.n_train, cfg.n_val, size=cfg.k_test, seed=cfg.seed)
    log(f"built {src}: {cfg.n_train} train + {cfg.n_val} val images, {cfg.k_test} px")
    convert(ConvertConfig(layout="folder", src=str(src), out=str(data), workers=cfg.workers, overwrite=True), log=log)
    common = dict(backend="torch", device="cpu", workers=cfg.workers, seed=cfg.seed)

    runs, seconds = {}, {}
    for k in (cfg.k_train, cfg.k_test) if cfg.baseline else (cfg.k_train,):
        run = out / f"train{k}"
        if run.exists():
            shutil.rmtree(run)
        log(f"-- training at K_train={k} ({cfg.epochs} epochs)")
        t = time.perf_counter()
        train(TrainConfig(data=str(data), out=str(run), arch="fixres_cnn", k_train=k, recipe=cfg.recipe(), **common),
              log=log)
        seconds[f"train{k}"] = time.perf_counter() - t
        runs[k] = run / "last.pt"

    log(f"-- adapting the K_train={cfg.k_train} network at K_test={cfg.k_test} (the paper's BN+fc fine-tuning, "
        "test DA, frozen trunk cached)")
    adapted = adapt(AdaptConfig(checkpoint=str(runs[cfg.k_train]), k_test=cfg.k_test, epochs=cfg.adapt_epochs,
                                batch_size=64, evaluate=False, out=str(out / f"train{cfg.k_train}-adapted{cfg.k_test}.pt"),
                                **common), log=log)
    seconds["adapt"] = adapted["seconds"]

    ks = sorted({cfg.k_train, (cfg.k_train + cfg.k_test) // 2, cfg.k_test})
    ecfg = EvalConfig(checkpoints=(str(runs[cfg.k_train]), adapted["out"], *([str(runs[cfg.k_test])] if cfg.baseline else [])),
                      k_test=tuple(ks), backend="torch", device="cpu", workers=cfg.workers)
    log(f"-- evaluating at K_test = {', '.join(map(str, ks))}")
    rows = evaluate(ecfg, log=log)
    write_results(rows, ecfg, out / "evaluate")

    def top1(ckpt, k):
        return next(r["top1"] for r in rows if r["checkpoint"] == str(ckpt) and r["res"] == str(k))

    result = {
        "k_train": cfg.k_train, "k_test": cfg.k_test, "seconds": seconds,
        "adapt_fraction_of_training": seconds["adapt"] / seconds[f"train{cfg.k_train}"],
        "top1": {"train_at_k_train_test_at_k_train": top1(runs[cfg.k_train], cfg.k_train),
                 "train_at_k_train_test_at_k_test": top1(runs[cfg.k_train], cfg.k_test),
                 "train_at_k_train_adapted_test_at_k_test": top1(adapted["out"], cfg.k_test)},
        "rows": rows,
    }
    if cfg.baseline:
        result["top1"]["train_at_k_test_test_at_k_test"] = top1(runs[cfg.k_test], cfg.k_test)

    acfg = ActivationsConfig(checkpoints=(str(runs[cfg.k_train]), adapted["out"]), k_test=(cfg.k_train // 2, *ks),
                             limit=1000, backend="torch", device="cpu", workers=cfg.workers)
    log(f"-- pooled activations at K_test = {', '.join(map(str, acfg.k_test))}, before and after adaptation "
        "(the paper's Fig. 3 and 4)")
    acts = pooled_activations(acfg, log=lambda *_: None)
    for line in report_lines(acts):
        log(line)
    write_activations(acts, out / "activations")
    result["activations"] = acts.rows
    return result


def report(r: dict) -> str:
    """The summary as a small table."""
    a, b, t, s = r["k_train"], r["k_test"], r["top1"], r["seconds"]
    lines = ["", "== FixRes on the composites (val top-1)",
             f"  train {a}, test {a}:                 {t['train_at_k_train_test_at_k_train']:6.2f}%   "
             f"(training {s[f'train{a}']:.0f} s)",
             f"  train {a}, test {b}:                 {t['train_at_k_train_test_at_k_test']:6.2f}%   "
             "(the train-test discrepancy)",
             f"  train {a}, adapted at {b}, test {b}: {t['train_at_k_train_adapted_test_at_k_test']:6.2f}%   "
             f"(adaptation {s['adapt']:.1f} s = {100 * r['adapt_fraction_of_training']:.1f}% of training)"]
    if "train_at_k_test_test_at_k_test" in t:
        lines.append(f"  train {b}, test {b}:                 {t['train_at_k_test_test_at_k_test']:6.2f}%   "
                     f"(training {s[f'train{b}']:.0f} s, {s[f'train{b}'] / s[f'train{a}']:.1f}x the K_train={a} run)")
    return "\n".join(lines)
