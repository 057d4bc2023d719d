"""The pooled activations' distribution at each test resolution (Fig. 3), before and after adaptation (Fig. 4).

For each checkpoint and each K_test, the first ``limit`` images of a split go through test DA at
K_test (the checkpoint's resize ratio) and the network; every component of every image's globally
pooled vector is one value. Sec. 3.2 reads two numbers off their distribution: the fraction of
zeros (sparsity; a ReLU then average pooling gives an exact 0 where a channel is 0 over the whole
map, likelier on a small map) and the fraction above 2 (spread). The paper's ResNet-50 at
K_train = 224 goes from 0.5% zeros and 1.2% above 2 at K_test = 224 to 29.8% and 11.9% at 64.

The vector measured is the classifier's input, as :func:`fixres_fast.engine.pooled_features` takes
it: a forward pre-hook on the final linear layer. Forward pre-hooks run in the order they were
registered and each sees the arguments the previous one returned, so for a checkpoint adapted with
``--method frechet`` (whose equalisation :func:`fixres_fast.frechet.attach` registers as a pre-hook
on the classifier when :func:`~fixres_fast.checkpoint.model_from_checkpoint` loads it, before
``pooled_features`` adds its own) this is the vector *after* the Fréchet map, which is what the
classifier sees. For a BN+fc (or bn-stats, last-stage) adaptation the last BN before pooling has
changed, so the pooled vector itself changes: Fig. 4's "after fine-tuning". Giving the base
checkpoint and its adapted version together draws both on one plot.

A K_test whose test DA needs a larger stored image than the records were converted with
(``--max-side``; the rule of :func:`fixres_fast.data.check_res`) is skipped with a warning.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import artifacts
from ..errors import UserError

SPREAD = 2.0  # the paper's "fraction of values above 2"
CDF_POINTS = 501  # quantiles kept per curve for the plot and the JSON
RES_FIG3 = (64, 128, 224, 448)  # the paper's Fig. 3
FIELDS = ("checkpoint", "train_res", "adapted_at", "adaptation", "res", "n_images", "n_values", "frac_zero",
          "frac_above_2", "mean", "median", "p99")


@dataclass(frozen=True)
class ActivationsConfig:
    checkpoints: tuple  # checkpoint paths, or pretrained.Pretrained weights
    k_test: tuple[int, ...] = RES_FIG3  # test resolutions K_test, pixels
    split: str = "val"
    limit: int = 5000  # images per checkpoint and K_test (the first of the split, in stored order)
    data: str | None = None  # a conversion's OUT folder; None: the one each checkpoint was trained or adapted on
    classes_map: str | None = None  # a file mapping the records' classes onto the model's (data.read_classes_map)
    batch_size: int = 100
    backend: str = "auto"
    device: str = "auto"
    amp: str = "auto"
    workers: int = 0
    on_corrupt: str = "stop"  # a damaged record: stop naming it, or skip and count it (LoaderConfig.on_corrupt)

    def __post_init__(self):
        if not self.checkpoints:
            raise UserError("expected at least one --checkpoint")
        if not self.k_test:
            raise UserError("expected at least one test resolution, e.g. --res 64,128,224,448")
        bad = [k for k in self.k_test if not isinstance(k, int) or k <= 0]
        if bad:
            raise UserError(f"test resolutions must be positive numbers of pixels, got {','.join(map(str, bad))} "
                            f"in --res {','.join(map(str, self.k_test))}")
        if self.limit < 1 or self.batch_size < 1:
            raise UserError(f"--limit and --batch-size must be at least 1, got {self.limit} and {self.batch_size}")


@dataclass(frozen=True)
class ActivationsResult:
    config: ActivationsConfig
    rows: list[dict]  # one per checkpoint and K_test measured (FIELDS)
    cdfs: list[np.ndarray]  # per row: the values' quantiles at PROBABILITIES
    skipped: list[dict]  # {checkpoint, res, reason} for each K_test the records cannot serve


PROBABILITIES = np.linspace(0.0, 1.0, CDF_POINTS)


def summarize(values) -> dict:
    """n_values, frac_zero, frac_above_2, mean, median, p99 of pooled activation values (any shape)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if not x.size:
        raise UserError("no pooled activation was measured (an empty split?)")
    return {"n_values": int(x.size), "frac_zero": float(np.mean(x == 0)), "frac_above_2": float(np.mean(x > SPREAD)),
            "mean": float(x.mean()), "median": float(np.median(x)), "p99": float(np.quantile(x, 0.99))}


def pooled_activations(cfg: ActivationsConfig, log=print) -> ActivationsResult:
    """Measure the pooled activations of each checkpoint at each K_test; one row per pair measured."""
    from .. import checkpoint
    from ..data import backend_for, check_res
    from ..engine import autocast, pooled_features
    from ..loaders import LoaderConfig, make_loader
    from ..runtime import amp_dtype, resolve_device

    device = resolve_device(cfg.device)
    dtype, backend = amp_dtype(cfg.amp, device), cfg.backend  # resolved per data set, below
    loader_cfg = LoaderConfig(batch_size=cfg.batch_size, device=str(device), workers=cfg.workers, training=False,
                              on_corrupt=cfg.on_corrupt)
    docs = [(path, checkpoint.load(path, log=log)) for path in cfg.checkpoints]  # every path checked before any work
    metas = [checkpoint.meta_of(doc) for _, doc in docs]
    datas = [checkpoint.data_for(meta, cfg.data, path, cfg.classes_map)[0]  # and each data set
             for (path, _), meta in zip(docs, metas)]
    rows, cdfs, skipped = [], [], []
    for (path, doc), meta, data in zip(docs, metas, datas):
        model = checkpoint.model_from_checkpoint(doc, device, path)
        for k_test in cfg.k_test:
            try:
                check_res(meta.test_spec(k_test), data, "--res")
            except UserError as e:
                reason = str(e)
                skipped.append({"checkpoint": str(path), "res": k_test, "reason": reason})
                log(f"warning: skipping K_test={k_test} for {Path(str(path)).name}: {reason}")
                continue
            loader = make_loader(backend_for(backend, device, data), meta.test_spec(k_test), data, cfg.split, loader_cfg)
            with autocast(device.type, dtype):
                feats, _ = pooled_features(model, loader, cfg.limit)
            del loader  # its (persistent) workers end here, before the next loader forks its own
            x = feats.numpy().astype(np.float64).ravel()
            row = {"checkpoint": str(path), "train_res": meta.k_train, "adapted_at": meta.adapted("k_test"),
                   "adaptation": _adaptation(meta), "res": k_test, "n_images": int(feats.shape[0]), **summarize(x)}
            rows.append(row)
            cdfs.append(np.quantile(x, PROBABILITIES))
            log(_line(row))
    if not rows:
        raise UserError("no test resolution could be measured: every one needs larger stored images than the "
                        "records hold (see the warnings); choose smaller --res values or convert with a larger --max-side")
    return ActivationsResult(cfg, rows, cdfs, skipped)


def _adaptation(meta) -> str | None:
    """How ``meta``'s checkpoint was adapted: 'frechet', the tuned layers (e.g. 'bn+fc'), or None."""
    if not meta.adaptation:
        return None
    return "frechet" if meta.adapted("method") == "frechet" else meta.adapted("tune")


def _name(row: dict) -> str:
    what = f"train {row['train_res']}"
    if row["adapted_at"]:
        what += f", adapted at {row['adapted_at']} ({row['adaptation']})"
    return what


def _line(row: dict) -> str:
    return (f"{Path(row['checkpoint']).name} ({_name(row)}) @ K_test={row['res']}: zeros {100 * row['frac_zero']:.1f}%, "
            f"above 2 {100 * row['frac_above_2']:.1f}%, mean {row['mean']:.3f}, median {row['median']:.3f}, "
            f"p99 {row['p99']:.3f} ({row['n_images']} images x {row['n_values'] // max(row['n_images'], 1)} channels)")


def report_lines(result: ActivationsResult) -> list[str]:
    """A table: one line per checkpoint and K_test, then the resolutions skipped."""
    lines = [f"{'checkpoint':<28} {'K_train':>7} {'adapted':>8} {'K_test':>6} {'images':>6} {'zeros %':>8} "
             f"{'>2 %':>6} {'mean':>7} {'median':>7} {'p99':>7}"]
    for r in result.rows:
        adapted = f"{r['adapted_at']}" if r["adapted_at"] else "-"
        lines.append(f"{Path(r['checkpoint']).name[-28:]:<28} {r['train_res']:>7} {adapted:>8} {r['res']:>6} "
                     f"{r['n_images']:>6} {100 * r['frac_zero']:>8.2f} {100 * r['frac_above_2']:>6.2f} "
                     f"{r['mean']:>7.3f} {r['median']:>7.3f} {r['p99']:>7.3f}")
    for s in result.skipped:
        lines.append(f"skipped K_test={s['res']} for {Path(s['checkpoint']).name}: records too small")
    return lines


# --- At the edge: CSV, JSON and the CDF plot (Fig. 3 / Fig. 4) ------------------------------------------


def write_activations(result: ActivationsResult, out) -> dict[str, Path]:
    """OUT/activations.csv, OUT/activations.json (config, code revision, rows, skipped, CDF quantiles) and
    OUT/activations.png; each written under a temporary name, then renamed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "activations.csv", "json": out / "activations.json", "png": out / "activations.png"}
    artifacts.write_csv(paths["csv"], result.rows, FIELDS)
    doc = {"config": asdict(result.config), "git": artifacts.git_revision(), "torch": torch.__version__,
           "rows": result.rows, "skipped": result.skipped,
           "cdf": {"probabilities": PROBABILITIES.round(6).tolist(),
                   "quantiles": [np.round(q, 6).tolist() for q in result.cdfs]}}
    artifacts.write_json(paths["json"], doc)
    with artifacts.replacing(paths["png"]) as f:
        plot_cdf(result, f)
    return paths


def plot_cdf(result: ActivationsResult, f) -> None:
    """CDF of the pooled values, one curve per checkpoint and K_test: colour by K_test, line style by
    checkpoint (solid for the first, e.g. before adaptation; dashed for the second, e.g. after). The
    value 2 is marked; a curve's jump at 0 is its fraction of zeros (the x axis starts below 0 only where a
    Fréchet map sent small non-zero values there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows
    ks = sorted({r["res"] for r in rows})
    colours = {k: plt.cm.viridis(i / max(len(ks) - 1, 1) * 0.9) for i, k in enumerate(ks)}
    styles = {c: s for c, s in zip(dict.fromkeys(r["checkpoint"] for r in rows), ("-", "--", ":", "-."))}
    xmax = max(2.5, 1.1 * max(r["p99"] for r in rows))
    xmin = min(0.0, min(float(q[0]) for q in result.cdfs))  # a Fréchet map can send small values below 0
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for r, q in zip(rows, result.cdfs):
        own = " = K_train" if r["res"] == r["train_res"] else ""
        label = f"K_test={r['res']}{own}: {_name(r)}" if len(styles) > 1 else f"K_test={r['res']}{own}"
        ax.plot(np.clip(q, None, xmax), PROBABILITIES, styles.get(r["checkpoint"], "-"), color=colours[r["res"]],
                lw=1.6, label=label)
    ax.axvline(SPREAD, color="grey", lw=1, ls=":")
    ax.text(SPREAD, 0.5, " 2: the paper's\n spread threshold", color="grey", fontsize=7, va="center")
    if xmin < 0:
        ax.axvline(0, color="grey", lw=0.6)
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(0, 1)
    ax.set_xlabel("pooled activation value (classifier input, after global average pooling)")
    ax.set_ylabel("cumulative fraction of values")
    first = rows[0]
    title = f"Pooled activations at each test resolution, {first['n_images']} images of {result.config.split}"
    if len(styles) == 1:
        title += f"\n{Path(first['checkpoint']).name}: {_name(first)}"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
