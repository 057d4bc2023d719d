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
folder. ``--dry-run`` prints that plan and runs nothing. ``--gpus N`` runs each train and adapt stage on N processes
through torchrun (:mod:`.worker`; its hash then covers N); the other stages run on one process.

On several nodes, start the run itself under torchrun (``torchrun --nnodes M --nproc-per-node G ... -m
fixres_fast.cli run RECIPE``, OUT on a file system every node shares): every process joins the world once (until it
exits), for every run it makes. Rank 0 alone plans, runs the single-process stages (convert, evaluate, analyze,
export, report), writes every stage's started.json and stage.json, and logs; the other processes wait for it (on a
gloo group of their own, with a long timeout, :data:`STAGE_WAIT`) and learn from it the plan and each stage's
outcome, so that a one-line error stops them all. Each train and adapt stage runs on all M x G processes, in each of
them, as ``fixres-fast train`` / ``adapt`` under torchrun do; its hash covers M x G as it covers --gpus N, so that
``run --gpus 2`` and a torchrun of two processes train the same stage to the same weights (with as many threads per
process). A process that dies makes torchrun stop the others; the same command continues from what was written
(train from last.pt; an adapt stage starts again).

This package is the top of fixres_fast, as :mod:`fixres_fast.demo` is: the one place besides it that calls several
jobs. :mod:`.recipe` finds, overrides and checks recipes; :mod:`.stages` turns each table into stages that call the
jobs; :mod:`.report` writes OUT/report.md from what they wrote. A stage's hash covers the recipe's values, not the
jobs' defaults: a default changed in the code does not rerun a finished stage.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from datetime import timedelta
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
    every_process: bool = False  # under torchrun, run on each of its processes (train, adapt), not on rank 0 alone


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
    def __init__(self, doc: dict, out: Path, gpus: int = 1, world: int = 1):
        unknown = [k for k in doc if k not in TOP]
        if unknown:
            raise UserError(f"unknown key {unknown[0]} at the recipe's top level; allowed: {', '.join(TOP)}")
        self.doc, self.out, self.stages, self.networks = doc, out, [], {}
        self.common = recipes.check_table(doc.get("common", {}), where="common", own=COMMON)
        self.converts = {}
        self.gpus = gpus  # processes of each train and adapt stage that the run starts itself (run --gpus N)
        self.world = world  # processes running the run itself (an outer torchrun's WORLD_SIZE)

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
        """Each train and adapt stage runs on the N processes of --gpus N (started through torchrun, :mod:`.worker`),
        or on the W processes of an outer torchrun (in each of them); where N or W > 1, its hash covers it, as
        ``gpus``: a world of N learns other numbers than one process (each process's share of B, its BatchNorm
        statistics, its augmentations; an adapt stage's trunk pass in other batches), and the same numbers whichever
        torchrun started it."""
        processes = self.gpus * self.world
        for s in self.stages:
            if s.name.startswith(("train/", "adapt/")):
                s.every_process = True
                if processes > 1:
                    s.config = {**s.config, "gpus": processes}
                if self.gpus > 1:
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
    resuming = begin(s, out)
    t = time.perf_counter()
    result = s.action(out / s.name, log)
    return finish(s, out, resuming, time.perf_counter() - t, result)


def begin(s: Stage, out: Path) -> bool:
    """Ready OUT/<stage> for an attempt: kept where it continues an interrupted attempt with the same hash (returns
    True), else emptied, with started.json in it."""
    d = out / s.name
    started = _read(d / STARTED)
    if s.continues and started and started.get("hash") == s.hash:
        return True
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    write_json(d / STARTED, {"stage": s.name, "hash": s.hash, "config": s.config})
    return False


def finish(s: Stage, out: Path, resuming: bool, seconds: float, result) -> dict:
    """Write the stage's done-marker, stage.json, last; returns what it holds."""
    doc = {"stage": s.name, "hash": s.hash, "config": s.config, "inputs": list(s.deps),
           "seconds": seconds, "resumed": resuming, "result": result}
    write_json(out / s.name / DONE, json.loads(_json(doc)))
    return doc


# --- One process, or the world of an outer torchrun --------------------------------------------------------

#: How long the other processes of a run under torchrun wait for rank 0's single-process stages: longer than any
#: stage takes (an ImageNet conversion takes hours). It is the timeout of the gloo group they wait on, and of that
#: group alone: the train and adapt stages' collectives keep torch's default, so that a hung process still fails them.
STAGE_WAIT = timedelta(days=7)


class _World:
    """The processes of one ``fixres-fast run``: this one, or the world an outer torchrun started (``group``: the
    group its processes wait on). Rank 0 plans and runs the single-process stages and writes every stage's
    bookkeeping; every process runs each train and adapt stage; the others learn each outcome from rank 0."""

    def __init__(self, rank: int = 0, size: int = 1, group=None):
        self.rank, self.size, self.group = rank, size, group
        self.main = rank == 0

    def on_main(self, fn):
        """fn() on rank 0; on every process, what it returned (picklable), or the UserError / Interrupted it raised,
        so that all stop with the same one line. Another exception: its traceback on rank 0, one line elsewhere."""
        if self.size == 1:
            return fn()
        from ..distributed import from_main

        outcome, failure = _outcome(fn) if self.main else (None, None)
        kind, value = from_main(outcome, self.group)
        if failure is not None:
            raise failure
        if kind == "interrupted":
            raise Interrupted(value)
        if kind == "error":
            raise UserError(value)
        return value

    def everywhere(self, fn):
        """fn() on every process; where it raised a UserError on any, every process raises the first one's line."""
        if self.size == 1:
            return fn()
        from ..distributed import gathered

        try:
            result, error = fn(), None
        except UserError as e:
            result, error = None, str(e)
        failed = [(rank, e) for rank, e in enumerate(gathered(error, self.group)) if e is not None]
        if failed:
            rank, error = failed[0]
            raise UserError(error if rank == 0 else f"rank {rank}: {error}")
        return result


def _outcome(fn) -> tuple[tuple[str, object], BaseException | None]:
    """((kind, value) to tell the other processes, the exception to raise here) of calling fn()."""
    try:
        return ("result", fn()), None
    except UserError as e:
        return ("error", str(e)), e
    except Interrupted as e:
        return ("interrupted", e.signum), e
    except Exception as e:
        return ("error", f"rank 0 stopped on {type(e).__name__}: {e} (its output has the traceback)"), e


def _world_size(gpus: int) -> int:
    """The number of processes running this ``fixres-fast run``: 1, or torchrun's WORLD_SIZE."""
    from ..distributed import world_size

    if gpus < 1:
        raise UserError(f"--gpus must be 1 or more (processes per train and adapt stage), got {gpus}")
    world = world_size()
    if world > 1 and gpus > 1:
        raise UserError(f"--gpus {gpus} under torchrun (WORLD_SIZE={world}): the processes are torchrun's, and each "
                        f"train and adapt stage runs on all {world} of them; drop --gpus (or run without torchrun)")
    return world


def _joined(gpus: int) -> _World:
    """The run's :class:`_World`; under torchrun, its process group joined (once per process: train() uses it)."""
    size = _world_size(gpus)
    if size == 1:
        return _World()
    import torch.distributed as dist

    from ..distributed import joined

    group = joined(STAGE_WAIT)
    return _World(dist.get_rank(), size, group)


def _quiet(*_) -> None:
    pass


def run(recipe: str, sets=(), out: str | None = None, dry_run: bool = False, log=print, gpus: int = 1) -> dict:
    """Run (or with ``dry_run`` only plan) a recipe; returns {'out', 'recipe', 'plan', 'report'}. ``gpus``: processes
    of each train and adapt stage, through torchrun on this machine (gloo CPU processes where the device is cpu).
    Under an outer torchrun (several nodes), every process calls run() and rank 0 alone logs: see the module's
    docstring."""
    world = _joined(gpus)
    return _run(world, recipe, sets, out, dry_run, log if world.main else _quiet, gpus)


def _run(w: _World, recipe: str, sets, out, dry_run: bool, log, gpus: int) -> dict:
    path, out_dir, builder, rows = _planned(w, recipe, sets, out, gpus)
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
            _execute_on(w, s, out_dir, log)
    if w.main:
        from .report import Results, summary_lines

        for line in summary_lines(Results(out_dir, builder.stages, builder.networks)):
            log(line)
        log(f"\nreport: {out_dir / 'report.md'} (Table 5's shape, Fig. 5 in accuracy.png, the activations, the time of "
            "every stage)")
    return summary


def _built(recipe: str, sets, out, gpus: int, world: int) -> tuple[Path, Path, _Builder]:
    path, doc, out_dir = load(recipe, sets, out)
    builder = _Builder(doc, out_dir, gpus, world)
    builder.build()
    return path, out_dir, builder


def _planned(w: _World, recipe: str, sets, out, gpus: int) -> tuple[Path, Path, _Builder, list]:
    """(recipe file, OUT, its builder, the plan) on every process: rank 0 builds the stages and plans from what OUT
    holds; each other process builds the same stages (their actions do not travel) and takes rank 0's plan."""
    mine = {}

    def planned() -> list:
        mine["built"] = built = _built(recipe, sets, out, gpus, w.size)
        _, out_dir, builder = built
        return [(s.name, s.hash, state, why) for s, state, why in plan(builder.stages, out_dir)]

    def same() -> tuple:
        path, out_dir, builder = mine.get("built") or _built(recipe, sets, out, gpus, w.size)
        if [(s.name, s.hash) for s in builder.stages] != [(name, h) for name, h, _, _ in rows]:
            raise UserError(f"its stages differ from rank 0's ({path}, --out {out_dir}): give every node the same "
                            "recipe and --set's, and an OUT on a file system they all share")
        return path, out_dir, builder

    rows = w.on_main(planned)
    path, out_dir, builder = w.everywhere(same)
    stages = {s.name: s for s in builder.stages}
    return path, out_dir, builder, [(stages[name], state, why) for name, _, state, why in rows]


def _execute_on(w: _World, s: Stage, out: Path, log) -> None:
    """Run one stage: on rank 0 alone, or (a train or adapt stage under torchrun) on every process, rank 0 readying its
    folder first and writing its stage.json after."""
    if w.size == 1 or not s.every_process:
        w.on_main(lambda: execute(s, out, log))
        return
    resuming = w.on_main(lambda: begin(s, out))
    t = time.perf_counter()
    result = s.action(out / s.name, log)  # a UserError or a stop here is every process's: each raises it itself
    w.on_main(lambda: finish(s, out, resuming, time.perf_counter() - t, result))
