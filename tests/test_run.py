"""`fixres-fast run RECIPE`: recipes checked against the jobs' configs, --set, resumable stages, --dry-run, the
report, kill -9 and rerun, and each shipped recipe end to end at a small size (real converters, loaders, training)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from fixres_fast.cli import main
from fixres_fast.models import build_model
from fixres_fast.run.recipe import shipped
from fixres_fast.run import run
from fixres_fast.sampledata import composite_tree

from . import imagesets

#: The demo recipe at a small size: 96 + 48 composites of 48 px, K_train 32 and 48, two epochs (so that a kill
#: in the second leaves a last.pt to continue from), one of adaptation, the photo sample not read back.
SMALL_DEMO = ["convert.composites.train_images=96", "convert.composites.val_images=48", "convert.composites.size=48",
              "train.k_train=[32, 48]", "adapt.k_train=[32]", "adapt.k_test=[48]", "evaluate.k_test=[32, 48]",
              "analyze.k_test=[16, 48]",
              "analyze.limit=40", "train.recipe.epochs=2", "train.recipe.batch_size=16", "adapt.epochs=1",
              "adapt.batch_size=16", "common.workers=1", "convert.photos.verify=false"]
STAGES = ["convert/photos", "convert/composites", "train/32", "train/48", "adapt/32-48", "evaluate/32", "evaluate/48",
          "analyze/32", "report"]


def quiet(*_):
    pass


def top1s(out):
    return {(n, r["checkpoint"].rsplit("/", 1)[-1], r["res"]): r["top1"] for n in (32, 48)
            for r in json.loads((out / "evaluate" / str(n) / "evaluate.json").read_text())["rows"]}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "demo"
    summary = run("demo", SMALL_DEMO, str(out), log=quiet)
    return out, summary


def one_line_error(args):
    res = CliRunner().invoke(main, ["run", *args])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    return lines[0]


def test_shipped_recipes():
    assert {"demo", "imagenet-resnet50", "imagenet-resnet50-fast", "transfer", "pretrained-adapt", "ablations",
            "inat2019", "herbarium2019"} <= set(shipped())
    assert f"shipped recipe ({', '.join(shipped())})" in one_line_error(["no-such-recipe"])


@pytest.mark.parametrize("sets, expected", [
    (["train.epoch=2"], "unknown key train.epoch; allowed: amp, arch, aug, backend, compile, data, "),
    (["train.recipe.epochs=two"], "train.recipe.epochs: expected an integer, got 'two'"),
    (["train.k_train=[32, 48.5]"], 'train.k_train: expected a resolution such as 224, a schedule such as "160:192@65-76", '
                                   "or a list of them, got [32, 48.5]"),
    (['train.k_train=["32:16@0-1"]'], "train.k_train 32:16@0-1: MIN 32 is above MAX 16 (the ramp grows K_train); "
                                      "expected a resolution such as 224, or MIN:MAX@START-END"),
    (['analyze.k_train=["32:64@0-1"]'], "analyze.k_train: no network is trained at 32:64@0-1 (train.k_train: 32, 48, 64)"),
    (["adapt.k_test=best"], "adapt.k_test: expected a list of test resolutions such as [224, 288], or 'auto'"),
    (["evaluate.ensembles={128 = [256, 192]}"], "evaluate.ensembles.128: no network 128 (the networks: 32, 48, 64)"),
    (["analyze.k_train=[128]"], "analyze.k_train: no network is trained at 128"),
    (["common.shards=2"], "unknown key common.shards; allowed: amp, backend, device, on_corrupt, seed, workers"),
    (["trian.epochs=2"], "unknown key trian at the recipe's top level"),
    (["train"], "--set expects KEY=VALUE"),
    (["train.recipe.epochs.x=1"], "--set train.recipe.epochs.x=1: train.recipe.epochs is a value, not a table"),
    (["convert.photos.src=x"], "convert.photos: give src (the data set's folder) or sample (imagenet-sample, composites)"),
    (["convert.photos.sample=mnist"], "convert.photos.sample: expected one of imagenet-sample, composites, got 'mnist'"),
    (["pretrained.weights=w.pth"], "a recipe has [train] or [pretrained], not both"),
    (["export.overwrite=true"], "unknown key export.overwrite; allowed: none"),
    (["out=3"], "out: expected a string (the output folder), got 3"),
    (["train.k_train=[32, 32]"], "two stages would be train/32: a resolution is listed twice"),
])
def test_a_bad_recipe_value_is_one_line_naming_the_key(sets, expected):
    args = ["demo", "--dry-run"] + [a for s in sets for a in ("--set", s)]
    assert expected in one_line_error(args)


def test_a_recipe_file_is_checked_too(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[convert.images]\nsrc = "x"\nlayout = "folder"\nmax_side = "big"\n')
    assert "convert.images.max_side: expected an integer, got 'big'" in one_line_error([str(bad), "--dry-run"])
    bad.write_text('[convert.a]\nsample = "composites"\n[convert.b]\nsample = "composites"\n[train]\nk_train = 32\n')
    assert "train.data: name the data set, one of the convert stages (a, b) or a records folder" in one_line_error(
        [str(bad), "--dry-run"])
    bad.write_text('[convert.a]\nsample = "composites"\n[pretrained]\narch = "resnet50"\n')
    assert "pretrained: give weights (the file) and arch" in one_line_error([str(bad), "--dry-run"])
    bad.write_text("[train\n")
    assert "is not valid TOML" in one_line_error([str(bad)])


def test_the_demo_recipe_runs_and_reports(demo_run):
    out, summary = demo_run
    assert [s for s, state, _ in summary["plan"]] == STAGES and all(st == "run" for _, st, _ in summary["plan"])
    for s in STAGES:
        doc = json.loads((out / s / "stage.json").read_text())
        assert doc["stage"] == s and doc["seconds"] > 0 and len(doc["hash"]) == 16
    report = (out / "report.md").read_text()
    rows = {k: v for k, v in top1s(out).items()}
    # Table 5's shape, every number from evaluate.json
    before = f"| 32 | {rows[(32, 'last.pt', '32')]:.2f} ± "
    assert "**Before adaptation**" in report and before in report
    assert f"| 32 | {rows[(32, 'adapted.pt', '48')]:.2f} ± " in report.split("**After adaptation")[1]
    seconds = {s: json.loads((out / s / "stage.json").read_text())["seconds"] for s in ("train/32", "train/48", "adapt/32-48")}
    share = 100 * (seconds["train/32"] + seconds["adapt/32-48"]) / seconds["train/48"]
    gain = rows[(32, "adapted.pt", "48")] - rows[(48, "last.pt", "48")]
    assert f"train 32 + adapt at 48: {share:.0f}% of the time of train 48, {gain:+.2f} points" in report
    assert all(f"| {s} | " in report for s in STAGES[:-1])  # the time of every stage
    assert "## Pooled activations" in report and (out / "accuracy.png").stat().st_size > 10_000


def test_a_rerun_skips_what_is_done_and_redoes_a_changed_stage_and_its_dependants(demo_run, tmp_path):
    src, _ = demo_run
    out = tmp_path / "demo"
    shutil.copytree(src, out)
    lines = []
    plan = run("demo", SMALL_DEMO, str(out), dry_run=True, log=lines.append)["plan"]
    assert [state for _, state, _ in plan] == ["done"] * 8 + ["run"]
    assert "1 of 9 stages to run" in lines[0]
    before = {s: (out / s / "stage.json").read_text() for s in STAGES[:-1]}

    lines = []
    plan = run("demo", SMALL_DEMO + ["adapt.epochs=2"], str(out), log=lines.append)["plan"]
    states = {name: (state, why) for name, state, why in plan}
    assert states["adapt/32-48"] == ("run", "changed: epochs 1 -> 2")
    assert states["evaluate/32"] == ("run", "its input adapt/32-48 changed")
    assert states["analyze/32"] == ("run", "its input adapt/32-48 changed")
    assert {s for s, (st, _) in states.items() if st == "done"} == {
        "convert/photos", "convert/composites", "train/32", "train/48", "evaluate/48"}
    assert any("== adapt/32-48 (changed: epochs 1 -> 2)" in line for line in lines)
    for s in ("convert/photos", "convert/composites", "train/32", "train/48", "evaluate/48"):
        assert (out / s / "stage.json").read_text() == before[s]
    assert json.loads((out / "adapt/32-48/stage.json").read_text())["result"]["epochs"] == 2


def _interrupted(cmd, wait_for, signum, log):
    """Start ``cmd``, send ``signum`` as soon as ``wait_for`` exists; its exit status."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not wait_for.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signum)
        return proc.wait()


def test_sigterm_then_kill_9_mid_run_then_the_same_command_gives_the_same_numbers(demo_run, tmp_path):
    ref, _ = demo_run
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "fixres_fast.cli", "run", "demo", "--out", str(out)]
    cmd += [a for s in SMALL_DEMO for a in ("--set", s)]
    # SIGTERM in train/32's second epoch (its first epoch's last.pt is on disk): a resumable checkpoint, exit 143
    assert _interrupted(cmd, out / "train" / "32" / "last.pt", signal.SIGTERM, tmp_path / "1.log") == 143
    assert not (out / "train" / "32" / "stage.json").exists()
    # the same command continues train/32 from last.pt; kill -9 as soon as the adaptation has started
    assert _interrupted(cmd, out / "adapt" / "32-48" / "started.json", signal.SIGKILL, tmp_path / "2.log") == -9
    second = (tmp_path / "2.log").read_text()
    assert "train/32                 resume  interrupted; continues from last.pt" in second
    assert "resuming from" in second
    assert not (out / "adapt" / "32-48" / "stage.json").exists()

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "adapt/32-48              resume  interrupted; starts again" in again.stdout
    assert "train/32                 done    finished, unchanged" in again.stdout
    assert top1s(out) == top1s(ref)
    assert "(resumed, so timed over their last attempt only: train/32)" in again.stdout


def test_train_resumed_at_an_epoch_equals_uninterrupted_with_train_da(tmp_path):
    """What the train stage relies on after kill -9: a run resumed from last.pt at an epoch boundary, with train DA's
    random crops drawn in loader workers, learns what an uninterrupted run learns."""
    from fixres_fast.convert import ConvertConfig, convert
    from fixres_fast.spec import Recipe
    from fixres_fast.train import TrainConfig, train

    composite_tree(tmp_path / "src", 48, 16, size=32, seed=0)
    convert(ConvertConfig(layout="folder", src=str(tmp_path / "src"), out=str(tmp_path / "rec"), workers=1), log=quiet)
    cfg = lambda out, epochs, **kw: TrainConfig(data=str(tmp_path / "rec"), out=str(tmp_path / out), arch="fixres_cnn",
                                                k_train=32, recipe=Recipe(epochs=epochs, batch_size=16, repeats=1),
                                                backend="torch", device="cpu", workers=1, **kw)
    train(cfg("a", 2), log=quiet)
    train(cfg("b", 1), log=quiet)
    train(cfg("b", 2, resume=True), log=quiet)
    a, b = (torch.load(tmp_path / r / "last.pt", weights_only=False)["model"] for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


CPU = ["common.backend=torch", "common.device=cpu", "common.amp=off", "common.workers=1"]


def test_imagenet_resnet50_recipe_at_a_small_size(tmp_path):
    """The paper's recipe, unchanged but for sizes: the photo sample as ImageNet, fixres_cnn for ResNet-50, two
    K_train, two K_test adapted to, its grid, its ensembles and its repeated augmentation."""
    imagesets.imagenet_tree(tmp_path / "imagenet")
    out = tmp_path / "out"
    sets = CPU + [f"convert.imagenet.src={tmp_path / 'imagenet'}", "convert.imagenet.shards=1",
                  "train.arch=fixres_cnn", "train.k_train=[32, 48]", "train.recipe.epochs=1", "train.recipe.batch_size=8",
                  "train.recipe.lr=0.02", "adapt.k_test=[48, 64]", "adapt.epochs=1", "adapt.batch_size=8",
                  "evaluate.k_test=[32, 48, 64]", "evaluate.ensembles={32 = [64, 48], 48 = [64, 48]}",
                  "analyze.k_train=[48]", "analyze.k_test=[32, 64]", "analyze.limit=4"]
    run("imagenet-resnet50", sets, str(out), log=quiet)
    rows = json.loads((out / "evaluate" / "48" / "evaluate.json").read_text())["rows"]
    assert {(r["adapted_at"], r["res"]) for r in rows} == {(a, k) for a in (None, 48, 64) for k in ("32", "48", "64", "64+48")}
    report = (out / "report.md").read_text()
    assert "| 32 | " in report and "64+48" in report and "train 32 + adapt at 48:" in report


def test_imagenet_resnet50_fast_recipe_at_a_small_size(tmp_path):
    """FFCV's 88-epoch schedule, unchanged but for sizes: progressive resizing (K_train 32, then 64), the linear lr
    after a warm-up, label smoothing, eval at a higher resolution; adapted at two K_test; the network named by its
    schedule in every selector, folder and the report."""
    imagenet = tmp_path / "imagenet"
    imagesets.imagenet_tree(imagenet)
    out = tmp_path / "out"
    sets = CPU + [f"convert.imagenet.src={imagenet}", "convert.imagenet.shards=1", "train.arch=fixres_cnn",
                  'train.k_train=["32:64@0-1"]', "train.eval_res=[80]", "train.recipe.epochs=2",
                  "train.recipe.batch_size=8", "train.recipe.lr=0.02", "train.recipe.warmup_epochs=1",
                  "adapt.k_test=[64, 80]", "adapt.epochs=1", "adapt.batch_size=8", "evaluate.k_test=[32, 64, 80]",
                  'evaluate.ensembles={"32:64@0-1" = [80, 64]}', 'analyze.k_train=["32:64@0-1"]',
                  "analyze.k_test=[32, 80]", "analyze.limit=4"]
    summary = run("imagenet-resnet50-fast", sets, str(out), log=quiet)
    net = "32to64_e0-1"
    assert [s for s, _, _ in summary["plan"]] == ["convert/imagenet", f"train/{net}", f"adapt/{net}-64",
                                                  f"adapt/{net}-80", f"evaluate/{net}", f"analyze/{net}", "report"]
    epochs = [json.loads(line) for line in (out / "train" / net / "metrics.jsonl").read_text().splitlines()]
    assert [(r["k_train"], sorted(k for k in r if k.startswith("top1@"))) for r in epochs] == [
        (32, ["top1@32", "top1@80"]), (64, ["top1@64", "top1@80"])]
    trained = json.loads((out / "train" / net / "stage.json").read_text())["result"]
    assert (trained["k_train"], trained["res"]) == (64, "32:64@0-1")
    rows = json.loads((out / "evaluate" / net / "evaluate.json").read_text())["rows"]
    assert {r["train_res"] for r in rows} == {64}  # the last epoch's K_train, also in the adapted checkpoints
    assert {(r["adapted_at"], r["res"]) for r in rows} == {(a, k) for a in (None, 64, 80) for k in ("32", "64", "80",
                                                                                                   "80+64")}
    report = (out / "report.md").read_text()
    assert "| 32:64@0-1 (last K_train 64) | " in report and "train 32:64@0-1, adapted at 80, test 80:" in report


def test_transfer_recipe_at_a_small_size(tmp_path):
    """Pretrained weights (here a 1000-class fixres_cnn's state_dict, offline) fine-tuned on an ImageFolder tree of
    10 classes (a new classifier), then adapted at a higher K_test."""
    composite_tree(tmp_path / "images", 96, 48, size=48, seed=0)
    weights = tmp_path / "weights.pth"
    torch.save(build_model("fixres_cnn", 1000).state_dict(), weights)
    out = tmp_path / "out"
    lines = []
    sets = CPU + [f"convert.images.src={tmp_path / 'images'}", f"train.init={weights}", "train.arch=fixres_cnn",
                  "train.k_train=[32]", "train.recipe.epochs=1", "train.recipe.batch_size=16", "adapt.k_test=[48]",
                  "adapt.epochs=1", "adapt.batch_size=16", "evaluate.k_test=[32, 48]"]
    run("transfer", sets, str(out), log=lines.append)
    assert any("classifier (fc) replaced by a new one for the data's 10 classes" in str(line) for line in lines)
    rows = json.loads((out / "evaluate" / "32" / "evaluate.json").read_text())["rows"]
    assert {(r["adapted_at"], r["res"]) for r in rows} == {(a, k) for a in (None, 48) for k in ("32", "48")}


def test_pretrained_adapt_recipe_at_a_small_size(tmp_path):
    """Pretrained weights adapted at the K_test chosen on held-out training images, evaluated and exported."""
    composite_tree(tmp_path / "src", 160, 48, size=48, seed=0)
    weights = tmp_path / "weights.pth"
    torch.save(build_model("fixres_cnn", 10).state_dict(), weights)
    out = tmp_path / "out"
    sets = CPU + [f"convert.imagenet.src={tmp_path / 'src'}", "convert.imagenet.layout=folder",
                  f"pretrained.weights={weights}", "pretrained.arch=fixres_cnn", "pretrained.k_train=32",
                  "adapt.candidates=[32, 48]", "adapt.auto_images=160", "adapt.auto_holdout=0.65", "adapt.epochs=1",
                  "adapt.batch_size=16", "evaluate.k_test=[32, 48]"]
    run("pretrained-adapt", sets, str(out), log=quiet)
    adapted = json.loads((out / "adapt" / "pretrained-auto" / "stage.json").read_text())["result"]
    assert adapted["k_test"] in (32, 48) and set(adapted["auto"]["top1"]) == {"32", "48"}
    rows = json.loads((out / "evaluate" / "pretrained" / "evaluate.json").read_text())["rows"]
    assert {(r["adapted_at"], r["res"]) for r in rows} == {(a, k) for a in (None, adapted["k_test"]) for k in ("32", "48")}
    exported = json.loads((out / "export" / "pretrained-auto" / "model" / "fixres.json").read_text())
    assert exported["k_test"] == adapted["k_test"] and exported["k_train"] == 32
    assert "pretrained (K_train 32)" in (out / "report.md").read_text()


def test_run_and_demo_explain_themselves():
    for cmd in (["run"], ["demo"]):
        res = CliRunner().invoke(main, [*cmd, "--help"])
        assert res.exit_code == 0 and "Usage:" in res.output
    assert "--dry-run" in CliRunner().invoke(main, ["run", "--help"]).output


def test_other_weights_under_the_same_name_redo_the_stages_that_read_them(tmp_path):
    weights = tmp_path / "weights.pth"
    sets = [f"convert.imagenet.src={tmp_path}", f"pretrained.weights={weights}", "pretrained.arch=fixres_cnn"]
    torch.save(build_model("fixres_cnn", 10).state_dict(), weights)
    first = {s.name: s.hash for s in _stages("pretrained-adapt", sets, tmp_path)}
    torch.save(build_model("fixres_cnn", 10).state_dict(), weights)  # other random weights
    second = {s.name: s.hash for s in _stages("pretrained-adapt", sets, tmp_path)}
    assert first["convert/imagenet"] == second["convert/imagenet"]
    assert all(first[s] != second[s] for s in ("adapt/pretrained-auto", "evaluate/pretrained", "export/pretrained-auto"))


def _stages(recipe, sets, out):
    from fixres_fast.run import _Builder, load

    _, doc, out = load(recipe, sets, str(out))
    return _Builder(doc, out).build()


def test_demo_options_are_sets_of_the_demo_recipe(tmp_path):
    from fixres_fast.demo import DemoConfig

    lines = []
    cfg = DemoConfig(out=str(tmp_path), k_test=48, baseline=False, n_train=200, epochs=2, seed=3)
    plan = run("demo", cfg.sets(), cfg.out, dry_run=True, log=lines.append)["plan"]
    assert [s for s, _, _ in plan] == ["convert/photos", "convert/composites", "train/32", "adapt/32-48",
                                       "evaluate/32", "analyze/32", "report"]
    from fixres_fast.run import load

    doc = load("demo", cfg.sets())[1]
    composites = doc["convert"]["composites"]
    assert {k: composites[k] for k in ("train_images", "val_images", "size")} == {
        "train_images": 200, "val_images": 100, "size": 48}
    assert (doc["evaluate"]["k_test"], doc["analyze"]["k_test"], doc["train"]["recipe"]["epochs"]) == (
        [32, 40, 48], [16, 32, 40, 48], 2)
    assert doc["common"]["seed"] == 3 and DemoConfig().sets() == []
