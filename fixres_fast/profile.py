"""Cost against resolution: how training, inference and FixRes adaptation scale with K.

For each resolution K, on random K x K inputs (the model's compute alone, no data loading):

* train forward (forward and loss, train mode) and train backward (``loss.backward()``), per batch;
* inference forward (eval mode, ``torch.inference_mode``);
* one adaptation step, forward and backward, with only the last BatchNorm before global pooling
  and the classifier trainable (Sec. 4.2). Every other parameter is frozen and the trunk is in eval
  mode, so autograd records nothing before that BatchNorm: the trunk runs as under ``no_grad`` and
  no backward goes through it;
* peak memory of each phase (the CUDA allocator's; not measured on CPU) and images per second.

Each phase runs ``warmup`` times, then ``repeats`` times; the median is kept. CUDA events time GPU
work, ``time.perf_counter`` CPU work; ``cudnn.benchmark`` is on, as in training. The optimizer
update is not timed: its cost does not depend on the resolution. Cost grows about as K^2
(pixels); :func:`fit_exponent` fits the exponent on a log-log scale.

This module imports neither DALI nor FFCV, so it runs on any machine with torch and torchvision:
``PYTHONPATH=. python3 -m fixres_fast.cli profile ...``.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import artifacts
from .engine import autocast
from .errors import UserError
from .runtime import AMP, DEVICES, amp_dtype, resolve_device
from .models import adaptation_mode as _adaptation_mode  # the same freezing as `fixres-fast adapt`
from .models import build_model, classifier, last_bn_before_pool


#: Table 7 of the paper: ResNet-50 on one GPU, mean ms per batch ("± std" left out). Training at
#: K_train = K_test with batches of 32; fine-tuning (last BN + classifier at K_test) with batches of 64.
TABLE7 = {
    "train": {128: (12.8, 29.0), 160: (14.5, 30.2), 224: (15.2, 35.0), 384: (18.2, 112.4)},  # K: (forward, backward)
    "finetune": {224: (14.4, 4.4), 384: (18.0, 8.2)},  # K_test: (forward, backward)
    "batch": {"train": 32, "finetune": 64},
}
#: What torch says when an input is too small for a model (its maps shrink below a kernel, or BN sees one value
#: per channel): the only errors that "choose larger resolutions" answers.
TOO_SMALL = ("Output size is too small", "Kernel size can't be greater", "Expected more than 1 value per channel")


@dataclass(frozen=True)
class ProfileConfig:
    arch: str = "resnet50"
    resolutions: tuple[int, ...] = (64, 128, 160, 224, 288, 384, 448)  # K, square inputs, pixels
    batch_size: int = 32  # Table 7 trains with 32
    device: str = "auto"  # 'auto' (cuda when available), 'cuda' or 'cpu'
    amp: str = "off"  # 'bf16', 'fp16' or 'off'
    channels_last: bool = False
    num_classes: int = 1000
    warmup: int = 3  # untimed iterations per phase and resolution
    repeats: int = 10  # timed iterations per phase and resolution; the median is kept

    def __post_init__(self):
        bad = [k for k in self.resolutions if not isinstance(k, int) or k <= 0]
        if bad or len(set(self.resolutions)) < 2:
            raise UserError(f"expected at least two distinct positive resolutions in pixels (e.g. 64,128,224), "
                            f"got {','.join(map(str, self.resolutions))}")
        if self.amp not in AMP:
            raise UserError(f"unknown amp mode {self.amp!r}; choose one of {', '.join(AMP)}")
        if self.device not in DEVICES:
            raise UserError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        for name in ("batch_size", "repeats", "num_classes"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise UserError(f"warmup must be 0 or more iterations, got {self.warmup}")


@dataclass(frozen=True)
class ProfileRow:
    res: int
    batch_size: int
    train_forward_ms: float
    train_backward_ms: float
    adapt_forward_ms: float
    adapt_backward_ms: float
    infer_forward_ms: float
    train_peak_mib: float | None  # None on CPU
    adapt_peak_mib: float | None
    infer_peak_mib: float | None

    @property
    def train_ms(self) -> float:
        return self.train_forward_ms + self.train_backward_ms

    @property
    def adapt_ms(self) -> float:
        return self.adapt_forward_ms + self.adapt_backward_ms

    def as_dict(self) -> dict:
        per_s = {f"{p}_img_s": 1e3 * self.batch_size / ms
                 for p, ms in (("train", self.train_ms), ("adapt", self.adapt_ms), ("infer", self.infer_forward_ms))}
        return {**asdict(self), **per_s}


@dataclass(frozen=True)
class ProfileResult:
    config: ProfileConfig
    device_name: str
    adapted_layers: tuple[str, ...]  # (last BN before pooling, classifier), or the classifier alone
    rows: tuple[ProfileRow, ...]

    def exponents(self) -> dict[str, float]:
        """Fitted exponent b of cost ~ K^b for each phase (about 2 expected where compute dominates)."""
        res = [r.res for r in self.rows]
        return {phase: fit_exponent(res, [getattr(r, f"{phase}_ms") for r in self.rows])
                for phase in ("train", "adapt", "infer_forward")}


def fit_exponent(resolutions, costs) -> float:
    """Least-squares slope of log(cost) against log(resolution)."""
    return float(np.polyfit(np.log(resolutions), np.log(costs), 1)[0])


def profile(cfg: ProfileConfig, log=lambda line: None) -> ProfileResult:
    """Measure every phase at every resolution of ``cfg`` (smallest first)."""
    device = resolve_device(cfg.device)
    torch.backends.cudnn.benchmark = True
    model = build_model(cfg.arch, cfg.num_classes).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    adapted = layers_to_adapt(model, log)
    rows = []
    for res in sorted(cfg.resolutions):
        rows.append(_profile_resolution(model, tuple(adapted.values()), res, cfg, device))
        r = rows[-1]
        log(f"K={res}: train {r.train_forward_ms:.1f} + {r.train_backward_ms:.1f} ms, adapt "
            f"{r.adapt_forward_ms:.1f} + {r.adapt_backward_ms:.1f} ms, inference {r.infer_forward_ms:.1f} ms")
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({threads} thread{'s' * (threads > 1)})"
    return ProfileResult(cfg, name, tuple(adapted), tuple(rows))


def layers_to_adapt(model, log=lambda line: None) -> dict:
    """{name: module} of what FixRes fine-tunes: the last BN before pooling and the classifier, or the
    classifier alone (said in the log) for a model without BatchNorm, such as a ViT."""
    head = classifier(model)
    layers = {next(n for n, m in model.named_modules() if m is head): head}
    try:
        name, bn = last_bn_before_pool(model)
    except UserError as e:
        log(f"adapting the classifier only: {e}")
        return layers
    return {name: bn, **layers}


def _profile_resolution(model, adapted, res: int, cfg: ProfileConfig, device) -> ProfileRow:
    x = torch.randn(cfg.batch_size, 3, res, res, device=device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(cfg.num_classes, (cfg.batch_size,), device=device)
    dtype, measure = amp_dtype(cfg.amp, device), _clock(device)
    try:
        model.requires_grad_(True).train()
        (train_f, train_b), train_peak = _phase(lambda: _train_step(model, x, y, dtype, measure), cfg, device)
        model.zero_grad(set_to_none=True)
        _adaptation_mode(model, adapted)
        (adapt_f, adapt_b), adapt_peak = _phase(lambda: _train_step(model, x, y, dtype, measure), cfg, device)
        model.zero_grad(set_to_none=True)
        model.eval()
        (infer_f,), infer_peak = _phase(lambda: _infer_step(model, x, dtype, measure), cfg, device)
    except (RuntimeError, ValueError) as e:
        if "out of memory" in str(e):
            raise UserError(f"out of memory at K={res} with batch {cfg.batch_size}; lower --batch-size or "
                            "leave out the largest resolutions") from None
        if not any(words in str(e) for words in TOO_SMALL):
            raise
        raise UserError(f"{cfg.arch} cannot run at K={res}: {str(e).splitlines()[0]}; "
                        "choose larger resolutions") from None
    return ProfileRow(res, cfg.batch_size, train_f, train_b, adapt_f, adapt_b, infer_f,
                      train_peak, adapt_peak, infer_peak)


def _train_step(model, x, y, dtype, measure) -> tuple[float, float]:
    model.zero_grad(set_to_none=True)
    loss, forward_ms = measure(lambda: _loss(model, x, y, dtype))
    _, backward_ms = measure(loss.backward)
    return forward_ms, backward_ms


def _loss(model, x, y, dtype):
    with autocast(x.device.type, dtype):
        return F.cross_entropy(model(x), y)


def _infer_step(model, x, dtype, measure) -> tuple[float]:
    with torch.inference_mode(), autocast(x.device.type, dtype):
        return (measure(lambda: model(x))[1],)


def _phase(step, cfg: ProfileConfig, device) -> tuple[list[float], float | None]:
    """Warm up, then the median of each of ``step()``'s timings over ``cfg.repeats``; the phase's peak MiB."""
    cuda = device.type == "cuda"
    for _ in range(cfg.warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    samples = [step() for _ in range(cfg.repeats)]
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else None
    return [statistics.median(col) for col in zip(*samples)], peak


def _clock(device):
    """``measure(fn) -> (fn(), ms)``: CUDA events on a GPU, perf_counter on the CPU."""
    if device.type == "cuda":
        def measure(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            return out, start.elapsed_time(end)
    else:
        def measure(fn):
            t0 = time.perf_counter()
            out = fn()
            return out, (time.perf_counter() - t0) * 1e3
    return measure


def table7_comparison(rows) -> list[tuple[str, float, float | None]]:
    """(ratio, paper's value from Table 7, measured value or None where that K was not profiled).

    Ratios, not milliseconds, so that a different GPU, batch or precision can still be compared;
    fine-tuning is compared per image, because Table 7 fine-tunes with batches of 64, trains with 32.
    """
    by_res = {r.res: r for r in rows}
    train, tune, batch = TABLE7["train"], TABLE7["finetune"], TABLE7["batch"]

    def measured(k, fn):
        return fn(by_res[k]) if k in by_res else None

    out = [(f"train backward / forward at {k}", b / f, measured(k, lambda r: r.train_backward_ms / r.train_forward_ms))
           for k, (f, b) in train.items()]
    base = sum(train[224])
    out += [(f"train step at {k} / at 224", sum(train[k]) / base,
             measured(k, lambda r: r.train_ms / by_res[224].train_ms) if 224 in by_res else None)
            for k in train if k != 224]
    out += [(f"adapt backward / forward at {k}", b / f, measured(k, lambda r: r.adapt_backward_ms / r.adapt_forward_ms))
            for k, (f, b) in tune.items()]
    out += [(f"adapt / train step per image at {k}", (sum(tune[k]) / batch["finetune"]) / (sum(train[k]) / batch["train"]),
             measured(k, lambda r: r.adapt_ms / r.train_ms)) for k in tune]
    return out


# --- At the edge: the printed table, CSV, JSON and the log-log plot -----------------------------------


def report_lines(result: ProfileResult) -> list[str]:
    """The measured table, the fitted exponents and the Table 7 ratios, side by side."""
    cfg = result.config
    lines = [f"{cfg.arch} on {result.device_name}, batch {cfg.batch_size}, amp {cfg.amp}, channels_last "
             f"{cfg.channels_last}; adapted layers: {', '.join(result.adapted_layers)}",
             f"{'K':>5} {'train fwd':>10} {'train bwd':>10} {'adapt fwd':>10} {'adapt bwd':>10} {'infer':>9} "
             f"{'train img/s':>12} {'infer img/s':>12} {'peak MiB (train/adapt/infer)':>30}"]
    for row in result.rows:
        d = row.as_dict()
        peaks = "/".join("n/a" if p is None else f"{p:.0f}" for p in (row.train_peak_mib, row.adapt_peak_mib,
                                                                     row.infer_peak_mib))
        lines.append(f"{row.res:>5} {row.train_forward_ms:>10.2f} {row.train_backward_ms:>10.2f} "
                     f"{row.adapt_forward_ms:>10.2f} {row.adapt_backward_ms:>10.2f} {row.infer_forward_ms:>9.2f} "
                     f"{d['train_img_s']:>12.1f} {d['infer_img_s']:>12.1f} {peaks:>30}")
    lines.append("times in ms per batch (median); fitted exponent b of cost ~ K^b: "
                 + ", ".join(f"{k} {v:.2f}" for k, v in result.exponents().items()))
    lines.append(f"{'ratio':<40} {'Table 7':>8} {'measured':>9}")
    for name, paper, ours in table7_comparison(result.rows):
        lines.append(f"{name:<40} {paper:>8.2f} {'-' if ours is None else f'{ours:.2f}':>9}")
    return lines


def write_profile(result: ProfileResult, out) -> dict[str, Path]:
    """OUT/profile.csv (one row per K), OUT/profile.json (config, device, revision, exponents, Table 7
    ratios) and OUT/profile.png (log-log cost against K)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"profile.{kind}" for kind in ("csv", "json", "png")}
    rows = [r.as_dict() for r in result.rows]
    artifacts.write_csv(paths["csv"], rows)
    summary = {"config": asdict(result.config), "device": result.device_name, "torch": torch.__version__,
               "revision": artifacts.git_revision(), "adapted_layers": result.adapted_layers, "exponents": result.exponents(),
               "table7": [{"ratio": n, "paper": p, "measured": m} for n, p, m in table7_comparison(result.rows)],
               "rows": rows}
    artifacts.write_json(paths["json"], summary)
    with artifacts.replacing(paths["png"]) as f:
        plot_profile(result, f)
    return paths


def plot_profile(result: ProfileResult, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = np.array([r.res for r in result.rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for phase, label in (("train", "train step (fwd+bwd)"), ("adapt", "adapt step (BN+fc)"),
                         ("infer_forward", "inference")):
        cost = np.array([getattr(r, f"{phase}_ms") for r in result.rows])
        ax.loglog(res, cost, "o-", label=f"{label}: b = {fit_exponent(res, cost):.2f}")
    top = max(r.train_ms for r in result.rows)
    ax.loglog(res, top * (res / res[-1]) ** 2, "k:", label="K^2 reference")
    ax.set_xticks(res, [str(int(k)) for k in res])
    ax.minorticks_off()
    ax.set_xlabel("resolution K (pixels)")
    ax.set_ylabel(f"ms per batch of {result.config.batch_size}")
    ax.set_title(f"{result.config.arch} on {result.device_name} (cost ~ K^b)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)

