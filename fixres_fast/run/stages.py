"""The stages of a recipe (:mod:`fixres_fast.run`), one function per kind: each checks its table against the job's
config dataclass and adds its stages, whose actions call the job directly (convert.convert, train.train,
adapt.adapt, evaluate.evaluate, analysis.activations.pooled_activations, export.export), or, for train and adapt on
``run --gpus N``, through torchrun (:mod:`.worker`)."""
from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

from . import recipe as recipes
from ..adapt import AUGS, BN_SCOPES, METHODS, AdaptConfig
from ..analysis.activations import ActivationsConfig
from ..convert import ConvertConfig
from ..errors import UserError
from ..evaluate import EvalConfig
from ..export import ExportConfig
from ..models import TUNE
from ..pretrained import Pretrained
from ..spec import MODES, ResolutionSchedule, k_train_at, parse_res
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


# --- Named variants: [train.NAME] and [adapt.NAME] sub-tables over their table's shared settings -------------

#: A variant's name goes into its stages' folders (train/K-NAME, adapt/N-K-NAME) and into --set keys.
VARIANT_NAME = re.compile(r"[A-Za-z0-9_-]+")
#: The values a setting may take, where the job allows only some (checked before anything runs).
TRAIN_CHOICES = {"aug": tuple(MODES)}
ADAPT_CHOICES = {"tune": TUNE, "aug": AUGS, "method": METHODS, "bn_scope": BN_SCOPES}


def _variants(table: dict, config, where: str, own: dict) -> tuple[dict, dict]:
    """(shared settings, {name: variant table}): a variant is a sub-table whose key names no setting of the job
    (``[train.recipe]`` is a setting, ``[train.fixed]`` a variant)."""
    settings = {*recipes.fields_of(config), *own}
    variants = {k: v for k, v in table.items() if isinstance(v, dict) and k not in settings}
    bad = next((k for k in variants if not VARIANT_NAME.fullmatch(k)), None)
    if bad is not None:
        raise UserError(f"{where}.{bad}: a variant's name names its stages' folders: letters, digits, - and _ only")
    return {k: v for k, v in table.items() if k not in variants}, variants


def _over(shared: dict, variant: dict) -> dict:
    """``variant``'s settings over ``shared``'s; a sub-table (train.recipe) is merged key by key."""
    both = {k for k in shared.keys() & variant.keys() if isinstance(shared[k], dict) and isinstance(variant[k], dict)}
    return {**shared, **variant, **{k: {**shared[k], **variant[k]} for k in both}}


def _checked(b, shared: dict, name: str | None, variant: dict, config, where: str, own: dict, exclude, choices):
    """(raw, checked) settings of variant ``name`` (None: the table itself): each level checked where it is written,
    so that an error names adapt.KEY or adapt.NAME.KEY, then merged over [common]."""
    for at, table in ((where, shared), (f"{where}.{name}", variant if name else None)):
        if table is not None:
            _choose(recipes.check_table(table, config, at, own, exclude), choices, at)
    raw = b.merged(_over(shared, variant), config)
    return raw, recipes.check_table(raw, config, f"{where}.{name}" if name else where, own, exclude)


def _choose(tab: dict, choices: dict, where: str) -> None:
    for key, allowed in choices.items():
        if key in tab and tab[key] not in allowed:
            raise UserError(f"{where}.{key}: expected one of {', '.join(allowed)}, got {tab[key]!r}")


def _at(where: str, variant: str | None, vtab: dict, *keys) -> str:
    """Where ``keys`` were written: the variant's table where it sets one of them, else the shared one."""
    return f"{where}.{variant}" if variant and any(k in vtab for k in keys) else where


def _suffix(name: str | None) -> str:
    return f"-{name}" if name else ""


def _tagged(name: str | None) -> dict:
    """What a variant adds to its stages' configs (nothing without variants: those hashes stay as they were)."""
    return {"variant": name} if name else {}


def networks(b) -> None:
    """train/K for each K_train of [train] (train/K-NAME for each [train.NAME] variant); or the [pretrained]
    weights as the one network."""
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
    own = {"k_train": object, "data": str, "init": str}  # k_train: checked by _k_trains
    shared, variants = _variants(train, TrainConfig, "train", own)
    for variant, vtab in (variants or {None: {}}).items():
        raw, tab = _checked(b, shared, variant, vtab, TrainConfig, "train", own, ("out", "resume", "resume_changed"),
                            TRAIN_CHOICES)
        data, deps = b.data(tab.pop("data", None), "train")
        ks = _k_trains(tab.pop("k_train", TrainConfig.k_train), f"{_at('train', variant, vtab, 'k_train')}.k_train")
        weights = {"init_sha256": _sha256(tab["init"])} if tab.get("init") else {}
        for k in ks:
            name = f"{network_name(k)}{_suffix(variant)}"
            text = str(k) if isinstance(k, ResolutionSchedule) else k
            b.add(f"train/{name}", {**raw, "k_train": text, **_tagged(variant), **weights}, deps,
                  _train_action(tab, k, data), continues=True)
            b.networks[name] = Network(name, str(b.out / "train" / name / "last.pt"), data, (f"train/{name}",), [],
                                       k_train=k, variant=variant)


def network_name(k: int | ResolutionSchedule) -> str:
    """The name of the network trained at ``k`` (its stages' folders): K_train itself, or for a resolution schedule
    MIN:MAX@START-END the folder name MINtoMAX_eSTART-END (160:192@65-76: 160to192_e65-76; no ':' or '@', which
    shells, URLs and some file systems treat specially)."""
    if isinstance(k, ResolutionSchedule):
        return f"{k.min_res}to{k.max_res}_e{k.start_ramp}-{k.end_ramp}"
    return str(k)


def _k_trains(value, where: str) -> list:
    """A recipe's K_train value (one, or a list) as ints and ResolutionSchedules: each a resolution such as 224 or a
    schedule's text such as "160:192@65-76"."""
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in values):
        raise UserError(f"{where}: expected a resolution such as 224, a schedule such as \"160:192@65-76\", or a list "
                        f"of them, got {value!r}")
    return [parse_res(v, where) for v in values]


def _network_key(key: str) -> str:
    """A network named in a recipe's table key (evaluate.ensembles): its name, its K_train, or its schedule's text."""
    try:
        return network_name(parse_res(key))
    except UserError:
        return key


def _sha256(path: str) -> str | None:
    """The weights file's SHA-256, so that other weights under the same name redo the stages that read them; None
    where there is no such file (the job says so when it runs)."""
    from ..pretrained import sha256

    return sha256(path) if Path(path).is_file() else None


def _train_action(tab: dict, k: int, data: str):
    def action(d: Path, log, processes: int = 1) -> dict:
        """``processes`` > 1 (``run --gpus N``): train through torchrun on that many processes (:mod:`.worker`);
        under an outer torchrun, this process is one of its world (its WORLD_SIZE)."""
        from ..distributed import world_size
        from ..pretrained import init_source
        from . import Interrupted
        from ..train import train
        from .worker import job_on, stage_lock

        opts = dict(tab)
        if opts.get("init"):
            opts["init"] = init_source(opts["init"], opts.get("arch", TrainConfig.arch))
        with stage_lock(d, log) if processes > 1 else contextlib.nullcontext() as lock:
            resume = (d / "last.pt").is_file()
            cfg = TrainConfig(data=data, out=str(d), k_train=k, resume=resume, **opts)
            result = train(cfg, log=log) if processes == 1 else job_on("train", cfg, processes, d, lock, log)
        if result.get("interrupted"):
            raise Interrupted(result["signal"])
        final = k_train_at(k, cfg.recipe.epochs - 1)  # the checkpoint's K_train: its last epoch's
        schedule = {"res": str(k)} if isinstance(k, ResolutionSchedule) else {}
        return {"job": _plain(asdict(cfg)), "checkpoint": "last.pt", "k_train": final, **schedule,
                "resumed_from_last_pt": resume, "processes": result.get("processes", world_size())}
    return action


def _net_config(b, net) -> dict:
    """What a stage's hash covers of the network it reads: its name, and [pretrained]'s table (no stage has it)."""
    return {"network": net.name, **({"pretrained": b.pretrained_config} if net.name == "pretrained" else {})}


def _select(b, table: dict, where: str) -> list:
    """The networks a stage applies to: those of the training variants ``train_variants`` (a list), trained at
    ``k_train`` (a list of K_train or schedules); all where a key is not given."""
    ks, names = table.pop("k_train", None), table.pop("train_variants", None)
    nets = list(b.networks.values())
    if names is not None:
        known = list(dict.fromkeys(n.variant for n in nets if n.variant))
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(f"{where}.train_variants: no training variant {unknown[0]} (the [train.NAME] tables: "
                            f"{', '.join(known) or 'none'})")
        nets = [n for n in nets if n.variant in names]
    if ks is None:
        return nets
    wanted = _k_trains(ks, f"{where}.k_train")
    missing = [k for k in wanted if not any(n.k_train == k for n in nets)]
    if missing:
        raise UserError(f"{where}.k_train: no network is trained at {missing[0]} (train.k_train: "
                        f"{', '.join(b.networks) or 'none'})")
    return [n for k in wanted for n in nets if n.k_train == k]


def adapts(b) -> None:
    """adapt/N-K for each network N (adapt.k_train, adapt.train_variants) and each K_test of adapt.k_test (or
    'auto'); where [adapt] has named variants ([adapt.NAME] sub-tables over [adapt]'s shared settings, e.g. tune
    and aug for the ablations of Table 6), adapt/N-K-NAME for each variant instead."""
    t = b.table("adapt")
    if t is None:
        return
    own = {"k_test": list[int] | str, "k_train": object, "train_variants": list[str], "data": str}
    shared, variants = _variants(t, AdaptConfig, "adapt", own)
    for variant, vtab in (variants or {None: {}}).items():
        raw, tab = _checked(b, shared, variant, vtab, AdaptConfig, "adapt", own, ("checkpoint", "out"), ADAPT_CHOICES)
        ks = tab.pop("k_test", None)
        if ks is None or (isinstance(ks, str) and ks != "auto"):
            raise UserError(f"{_at('adapt', variant, vtab, 'k_test')}.k_test: expected a list of test resolutions "
                            f"such as [224, 288], or 'auto', got {ks!r}")
        data_key = tab.pop("data", None)
        for net in _select(b, tab, _at("adapt", variant, vtab, "k_train", "train_variants")):
            data, deps = b.data(data_key, "adapt") if data_key else (net.data, ())
            for k in ["auto"] if ks == "auto" else ks:
                name = f"adapt/{net.name}-{k}{_suffix(variant)}"
                config = {**raw, "k_test": k, **_tagged(variant), **_net_config(b, net)}
                b.add(name, config, (*net.deps, *deps), _adapt_action(tab, net, None if k == "auto" else k, data))
                net.adapted.append((name, str(b.out / name / "adapted.pt")))


def _adapt_action(tab: dict, net, k: int | None, data: str):
    def action(d: Path, log, processes: int = 1) -> dict:
        """``processes`` > 1 (``run --gpus N``): adapt through torchrun on that many processes (:mod:`.worker`);
        under an outer torchrun, this process is one of its world. The result says how many ran ('processes')."""
        from ..adapt import adapt
        from .worker import job_on, stage_lock

        cfg = AdaptConfig(checkpoint=net.checkpoint, k_test=k, data=data, out=str(d / "adapted.pt"), **tab)
        if processes == 1:
            result = adapt(cfg, log=log)
        else:
            with stage_lock(d, log) as lock:
                result = job_on("adapt", cfg, processes, d, lock, log)
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
    ensembles = {_network_key(k): v for k, v in tab.pop("ensembles", {}).items()}
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
    tab = recipes.check_table(raw, ActivationsConfig, "analyze",
                              {"k_train": object, "train_variants": list[str], "data": str},
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
