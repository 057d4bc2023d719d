"""Evaluation: top-1 / top-5 over an exact epoch (every image once), at one or several test resolutions.

:func:`evaluate` is the ``fixres-fast evaluate`` job: for each checkpoint and each K_test it classifies the validation
set with test DA (the checkpoint's resize ratio), and reports top-1, top-5, the loss and the paper's
significance measure (Sec. 5: split the images into 10 folds, measure top-1 on 9 of them leaving one
out in turn, and take the standard deviation over the 10). ``ensemble`` averages the softmax over
several resolutions (Sec. 5.1, "Multiple resolutions"). Files and the plot are at the edge.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import artifacts, checkpoint, progress
from .engine import predict
from .errors import UserError
from .spec import DA_NAMES

FOLDS = 10  # the paper's leave-one-out folds


def leave_one_out_std(correct, folds: int = FOLDS) -> float:
    """Std (percentage points) of top-1 over ``folds`` leave-one-fold-out subsets (image i is in fold i % folds)."""
    correct = np.asarray(correct, dtype=np.float64)
    fold = np.arange(correct.size) % folds
    accs = [100 * correct[fold != f].mean() for f in range(folds) if (fold != f).any()]
    return float(np.std(accs))


def scores(probs: torch.Tensor, labels: torch.Tensor, folds: int = FOLDS) -> dict:
    """top1, top5 (%), loss (mean cross-entropy), top1_std (leave-one-out, points) and n."""
    k = min(5, probs.shape[1])
    hit = probs.topk(k, dim=1).indices == labels[:, None]
    loss = -probs.gather(1, labels[:, None]).clamp_min(1e-12).log().mean()
    return {"top1": 100 * hit[:, 0].double().mean().item(), "top5": 100 * hit.any(1).double().mean().item(),
            "loss": loss.item(), "top1_std": leave_one_out_std(hit[:, 0].numpy(), folds), "n": int(labels.numel())}


@dataclass(frozen=True)
class EvalConfig:
    checkpoints: tuple  # checkpoint paths, or pretrained.Pretrained weights
    data: str | None = None  # a conversion's OUT folder; None: the one the checkpoint was trained or adapted on
    classes_map: str | None = None  # a file mapping the records' classes onto the model's (data.read_classes_map)
    k_test: tuple[int, ...] = ()  # K_test values (CLI: --res); (): each checkpoint's own test resolution
    ensemble: tuple[int, ...] = ()  # resolutions whose softmax is averaged, e.g. (384, 352)
    batch_size: int = 100
    backend: str = "auto"
    device: str = "auto"
    amp: str = "auto"
    workers: int = 0
    on_corrupt: str = "stop"  # a damaged record: stop naming it, or skip and count it (LoaderConfig.on_corrupt)
    folds: int = FOLDS


def evaluate(cfg: EvalConfig, log=print) -> list[dict]:
    """One row per checkpoint and resolution (and per checkpoint for the ensemble)."""
    from dataclasses import replace

    from .data import backend_for, check_res, label_map
    from .loaders import LoaderConfig, make_loader
    from .runtime import amp_dtype, resolve_device

    if not cfg.checkpoints:
        raise UserError("expected at least one --checkpoint")
    bad = [k for k in (*cfg.k_test, *cfg.ensemble) if k <= 0]
    if bad:
        raise UserError(f"test resolutions must be positive numbers of pixels, got {bad}")
    device = resolve_device(cfg.device)
    dtype, backend = amp_dtype(cfg.amp, device), cfg.backend  # resolved per data set, below
    loader_cfg = LoaderConfig(batch_size=cfg.batch_size, device=str(device), workers=cfg.workers, training=False,
                              on_corrupt=cfg.on_corrupt)
    rows = []
    for path in cfg.checkpoints:
        model, meta = checkpoint.open_model(path, device, log)
        (data, cmap), own = checkpoint.data_for(meta, cfg.data, path, cfg.classes_map), cfg.k_test or (meta.k_test,)
        labelled = replace(loader_cfg, label_map=label_map(cmap, data))
        ensemble, ks = None, list(dict.fromkeys((*own, *cfg.ensemble)))
        for k in ks:  # every resolution checked before any is measured
            check_res(meta.test_spec(k), data, "--ensemble" if k in cfg.ensemble and k not in own else "--res")
        for k in ks:
            loader = make_loader(backend_for(backend, device, data), meta.test_spec(k), data, "val", labelled)
            probs, labels = predict(model, progress.images(loader, f"{Path(str(path)).name} @ {k}", loader.epoch_length), dtype)
            if k in cfg.ensemble:
                ensemble = probs if ensemble is None else ensemble + probs
            if k in own:
                rows.append(_row(path, meta, str(k), scores(probs, labels, cfg.folds)))
                log(_line(rows[-1], meta.num_classes))
        if ensemble is not None:
            name = "+".join(map(str, cfg.ensemble))
            rows.append(_row(path, meta, name, scores(ensemble / len(cfg.ensemble), labels, cfg.folds)))
            log(_line(rows[-1], meta.num_classes))
    return rows


def _row(path, meta: checkpoint.CheckpointMeta, res: str, s: dict) -> dict:
    return {"checkpoint": str(path), "train_res": meta.k_train, "adapted_at": meta.adapted("k_test"),
            "tune": meta.adapted("tune"), "aug": meta.adapted("aug"), "res": res, **s}


def _line(row: dict, num_classes: int) -> str:
    """The row as one log line; top-5 only where it says something (more than 5 classes: else it is always 100%)."""
    top5 = f", top-5 {row['top5']:.2f}%" if num_classes > 5 else ""
    return (f"{Path(row['checkpoint']).name} @ {row['res']}: top-1 {row['top1']:.2f}% ± {row['top1_std']:.2f} "
            f"(leave-one-out){top5}, loss {row['loss']:.4f}, {row['n']} images")


# --- At the edge: CSV, JSON and the plot of accuracy against the test resolution (the paper's Fig. 5) ---


def write_results(rows: list[dict], cfg: EvalConfig, out) -> dict[str, Path]:
    """OUT/evaluate.csv, OUT/evaluate.json (config, code revision, rows) and OUT/accuracy.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "evaluate.csv", "json": out / "evaluate.json", "png": out / "accuracy.png"}
    artifacts.write_csv(paths["csv"], rows)
    doc = {"config": asdict(cfg), "git": artifacts.git_revision(), "torch": torch.__version__, "rows": rows}
    artifacts.write_json(paths["json"], doc)
    with artifacts.replacing(paths["png"]) as f:
        plot_accuracy(rows, f)
    return paths


def curve_labels(rows: list[dict]) -> dict[str, str]:
    """{checkpoint: its curve's label}: the train resolution, and where adapted the K_test, the tuned layers and the
    fine-tuning's DA; where two checkpoints would still read alike (variants of one network, networks trained at
    one K_train), each label ends with the folder that tells them apart (the run's stage, e.g. adapt/32-64-test2)."""
    labels = {}
    for r in rows:
        if r["checkpoint"] not in labels:
            aug = f", {DA_NAMES.get(r['aug'], r['aug'])}" if r.get("aug") else ""
            labels[r["checkpoint"]] = (f"train {r['train_res']}, adapted at {r['adapted_at']} ({r['tune']}{aug})"
                                       if r["adapted_at"] else f"train {r['train_res']}, no adaptation")
    alike = [label for label in labels.values() if list(labels.values()).count(label) > 1]
    for ckpt, label in labels.items():
        if label in alike:
            parts = Path(ckpt).parts
            labels[ckpt] = f"{label}: {'/'.join(parts[-3:-1]) if len(parts) > 2 else ckpt}"
    return labels


def plot_accuracy(rows: list[dict], path) -> None:  # path: a file name or a binary file
    """Top-1 against K_test, one curve per checkpoint: before adaptation (train resolution only) and after
    (adapted at a K_test), as in Fig. 5; each adapted checkpoint's own K_test is ringed. Ensembles are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    labels = curve_labels(rows)
    for ckpt in dict.fromkeys(r["checkpoint"] for r in rows):
        own = sorted((int(r["res"]), r) for r in rows if r["checkpoint"] == ckpt and r["res"].isdigit())
        if not own:
            continue
        first = own[0][1]
        res, top1 = [k for k, _ in own], [r["top1"] for _, r in own]
        line, = ax.plot(res, top1, "o-" if first["adapted_at"] else "s--", label=labels[ckpt])
        ax.errorbar(res, top1, yerr=[r["top1_std"] for _, r in own], fmt="none", color=line.get_color(), capsize=2)
        if first["adapted_at"] in res:
            ax.plot([first["adapted_at"]], [top1[res.index(first["adapted_at"])]], "o", ms=12, mfc="none",
                    color=line.get_color())
    ax.set_xlabel("test resolution K_test (pixels)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy against test resolution, before and after adaptation", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
