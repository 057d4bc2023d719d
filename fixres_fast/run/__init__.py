"""``fixres-fast run RECIPE``: a recipe (``pipelines/NAME.toml``) as resumable stages, then a report.

Stages: ``convert/NAME`` (a data set, or a sample built offline) -> ``train/K`` (one per K_train) ->
``adapt/N-K`` (network N at each K_test, or ``auto``) -> ``evaluate/N`` (network N and its adapted versions over a
grid of K_test, with N's ensemble) -> ``analyze/N`` (pooled activations) -> ``export/N-K`` -> ``report``. A network
N is the one trained at K_train = N, or ``pretrained`` (the recipe's ``[pretrained]`` weights). Named variants
(``[train.NAME]``, ``[adapt.NAME]``: sub-tables over their table's shared settings, as pipelines/ablations.toml has)
make ``train/K-NAME`` (network ``K-NAME``) and ``adapt/N-K-NAME`` instead.

Each stage works in ``OUT/<stage>/``: it first writes ``started.json`` (its resolved config and hash), then its
outputs, and last, atomically, ``stage.json`` (the done-marker: hash, config, seconds, result). A stage's hash covers
its config and its inputs' hashes, so a rerun skips the finished stages whose hash is unchanged and redoes a changed
stage with every stage after it that reads its outputs. A stage interrupted with the same hash continues where it
stopped (train from ``last.pt``; convert from its own state); one whose config changed starts afresh in an emptied
folder. ``--dry-run`` prints that plan and runs nothing. ``--gpus N`` runs each train stage on N processes through
torchrun (:mod:`.worker`; its hash then covers N); adapt and the other stages run on one process.

This package is the top of fixres_fast, as :mod:`fixres_fast.demo` is: the one place besides it that calls several
jobs. :mod:`.recipe` finds, overrides and checks recipes; :mod:`.stages` turns each table into stages that call the
jobs; :mod:`.report` writes OUT/report.md from what they wrote. A stage's hash covers the recipe's values, not the
jobs' defaults: a default changed in the code does not rerun a finished stage.
"""
from __future__ import annotations

import functools
import hashlib
import os
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import recipe as recipes
from ..artifacts import write_json
from ..errors import UserError

TOP = ("description", "out", "common", "convert", "pretrained", "train", "adapt", "evaluate", "analyze", "export")
#: [common]: settings every job that has the field takes, unless its own table sets it.
COMMON = {"backend": str, "device": str, "amp": str, "workers": int, "seed": int, "on_corrupt": str}
#: Settings that change how a stage runs, not what it computes: left out of its hash.
NEUTRAL = ("workers",)
SAMPLES = ("imagenet-sample", "composites")  # sample data sets a convert stage builds offline (sampledata.py)
DONE, STARTED = "stage.json", "started.json"


class Interrupted(Exception):
    """A stage stopped on SIGTERM / SIGINT after writing what resumes it."""

    def __init__(self, signum):
        self.signum = signum


@dataclass
class Stage:
    name: str  # its folder under OUT
    config: dict  # the recipe's values for it (JSON); with its inputs' hashes, what its hash covers
    deps: tuple[str, ...]
    action: Callable  # (folder, log) -> result (JSON)
    hash: str = ""
    always: bool = False  # run on every run (the report: cheap, and written by the code of the day)
    continues: bool = False  # interrupted, it continues from what it wrote (train: last.pt; convert: its state)


@dataclass
class Network:
    name: str  # its K_train (K-NAME for a [train.NAME] variant), or 'pretrained'
    checkpoint: object  # a path, or pretrained.Pretrained
    data: str
    deps: tuple[str, ...]
    adapted: list  # [(stage name, adapted checkpoint path)]
    k_train: int | None = None  # None: pretrained (its K_train is in its weights' preprocessing)
    variant: str | None = None  # the [train.NAME] variant it was trained with; None: [train] has no variants


def _json(x) -> str:
    return json.dumps(x, sort_keys=True, default=str)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- The recipe as stages -------------------------------------------------------------------------------


class _Builder:
    def __init__(self, doc: dict, out: Path, gpus: int = 1):
        unknown = [k for k in doc if k not in TOP]
        if unknown:
            raise UserError(f"unknown key {unknown[0]} at the recipe's top level; allowed: {', '.join(TOP)}")
        self.doc, self.out, self.stages, self.networks = doc, out, [], {}
        self.common = recipes.check_table(doc.get("common", {}), where="common", own=COMMON)
        self.converts = {}
        self.gpus = gpus  # processes of each train stage (run --gpus N)

    def table(self, key: str) -> dict | None:
        t = self.doc.get(key)
        if t is not None and not isinstance(t, dict):
            raise UserError(f"{key} must be a table ([{key}]), got {t!r}")
        return t

    def merged(self, table: dict, config) -> dict:
        """``table`` over the [common] settings that ``config`` has a field for."""
        fields = recipes.fields_of(config)
        return {**{k: v for k, v in self.common.items() if k in fields}, **table}

    def add(self, name: str, config: dict, deps, action, continues: bool = False) -> None:
        if any(s.name == name for s in self.stages):
            raise UserError(f"two stages would be {name}: a resolution is listed twice")
        config = {k: v for k, v in config.items() if k not in NEUTRAL}
        self.stages.append(Stage(name, config, tuple(deps), action, continues=continues))

    def data(self, value, where: str) -> tuple[str, tuple]:
        """(records folder, stages it comes from) of a ``data`` key: a convert stage's name, or a path."""
        if value is None:
            if len(self.converts) != 1:
                raise UserError(f"{where}.data: name the data set, one of the convert stages "
                                f"({', '.join(self.converts) or 'none'}) or a records folder")
            value = next(iter(self.converts))
        if value in self.converts:
            return str(self.out / "convert" / value / "records"), (f"convert/{value}",)
        return str(value), ()

    def build(self) -> list[Stage]:
        from . import stages

        stages.converts(self)
        stages.networks(self)
        stages.adapts(self)
        stages.evaluates(self)
        stages.analyses(self)
        stages.exports(self)
        self.add("report", {}, [s.name for s in self.stages], stages.report_action(self))
        self.stages[-1].always = True
        self.on_processes()
        hashes = {}
        for s in self.stages:
            s.hash = hashlib.sha256(_json({"stage": s.name, "config": s.config,
                                           "inputs": {d: hashes[d] for d in s.deps}}).encode()).hexdigest()[:16]
            hashes[s.name] = s.hash
        return self.stages

    def on_processes(self) -> None:
        """With --gpus N > 1, each train stage runs on N processes, and its hash covers N: a world of N learns other
        numbers than one process (each process's share of B, its BatchNorm statistics, its augmentations)."""
        if self.gpus == 1:
            return
        for s in self.stages:
            if s.name.startswith("train/"):
                s.config = {**s.config, "gpus": self.gpus}
                s.action = functools.partial(s.action, processes=self.gpus)


def load(recipe: str, sets=(), out: str | None = None) -> tuple[Path, dict, Path]:
    """(recipe file, its document with ``sets`` applied, OUT)."""
    path = recipes.locate(recipe)
    doc = recipes.apply_sets(recipes.read(path), sets)
    default = doc.get("out", f"runs/{path.stem}")
    if not isinstance(default, str):
        raise UserError(f"out: expected a string (the output folder), got {default!r}")
    return path, doc, Path(out or default)


def plan(stages: list[Stage], out: Path) -> list[tuple[Stage, str, str]]:
    """[(stage, 'done' | 'run' | 'resume', why)] in order."""
    rows, running = [], set()
    for s in stages:
        d = out / s.name
        done, started = _read(d / DONE), _read(d / STARTED)
        if s.always:
            rows.append((s, "run", "rewritten on every run, from the stages' outputs"))
            continue
        if done and done.get("hash") == s.hash:
            rows.append((s, "done", "finished, unchanged"))
            continue
        running.add(s.name)
        last = done or started
        if started and started.get("hash") == s.hash:
            how = ("continues from last.pt" if s.continues and (d / "last.pt").is_file() else
                   "continues where the conversion stopped" if s.continues and s.name.startswith("convert/")
                   else "starts again")
            rows.append((s, "resume", f"interrupted; {how}"))
        elif last is None:
            rows.append((s, "run", "new"))
        else:
            rows.append((s, "run", _why(s, last, running)))
    return rows


def _why(s: Stage, last: dict, running: set) -> str:
    old = last.get("config", {})
    changed = [k for k in sorted({*old, *s.config}) if _json(old.get(k)) != _json(s.config.get(k))]
    if changed:
        return "changed: " + ", ".join(f"{k} {_json(old.get(k))} -> {_json(s.config.get(k))}" for k in changed)
    inputs = [d for d in s.deps if d in running]
    return f"its input {', '.join(inputs)} changed" if inputs else "its inputs changed"


def execute(s: Stage, out: Path, log) -> dict:
    """Run one stage in OUT/<stage>: afresh, or continuing an interrupted attempt with the same hash."""
    d = out / s.name
    started = _read(d / STARTED)
    resuming = bool(s.continues and started and started.get("hash") == s.hash)
    if not resuming:
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        write_json(d / STARTED, {"stage": s.name, "hash": s.hash, "config": s.config})
    t = time.perf_counter()
    result = s.action(d, log)
    doc = {"stage": s.name, "hash": s.hash, "config": s.config, "inputs": list(s.deps),
           "seconds": time.perf_counter() - t, "resumed": resuming, "result": result}
    write_json(d / DONE, json.loads(_json(doc)))  # the done-marker, last
    return doc


def _check_world(gpus: int) -> None:
    if gpus < 1:
        raise UserError(f"--gpus must be 1 or more (processes per train stage), got {gpus}")
    world = os.environ.get("WORLD_SIZE", "1")
    if world != "1":
        raise UserError(f"fixres-fast run is running under torchrun (WORLD_SIZE={world}): each of its processes would "
                        "run every stage into the same OUT. Run it once, with --gpus N for the train stages on this "
                        "machine's N GPUs; for several machines, run `fixres-fast train` under torchrun yourself")


def run(recipe: str, sets=(), out: str | None = None, dry_run: bool = False, log=print, gpus: int = 1) -> dict:
    """Run (or with ``dry_run`` only plan) a recipe; returns {'out', 'recipe', 'plan', 'report'}. ``gpus``: processes
    of each train stage, through torchrun on this machine (gloo CPU processes where the device is cpu)."""
    _check_world(gpus)
    path, doc, out_dir = load(recipe, sets, out)
    builder = _Builder(doc, out_dir, gpus)
    stages = builder.build()
    rows = plan(stages, out_dir)
    log(f"{path} -> {out_dir}: {sum(r[1] != 'done' for r in rows)} of {len(rows)} stages to run")
    for s, state, why in rows:
        log(f"  {s.name:<24} {state:<7} {why}")
    summary = {"out": str(out_dir), "recipe": str(path), "plan": [(s.name, state, why) for s, state, why in rows],
               "report": str(out_dir / "report.md")}
    if dry_run:
        return summary
    for s, state, why in rows:
        if state != "done":
            log(f"== {s.name} ({why})")
            execute(s, out_dir, log)
    from .report import Results, summary_lines

    for line in summary_lines(Results(out_dir, stages, builder.networks)):
        log(line)
    log(f"\nreport: {out_dir / 'report.md'} (Table 5's shape, Fig. 5 in accuracy.png, the activations, the time of "
        "every stage)")
    return summary
