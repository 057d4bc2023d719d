"""``fixres-fast demo``: ``fixres-fast run demo`` (pipelines/demo.toml: the converters on real photos and bad files,
then FixRes on composites of real objects on real photos), with the demo's options turned into ``--set``s.

The recipe holds every default; an option left out keeps the recipe's value. ``--seeds N`` runs the recipe for N
seeds, each in its own OUT/seed-S (each resumable: a rerun skips its finished stages), and writes OUT/seeds.md: the
paper's three effects on each seed, their mean, standard deviation over seeds and margin (mean / std), each read
from the seeds' evaluate.json and stage.json."""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

RECIPE = "demo"


@dataclass(frozen=True)
class DemoConfig:
    """The demo's options; None: the recipe's value."""

    out: str | None = None
    k_train: int | None = None  # train resolution of the FixRes network
    k_test: int | None = None  # test resolution adapted to: the composites' size
    # with the baseline, a network trained at (K_train + K_test) / 2 is adapted at K_test too: the closer pair
    n_train: int | None = None  # training composites (half as many for validation)
    epochs: int | None = None
    adapt_epochs: int | None = None
    baseline: bool | None = None  # also train at K_test, the cost FixRes avoids
    workers: int | None = None
    seed: int | None = None  # the first seed; with seeds = N, the seeds seed .. seed + N - 1
    seeds: int = 1  # 1: the recipe's run in OUT; N > 1: one run per seed in OUT/seed-S, and OUT/seeds.md

    def sets(self) -> list[str]:
        """The ``--set``s of ``run demo`` that these options stand for."""
        sets = []
        if (self.k_train, self.k_test, self.baseline) != (None, None, None):
            from .run import load

            doc = load(RECIPE)[1]
            a, b = self.k_train or doc["adapt"]["k_train"][0], self.k_test or doc["adapt"]["k_test"][0]
            baseline = len(doc["train"]["k_train"]) > 1 if self.baseline is None else self.baseline
            ks = sorted({a, (a + b) // 2, b})
            adapted = [k for k in ks if k != b] if baseline else [a]
            sets += [f"train.k_train={ks if baseline else [a]}", f"adapt.k_train={adapted}", f"adapt.k_test=[{b}]",
                     f"convert.composites.size={b}", f"evaluate.k_test={ks}", f"analyze.k_train=[{a}]",
                     f"analyze.k_test={[a // 2, *ks]}"]
        if self.n_train is not None:
            sets += [f"convert.composites.train_images={self.n_train}",
                     f"convert.composites.val_images={self.n_train // 2}"]
        for key, value in (("train.recipe.epochs", self.epochs), ("adapt.epochs", self.adapt_epochs),
                           ("common.workers", self.workers), ("common.seed", self.seed)):
            if value is not None:
                sets.append(f"{key}={value}")
        return sets


def demo(cfg: DemoConfig = DemoConfig(), log=print) -> dict:
    """Run the demo recipe (for each seed, with ``seeds`` > 1); returns :func:`fixres_fast.run.run`'s summary, or
    with ``seeds`` > 1 {'out', 'seeds': {seed: OUT/seed-S}, 'effects': :func:`effects`, 'report': OUT/seeds.md}."""
    from .errors import UserError
    from .run import load, run

    if cfg.seeds < 1:
        raise UserError(f"--seeds must be at least 1 (the number of seeds to run), got {cfg.seeds}")
    if cfg.seeds == 1:
        return run(RECIPE, cfg.sets(), cfg.out, log=log)
    _, doc, out = load(RECIPE, cfg.sets(), cfg.out)
    first = doc["common"]["seed"]
    folders = {}
    for seed in range(first, first + cfg.seeds):
        folders[seed] = out / f"seed-{seed}"
        log(f"\n=== seed {seed} of {first}..{first + cfg.seeds - 1}: {folders[seed]}")
        run(RECIPE, [*cfg.sets(), f"common.seed={seed}"], str(folders[seed]), log=log)
    nets = doc["adapt"]["k_train"]
    found = effects(folders, nets[0], doc["adapt"]["k_test"][0], nets[1] if len(nets) > 1 else None)
    lines = seeds_report(found)
    path = out / "seeds.md"
    from .artifacts import write_text

    write_text(path, "\n".join(lines) + "\n")
    log("")
    for line in lines:
        log(line)
    log(f"\nseeds report: {path}")
    return {"out": str(out), "seeds": {s: str(f) for s, f in folders.items()}, "effects": found, "report": str(path)}


# --- The paper's three effects over seeds -----------------------------------------------------------------


def _rows(folder: Path, net: int) -> list[dict]:
    path = folder / "evaluate" / str(net) / "evaluate.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def _top1(rows: list[dict], res: int, adapted_at=None) -> float | None:
    return next((r["top1"] for r in rows if r["res"] == str(res) and r["adapted_at"] == adapted_at), None)


def _seconds(folder: Path, stage: str) -> float | None:
    path = folder / stage / "stage.json"
    return json.loads(path.read_text())["seconds"] if path.is_file() else None


def seed_effects(folder: Path, k_train: int, k_test: int, closer: int | None = None) -> dict:
    """One seed's run in ``folder``: {effect: (gain in top-1 points, note)} for the effects it has the rows of.
    ``closer``: the K_train of the closer pair (a second network adapted at K_test), whose (3) is ``cheaper_closer``.

    1. ``above``: the unadapted network trained at K_train is most accurate above K_train (best unadapted top-1
       at a K_test > K_train, minus its top-1 at K_train; the note: where the best is).
    2. ``adapted``: adaptation at K_test raises its accuracy at K_test (adapted minus unadapted, at K_test).
    3. ``cheaper``: trained at K_train and adapted beats trained at K_test (tested at K_test), for less training
       time (the note: (train K_train + adapt) / train K_test, in % of the time); ``cheaper_closer``: the same for
       the closer pair's network."""
    low = _rows(folder, k_train)
    at_k_train, adapted, unadapted = _top1(low, k_train), _top1(low, k_test, k_test), _top1(low, k_test)
    found = {}
    above = [(r["top1"], int(r["res"])) for r in low if r["adapted_at"] is None and r["res"].isdigit()
             and int(r["res"]) > k_train]
    if above and at_k_train is not None:
        best, where = max(above)
        found["above"] = (best - at_k_train, f"best at {where}")
    if adapted is not None and unadapted is not None:
        found["adapted"] = (adapted - unadapted, "")
    for name, net in (("cheaper", k_train), ("cheaper_closer", closer)):
        gain = _cheaper(folder, net, k_test) if net is not None else None
        if gain is not None:
            found[name] = gain
    return found


def _cheaper(folder: Path, net: int, k_test: int) -> tuple[float, str] | None:
    """Effect (3) for the network trained at ``net``: its top-1 adapted at K_test minus the top-1 of the network
    trained at K_test, both tested at K_test, and the share of the training time (None: the run lacks a row)."""
    adapted, trained_at_k_test = _top1(_rows(folder, net), k_test, k_test), _top1(_rows(folder, k_test), k_test)
    times = [_seconds(folder, s) for s in (f"train/{net}", f"adapt/{net}-{k_test}", f"train/{k_test}")]
    if adapted is None or trained_at_k_test is None or net == k_test or None in times:
        return None
    return adapted - trained_at_k_test, f"{100 * (times[0] + times[1]) / times[2]:.0f}% of the time"


EFFECTS = {  # effect: what its gain is, in the paper's words
    "above": "(1) unadapted, train {a}: best top-1 above K_train minus top-1 at K_train = {a}",
    "adapted": "(2) train {a}: adapted at K_test = {b} minus unadapted, both tested at {b}",
    "cheaper": "(3) train {a} + adapt at {b} minus train {b}, both tested at {b}",
    "cheaper_closer": "(3) the closer pair: train {m} + adapt at {b} minus train {b}, both tested at {b}",
}


def effects(folders: dict[int, Path], k_train: int, k_test: int, closer: int | None = None) -> dict:
    """{'k_train', 'k_test', 'seeds', 'effects': {effect: {'what', 'gains', 'notes', 'mean', 'std', 'min', 'max',
    'margin'}}} over the seeds' runs (``folders``: seed -> its OUT). ``std``: the sample standard deviation over
    seeds (n - 1 in the denominator); ``margin``: mean / std (how many spreads the mean gain lies above 0)."""
    per_seed = {s: seed_effects(f, k_train, k_test, closer) for s, f in folders.items()}
    out = {}
    for name, what in EFFECTS.items():
        if not all(name in found for found in per_seed.values()):
            continue
        gains = [per_seed[s][name][0] for s in folders]
        mean, std = statistics.fmean(gains), statistics.stdev(gains) if len(gains) > 1 else math.nan
        out[name] = {"what": what.format(a=k_train, b=k_test, m=closer), "gains": gains, "notes": [per_seed[s][name][1] for s in folders],
                     "mean": mean, "std": std, "min": min(gains), "max": max(gains),
                     "margin": mean / std if std > 0 else (math.inf if mean > 0 else math.nan)}
    return {"k_train": k_train, "k_test": k_test, "closer": closer, "seeds": list(folders), "effects": out}


def seeds_report(found: dict) -> list[str]:
    """OUT/seeds.md: one row per effect (the gain on each seed, mean, std, min, max, margin)."""
    seeds = found["seeds"]
    lines = [f"# The demo over seeds {', '.join(map(str, seeds))}: the paper's three effects", "",
             "Gains in top-1 points on the validation split, read from OUT/seed-S/evaluate/*/evaluate.json (the "
             "time in (3) from OUT/seed-S/*/stage.json). Spread: std, the sample standard deviation over seeds "
             "(n - 1 in the denominator); margin: mean / std. An effect holds by more than twice its spread where "
             "the margin exceeds 2.", "",
             "| effect | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | std | min | max | margin (mean / std) |",
             "|---|" + "---|" * (len(seeds) + 5)]
    for e in found["effects"].values():
        cells = [f"{g:+.2f}" + (f" ({n})" if n else "") for g, n in zip(e["gains"], e["notes"])]
        lines.append(f"| {e['what']} | " + " | ".join(cells) + f" | {e['mean']:+.2f} | {e['std']:.2f} | "
                     f"{e['min']:+.2f} | {e['max']:+.2f} | {e['margin']:.1f} |")
    missing = [w.format(a=found["k_train"], b=found["k_test"], m=found["closer"]) for n, w in EFFECTS.items()
               if n not in found["effects"] and (n != "cheaper_closer" or found["closer"] is not None)]
    if missing:
        lines += ["", "Not measured (the runs lack its rows; (3) needs the network trained at K_test, --baseline): "
                  + "; ".join(missing) + "."]
    return lines
