"""pipelines/ablations.toml and the variants it is written with: [train.NAME] and [adapt.NAME] sub-tables, each a set
of stages (train/K-NAME, adapt/N-K-NAME), checked like every table, hashed and resumable; and the report's Table 6,
8 and 9 shapes, every number read from the evaluate stages' evaluate.json."""
import json
import shutil

import pytest

from fixres_fast.run import _Builder, load, run
from .test_run import one_line_error

#: The ablations recipe at a small size: 96 + 48 composites of 48 px, one K_train per training variant, one K_test
#: adapted to, one epoch of everything.
SMALL = ["convert.composites.train_images=96", "convert.composites.val_images=48", "convert.composites.size=48",
         "train.k_train=[32]", "train.recipe.epochs=1", "train.recipe.batch_size=16", "adapt.k_test=[48]",
         "adapt.epochs=1", "adapt.batch_size=16", "evaluate.k_test=[32, 48]", "common.workers=1"]
VARIANTS = ["fc-train", "fc-test", "bn-fc-train", "bn-fc-test", "bn-fc-test2"]
STAGES = ["convert/composites", "train/32-rrc", "train/32-fixed", *(f"adapt/32-rrc-48-{v}" for v in VARIANTS),
          "evaluate/32-rrc", "evaluate/32-fixed", "report"]


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def ablations(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ablations"
    lines = []
    summary = run("ablations", SMALL, str(out), log=lines.append)
    return out, summary, lines


def rows(out, net):
    """{(checkpoint's folder, res): row} of evaluate/NET/evaluate.json."""
    doc = json.loads((out / "evaluate" / net / "evaluate.json").read_text())
    return {(r["checkpoint"].split("/")[-2], r["res"]): r for r in doc["rows"]}


def cell(r):
    return f"{r['top1']:.2f} ± {r['top1_std']:.2f}"


def section(report, title):
    return report.split(title)[1].split("\n## ")[0]


def test_the_ablations_recipe_runs_each_variant_as_its_own_stages(ablations):
    out, summary, _ = ablations
    assert [s for s, _, _ in summary["plan"]] == STAGES
    for v, (tune, aug) in zip(VARIANTS, [("fc", "train"), ("fc", "test"), ("bn+fc", "train"), ("bn+fc", "test"),
                                         ("bn+fc", "test2")]):
        doc = json.loads((out / f"adapt/32-rrc-48-{v}/stage.json").read_text())
        assert (doc["config"]["variant"], doc["result"]["tune"], doc["result"]["aug"]) == (v, tune, aug)
        assert doc["result"]["epochs"] == 1 and doc["result"]["lr"] == 0.01  # [adapt]'s shared settings
    augs = {n: json.loads((out / f"train/32-{n}/stage.json").read_text())["result"]["job"]["aug"]
            for n in ("rrc", "fixed")}
    assert augs == {"rrc": "train", "fixed": "train-fixed"}
    assert set(rows(out, "32-fixed")) == {("32-fixed", "32"), ("32-fixed", "48")}  # evaluated as trained only


def test_the_report_holds_tables_6_8_and_9_read_from_evaluate_json(ablations):
    out, _, lines = ablations
    report = (out / "report.md").read_text()
    rrc, fixed = rows(out, "32-rrc"), rows(out, "32-fixed")
    t6 = section(report, "(Table 6's shape)")
    assert "| network | variant | fine-tuned | data aug. | 48 |" in t6
    assert f"| 32-rrc | no fine-tuning | - | n/a | {cell(rrc[('32-rrc', '48')])} |" in t6
    for v, tuned, da in [("fc-train", "classifier", "train DA"), ("fc-test", "classifier", "test DA"),
                         ("bn-fc-train", "batch-norm + classifier", "train DA"),
                         ("bn-fc-test", "batch-norm + classifier", "test DA"),
                         ("bn-fc-test2", "batch-norm + classifier", "test DA2")]:
        assert f"|  | {v} | {tuned} | {da} | {cell(rrc[(f'32-rrc-48-{v}', '48')])} |" in t6
    da, da2 = rrc[("32-rrc-48-bn-fc-test", "48")], rrc[("32-rrc-48-bn-fc-test2", "48")]
    t8 = section(report, "(Table 8's shape)")
    assert f"| 32-rrc | 32 | 48 | {cell(da)} | {cell(da2)} | {da2['top1'] - da['top1']:+.2f} |" in t8
    t9 = section(report, "(Table 9's shape)")
    assert "| K_test \\ K_train | 32 (rrc) | 32 (fixed) |" in t9 and "rrc: `train`, fixed: `train-fixed`" in t9
    for k in ("32", "48"):
        assert f"| {k} | {cell(rrc[('32-rrc', k)])} | {cell(fixed[('32-fixed', k)])} |" in t9
    best = [max(("32", "48"), key=lambda k: r[(n, k)]["top1"]) for n, r in (("32-rrc", rrc), ("32-fixed", fixed))]
    assert f"| best K_test | {best[0]} | {best[1]} |" in t9
    # every adapted checkpoint in the full grid, named by its variant; the run's last lines hold the tables too
    assert f"| 32-rrc | 48 (bn-fc-test2) | {cell(rrc[('32-rrc-48-bn-fc-test2', '32')])} | {cell(da2)} |" in report
    assert "**After adaptation" not in report  # Table 5's right half is for a plain [adapt]: here Table 6 holds it
    assert any("(Table 6's shape)" in str(line) for line in lines)


def test_a_changed_variant_reruns_its_stages_and_what_reads_them(ablations, tmp_path):
    src, _, _ = ablations
    out = tmp_path / "ablations"
    shutil.copytree(src, out)
    plan = run("ablations", SMALL + ["adapt.fc-test.lr=0.02"], str(out), dry_run=True, log=quiet)["plan"]
    states = {name: (state, why) for name, state, why in plan}
    assert states["adapt/32-rrc-48-fc-test"] == ("run", "changed: lr 0.01 -> 0.02")
    assert states["evaluate/32-rrc"] == ("run", "its input adapt/32-rrc-48-fc-test changed")
    assert {s for s, (st, _) in states.items() if st == "run"} == {"adapt/32-rrc-48-fc-test", "evaluate/32-rrc",
                                                                   "report"}
    plan = run("ablations", SMALL + ["adapt.lr=0.02"], str(out), dry_run=True, log=quiet)["plan"]  # shared: all of them
    assert {s for s, st, _ in plan if st == "run"} == {*(f"adapt/32-rrc-48-{v}" for v in VARIANTS), "evaluate/32-rrc",
                                                       "report"}
    plan = run("ablations", SMALL + ["train.fixed.recipe.lr=0.2"], str(out), dry_run=True, log=quiet)["plan"]
    assert {s for s, st, _ in plan if st == "run"} == {"train/32-fixed", "evaluate/32-fixed", "report"}


@pytest.mark.parametrize("recipe, sets, expected", [
    ("ablations", ["adapt.fc-test.epoch=2"], "unknown key adapt.fc-test.epoch; allowed: amp, aug, auto_holdout, "),
    ("ablations", ["adapt.fc-test.epochs=two"], "adapt.fc-test.epochs: expected an integer, got 'two'"),
    ("ablations", ["adapt.epochs=two"], "adapt.epochs: expected an integer, got 'two'"),
    ("ablations", ["adapt.fc-test.tune=bn"], "adapt.fc-test.tune: expected one of fc, bn+fc, bn-stats, last-stage, "
                                             "got 'bn'"),
    ("ablations", ["adapt.bn-fc-test2.aug=test3"], "adapt.bn-fc-test2.aug: expected one of test, test2, train, "
                                                   "train-fixed, got 'test3'"),
    ("ablations", ["adapt.fc-test.k_test=best"], "adapt.fc-test.k_test: expected a list of test resolutions"),
    ("ablations", ["adapt.fc-test=3"], "unknown key adapt.fc-test; allowed: amp, aug, auto_holdout, "),
    ("ablations", ["adapt.fc test.tune=fc"], "adapt.fc test: a variant's name names its stages' folders: letters, "
                                             "digits, - and _ only"),
    ("ablations", ["adapt.train_variants=['rcr']"], "adapt.train_variants: no training variant rcr (the [train.NAME] "
                                                    "tables: rrc, fixed)"),
    ("ablations", ["adapt.fc-test.k_train=[64]"], "adapt.fc-test.k_train: no network is trained at 64"),
    ("ablations", ["train.fixed.arhc=x"], "unknown key train.fixed.arhc; allowed: amp, arch, aug, backend, "),
    ("ablations", ["train.fixed.recipe.epochs=x"], "train.fixed.recipe.epochs: expected an integer, got 'x'"),
    ("ablations", ["train.fixed.aug=fixed"], "train.fixed.aug: expected one of train, test, test2, train-fixed, "
                                             "got 'fixed'"),
    ("ablations", ["train.fixed.k_train=[32, 32]"], "two stages would be train/32-fixed"),
    ("demo", ["adapt.aug=test3"], "adapt.aug: expected one of test, test2, train, train-fixed, got 'test3'"),
    ("demo", ["train.aug=rrc"], "train.aug: expected one of train, test, test2, train-fixed, got 'rrc'"),
])
def test_a_bad_variant_value_is_one_line_naming_where_it_is(recipe, sets, expected):
    assert expected in one_line_error([recipe, "--dry-run"] + [a for s in sets for a in ("--set", s)])


#: A recipe without variants, and the stage hashes the code before variants gave it: finished runs of the plain
#: recipes stay finished.
PLAIN = """
[common]
backend = "torch"
device = "cpu"
seed = 0
[convert.images]
src = "data/images"
layout = "folder"
[train]
data = "images"
arch = "fixres_cnn"
k_train = [32, 48]
[train.recipe]
epochs = 2
lr = 0.1
[adapt]
k_train = [32]
k_test = [48, 64]
tune = "bn+fc"
aug = "test"
epochs = 3
[evaluate]
k_test = [32, 48, 64]
ensembles = { 32 = [64, 48] }
[analyze]
k_train = [48]
k_test = [32, 64]
[export]
"""
PLAIN_HASHES = {"convert/images": "e3fa1e8d7b808ad2", "train/32": "b9b1920797e98d83", "train/48": "a1c3ec640cf385e7",
                "adapt/32-48": "d91750181f3f466e", "adapt/32-64": "9f9e38db9c702577", "evaluate/32": "7b7d8f06b9c934f4",
                "evaluate/48": "9acef4cc0cdcaa63", "analyze/48": "5fc39922b9ac8f2b", "export/32-48": "0c5a6ec7c2c2f882",
                "export/32-64": "6f94576174b675ae", "report": "52190dd65a44c45a"}


def test_a_recipe_without_variants_keeps_its_stages_and_hashes(tmp_path):
    recipe = tmp_path / "plain.toml"
    recipe.write_text(PLAIN)
    _, doc, out = load(str(recipe), [], str(tmp_path / "out"))
    assert {s.name: s.hash for s in _Builder(doc, out).build()} == PLAIN_HASHES


def test_fig5_tells_every_curve_apart(ablations):
    """accuracy.png's legend: one label per checkpoint, the variants that share a tune told apart by their DA, and
    the two networks trained at 32 (train DA, train-fixed) by their stage."""
    from fixres_fast.evaluate import curve_labels

    out = ablations[0]
    every = [r for net in ("32-rrc", "32-fixed") for r in rows(out, net).values()]
    labels = curve_labels(every)
    assert len(labels) == 2 + len(VARIANTS) and len(set(labels.values())) == len(labels)
    by_folder = {c.split("/")[-2]: label for c, label in labels.items()}
    assert by_folder["32-rrc-48-bn-fc-test"] == "train 32, adapted at 48 (bn+fc, test DA)"
    assert by_folder["32-rrc-48-bn-fc-test2"] == "train 32, adapted at 48 (bn+fc, test DA2)"
    assert by_folder["32-rrc"] == "train 32, no adaptation: train/32-rrc"
    assert by_folder["32-fixed"] == "train 32, no adaptation: train/32-fixed"
