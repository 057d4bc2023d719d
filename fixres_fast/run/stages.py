"""The stages of a recipe (:mod:`fixres_fast.run`), one function per kind: each checks its table against the job's
config dataclass and adds its stages, whose actions call the job directly (convert.convert, train.train,
adapt.adapt, evaluate.evaluate, analysis.activations.pooled_activations, export.export)."""
from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from . import recipe as recipes
from ..adapt import AdaptConfig
from ..analysis.activations import ActivationsConfig
from ..convert import ConvertConfig
from ..errors import UserError
from ..evaluate import EvalConfig
from ..export import ExportConfig
from ..pretrained import Pretrained
from ..train import TrainConfig

OWN_CONVERT = {"sample": str, "train_images": int, "val_images": int, "size": int, "verify": bool}
SAMPLE_LAYOUT = {"imagenet-sample": "imagenet", "composites": "folder"}


def _plain(x):
    return json.loads(json.dumps(x, default=str))


def converts(b) -> None:
    """convert/NAME for each [convert.NAME]: a source tree (``src``), or a sample built offline (``sample``)."""
    for name, table in (b.table("convert") or {}).items():
        where = f"convert.{name}"
        if not isinstance(table, dict):
            raise UserError(f"{where} must be a table ([{where}]) of a data set's settings, got {table!r}")
        raw = b.merged(table, ConvertConfig)
        tab = recipes.check_table(raw, ConvertConfig, where, OWN_CONVERT, exclude=("out",))
        sample = tab.get("sample")
        if sample is not None and sample not in SAMPLE_LAYOUT:
            raise UserError(f"{where}.sample: expected one of {', '.join(SAMPLE_LAYOUT)}, got {sample!r}")
        if (sample is None) == ("src" not in tab):
            raise UserError(f"{where}: give src (the data set's folder) or sample ({', '.join(SAMPLE_LAYOUT)}), "
                            "one of them")
        tab.setdefault("layout", SAMPLE_LAYOUT.get(sample))
        if tab["layout"] is None:
            raise UserError(f"{where}.layout: say which layout src has: imagenet, inat, herbarium or folder")
        b.converts[name] = tab
        b.add(f"convert/{name}", {**raw, "layout": tab["layout"]}, (), _convert_action(tab), continues=True)


def _convert_action(tab: dict):
    def action(d: Path, log) -> dict:
        from ..convert import convert, verify
        from ..records import Manifest

        opts = {k: v for k, v in tab.items() if k not in OWN_CONVERT}
        src = opts.pop("src", None) or str(_sample(tab, d / "src", log))
        cfg = ConvertConfig(src=src, out=str(d / "records"), **opts)
        convert(cfg, log=log)
        splits = Manifest.read(d / "records").splits
        result = {"job": _plain(asdict(cfg)), "records": {n: s.count for n, s in splits.items()},
                  "skipped": {n: len(s.skipped) for n, s in splits.items()}}
        if tab.get("verify"):
            result["verified"] = verify(d / "records", workers=opts.get("workers", 0), log=log)
        return result
    return action


def _sample(tab: dict, src: Path, log) -> Path:
    """Build the sample data set in ``src`` once (a marker says it is complete; a partial one is rebuilt)."""
    from .. import sampledata

    marker = src.with_name("src.complete")
    if marker.exists():
        return src
    if src.exists():
        shutil.rmtree(src)
    if tab["sample"] == "composites":
        n_train, n_val = tab.get("train_images", 4000), tab.get("val_images", 2000)
        sampledata.composite_tree(src, n_train, n_val, size=tab.get("size", 64), seed=tab.get("seed", 0))
        log(f"built {src}: {n_train} train + {n_val} val composites, {tab.get('size', 64)} px")
    else:
        expected = sampledata.imagenet_tree(src)
        log(f"built {src}: {expected['train']} train + {expected['val']} val usable images, "
            f"{len(expected['skipped'])} bad or unannotated files")
    marker.write_text("")
    return src


def networks(b) -> None:
    """train/K for each K_train of [train]; or the [pretrained] weights as the one network."""
    from . import Network

    train, pre = b.table("train"), b.table("pretrained")
    if train is not None and pre is not None:
        raise UserError("a recipe has [train] or [pretrained], not both (to fine-tune pretrained weights, "
                        "give train.init = 'WEIGHTS' with train.arch)")
    if pre is not None:
        tab = recipes.check_table(pre, Pretrained, "pretrained", {"data": str})
        data, deps = b.data(tab.pop("data", None), "pretrained")
        if "weights" not in tab or "arch" not in tab:
            raise UserError("pretrained: give weights (the file) and arch (the torchvision or timm name)")
        b.networks["pretrained"] = Network("pretrained", Pretrained(**tab), data, deps, [])
        b.pretrained_config = {**pre, "sha256": _sha256(tab["weights"])}
        return
    if train is None:
        return
    own = {"k_train": int | list[int], "data": str, "init": str}
    raw = b.merged(train, TrainConfig)
    tab = recipes.check_table(raw, TrainConfig, "train", own, exclude=("out", "resume", "resume_changed"))
    data, deps = b.data(tab.pop("data", None), "train")
    ks = tab.pop("k_train", TrainConfig.k_train)
    weights = {"init_sha256": _sha256(tab["init"])} if tab.get("init") else {}
    for k in [ks] if isinstance(ks, int) else ks:
        b.add(f"train/{k}", {**raw, "k_train": k, **weights}, deps, _train_action(tab, k, data), continues=True)
        b.networks[str(k)] = Network(str(k), str(b.out / "train" / str(k) / "last.pt"), data, (f"train/{k}",), [])


def _sha256(path: str) -> str | None:
    """The weights file's SHA-256, so that other weights under the same name redo the stages that read them; None
    where there is no such file (the job says so when it runs)."""
    from ..pretrained import sha256

    return sha256(path) if Path(path).is_file() else None


def _train_action(tab: dict, k: int, data: str):
    def action(d: Path, log, processes: int = 1) -> dict:
        """``processes`` > 1 (``run --gpus N``): train through torchrun on that many processes (:mod:`.worker`)."""
        from ..pretrained import init_source
        from . import Interrupted
        from ..train import train
        from .worker import stage_lock, train_on

        opts = dict(tab)
        if opts.get("init"):
            opts["init"] = init_source(opts["init"], opts.get("arch", TrainConfig.arch))
        with stage_lock(d, log) if processes > 1 else contextlib.nullcontext() as lock:
            resume = (d / "last.pt").is_file()
            cfg = TrainConfig(data=data, out=str(d), k_train=k, resume=resume, **opts)
            result = train(cfg, log=log) if processes == 1 else train_on(cfg, processes, d, lock, log)
        if result.get("interrupted"):
            raise Interrupted(result["signal"])
        return {"job": _plain(asdict(cfg)), "checkpoint": "last.pt", "k_train": k, "resumed_from_last_pt": resume,
                "processes": result.get("processes", 1)}
    return action


def _net_config(b, net) -> dict:
    """What a stage's hash covers of the network it reads: its name, and [pretrained]'s table (no stage has it)."""
    return {"network": net.name, **({"pretrained": b.pretrained_config} if net.name == "pretrained" else {})}


def _select(b, table: dict, where: str) -> list:
    """The networks a stage applies to: those trained at ``k_train`` (a list), or all."""
    ks = table.pop("k_train", None)
    if ks is None:
        return list(b.networks.values())
    missing = [k for k in ks if str(k) not in b.networks]
    if missing:
        raise UserError(f"{where}.k_train: no network is trained at {missing[0]} (train.k_train: "
                        f"{', '.join(b.networks) or 'none'})")
    return [b.networks[str(k)] for k in ks]


def adapts(b) -> None:
    """adapt/N-K for each network N (adapt.k_train) and each K_test of adapt.k_test (or 'auto')."""
    t = b.table("adapt")
    if t is None:
        return
    own = {"k_test": list[int] | str, "k_train": list[int], "data": str}
    raw = b.merged(t, AdaptConfig)
    tab = recipes.check_table(raw, AdaptConfig, "adapt", own, exclude=("checkpoint", "out"))
    ks = tab.pop("k_test", None)
    if ks is None or (isinstance(ks, str) and ks != "auto"):
        raise UserError(f"adapt.k_test: expected a list of test resolutions such as [224, 288], or 'auto', got {ks!r}")
    data_key = tab.pop("data", None)
    for net in _select(b, tab, "adapt"):
        data, deps = b.data(data_key, "adapt") if data_key else (net.data, ())
        for k in ["auto"] if ks == "auto" else ks:
            name = f"adapt/{net.name}-{k}"
            config = {**raw, "k_test": k, **_net_config(b, net)}
            b.add(name, config, (*net.deps, *deps), _adapt_action(tab, net, None if k == "auto" else k, data))
            net.adapted.append((name, str(b.out / name / "adapted.pt")))


def _adapt_action(tab: dict, net, k: int | None, data: str):
    def action(d: Path, log) -> dict:
        from ..adapt import adapt

        cfg = AdaptConfig(checkpoint=net.checkpoint, k_test=k, data=data, out=str(d / "adapted.pt"), **tab)
        result = adapt(cfg, log=log)
        return _plain({"job": asdict(cfg), **result, "out": "adapted.pt"})
    return action


def evaluates(b) -> None:
    """evaluate/N for each network N: it and its adapted versions over evaluate.k_test, with N's ensemble."""
    t = b.table("evaluate")
    if t is None:
        return
    raw = b.merged(t, EvalConfig)
    tab = recipes.check_table(raw, EvalConfig, "evaluate", {"ensembles": dict[str, list[int]], "data": str},
                              exclude=("checkpoints",))
    ensembles = tab.pop("ensembles", {})
    unknown = [k for k in ensembles if k not in b.networks]
    if unknown:
        raise UserError(f"evaluate.ensembles.{unknown[0]}: no network {unknown[0]} (the networks: "
                        f"{', '.join(b.networks) or 'none'})")
    data_key = tab.pop("data", None)
    for net in b.networks.values():
        data, deps = b.data(data_key, "evaluate") if data_key else (net.data, ())
        opts = {**tab, "ensemble": tuple(ensembles.get(net.name, tab.get("ensemble", ())))}
        ckpts = (net.checkpoint, *(p for _, p in net.adapted))
        b.add(f"evaluate/{net.name}", {**raw, "ensemble": list(opts["ensemble"]), **_net_config(b, net)},
              (*net.deps, *(s for s, _ in net.adapted), *deps), _evaluate_action(opts, ckpts, data))


def _evaluate_action(opts: dict, ckpts: tuple, data: str):
    def action(d: Path, log) -> dict:
        from ..evaluate import evaluate, write_results

        cfg = EvalConfig(checkpoints=ckpts, data=data, **opts)
        write_results(evaluate(cfg, log=log), cfg, d)
        return {"job": _plain(asdict(cfg)), "results": "evaluate.json"}
    return action


def analyses(b) -> None:
    """analyze/N for each network N (analyze.k_train): the pooled activations of it and its adapted versions."""
    t = b.table("analyze")
    if t is None:
        return
    raw = b.merged(t, ActivationsConfig)
    tab = recipes.check_table(raw, ActivationsConfig, "analyze", {"k_train": list[int], "data": str},
                              exclude=("checkpoints",))
    data_key = tab.pop("data", None)
    for net in _select(b, tab, "analyze"):
        data, deps = b.data(data_key, "analyze") if data_key else (net.data, ())
        ckpts = (net.checkpoint, *(p for _, p in net.adapted))
        b.add(f"analyze/{net.name}", {**raw, **_net_config(b, net)}, (*net.deps, *(s for s, _ in net.adapted), *deps),
              _analyze_action(tab, ckpts, data))


def _analyze_action(tab: dict, ckpts: tuple, data: str):
    def action(d: Path, log) -> dict:
        from ..analysis.activations import pooled_activations, report_lines, write_activations

        cfg = ActivationsConfig(checkpoints=ckpts, data=data, **tab)
        result = pooled_activations(cfg, log=lambda *_: None)
        for line in report_lines(result):
            log(line)
        write_activations(result, d)
        return {"job": _plain(asdict(cfg)), "results": "activations.json"}
    return action


def exports(b) -> None:
    """export/N-K for each adapted checkpoint, where the recipe has [export]."""
    t = b.table("export")
    if t is None:
        return
    recipes.check_table(t, ExportConfig, "export", exclude=("checkpoint", "out", "overwrite"))
    for net in b.networks.values():
        for stage, path in net.adapted:
            name = "export/" + stage.removeprefix("adapt/")
            b.add(name, {}, (stage,), _export_action(path))


def _export_action(path: str):
    def action(d: Path, log) -> dict:
        from ..export import export

        return _plain(export(ExportConfig(checkpoint=path, out=str(d / "model"), overwrite=True), log=log))
    return action


def report_action(b):
    def action(d: Path, log) -> dict:
        from .report import write_report

        return {"report": str(write_report(b.out, b.stages, b.networks))}
    return action
