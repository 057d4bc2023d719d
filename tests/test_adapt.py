"""FixRes adaptation and evaluation on CPU, on real Fashion-MNIST objects composited on real photos.

A small CNN is trained once per session at K_train = 32 on 64-px composites (two seeds), then adapted.
"""
import json

import pytest
import torch
from click.testing import CliRunner

from fixres_fast import checkpoint
from fixres_fast.adapt import AdaptConfig, adapt
from fixres_fast.cli import main
from fixres_fast.errors import UserError
from fixres_fast.evaluate import leave_one_out_std
from fixres_fast.models import build_model, tuned_modules

from .conftest import CPU, SEEDS


def adapted(composites, tmp_path, seed=0, **kw):
    """Adapt seed ``seed``'s network; on the small set (400 images) unless ``data`` says otherwise."""
    cfg = dict(checkpoint=str(composites["runs"][seed]), data=str(composites["small"]), k_test=64, epochs=1,
               batch_size=64, lr=0.01,
               evaluate=False, out=str(tmp_path / "adapted.pt"), **CPU)
    result = adapt(AdaptConfig(**{**cfg, **kw}), log=lambda *_: None)
    return result, checkpoint.load(result["out"])


def changed_keys(before: dict, after: dict) -> set:
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("tune, scope, expected", [
    ("fc", "last", {"fc.weight", "fc.bias"}),
    ("bn+fc", "last", {"fc.weight", "fc.bias"} | {f"features.19.{p}" for p in
                                                  ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}),
    ("bn-stats", "last", {f"features.19.{p}" for p in ("running_mean", "running_var", "num_batches_tracked")}),
    ("bn-stats", "all", {f"features.{i}.{p}" for i in range(1, 21, 3)
                         for p in ("running_mean", "running_var", "num_batches_tracked")}),
    ("last-stage", "last", {"fc.weight", "fc.bias"} | {f"features.{i}.{p}" for i in (15, 18) for p in ("weight",)}
     | {f"features.{i}.{p}" for i in (16, 19) for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}),
])
def test_only_the_tuned_parameters_and_statistics_change(composites, tmp_path, tune, scope, expected):
    before = checkpoint.load(composites["runs"][0])["model"]
    result, doc = adapted(composites, tmp_path, tune=tune, bn_scope=scope, k_test=32)
    assert changed_keys(before, doc["model"]) == expected
    assert result["cached"] == (tune != "bn-stats")


def test_streaming_matches_the_cached_path_in_what_it_changes(composites, tmp_path):
    before = checkpoint.load(composites["runs"][0])["model"]
    result, doc = adapted(composites, tmp_path, aug="test2", k_test=32)
    assert not result["cached"]
    assert changed_keys(before, doc["model"]) == {"fc.weight", "fc.bias"} | {
        f"features.19.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


def test_adapted_checkpoint_records_its_test_resolution_and_preprocessing(composites, tmp_path):
    _, doc = adapted(composites, tmp_path)
    meta = doc["meta"]
    assert meta["test_res"] == 64 and meta["train_res"] == 32
    assert meta["preprocessing"]["test"]["k_test"] == 64 and meta["preprocessing"]["test"]["mode"] == "test"
    assert meta["adaptation"]["tune"] == "bn+fc" and meta["adaptation"]["data"] == str(composites["small"])
    plain = build_model("fixres_cnn", 10)
    plain.load_state_dict(doc["model"])  # still a plain state_dict


def test_adapting_at_twice_the_train_resolution_beats_no_adaptation(composites, tmp_path):
    """Paper, Table 5-6: at K_test = 2 K_train the unadapted accuracy has fallen and BN+fc fine-tuning
    recovers part of it. Seen here: +2 to +4 points; the test asks for +1 on average and no loss per seed."""
    gains = []
    for seed in SEEDS:
        result, _ = adapted(composites, tmp_path, seed=seed, data=str(composites["data"]), epochs=10, evaluate=True)
        gains.append(result["val_top1_after"] - result["val_top1_before"])
        print(f"seed {seed}: {result['val_top1_before']:.2f} -> {result['val_top1_after']:.2f}")
    assert min(gains) > -0.5 and sum(gains) / len(gains) >= 1.0, gains


def test_auto_picks_a_candidate_and_reports_eq5(composites, tmp_path):
    logs = []
    result = adapt(AdaptConfig(checkpoint=str(composites["runs"][0]), data=str(composites["data"]), k_test=None,
                               epochs=2, batch_size=64, lr=0.01, auto_images=500, evaluate=False,
                               out=str(tmp_path / "auto.pt"), **CPU), log=logs.append)
    assert set(result["auto"]["top1"]) == {32, 64} and result["k_test"] in (32, 64)
    assert result["auto"]["eq5"] == 32  # K_train / (F * 256/224) = 39.6 -> 32
    assert any("Eq. 5 predicts 32" in line for line in logs)


def test_frechet_method_attaches_an_equalisation_that_evaluate_applies(composites, tmp_path):
    result, doc = adapted(composites, tmp_path, method="frechet", stats_images=400)
    eq = doc["meta"]["adaptation"]["frechet"]
    assert eq["xi"] == 0.3 and eq["scale"] > 0 and eq["scale"] != 1
    assert changed_keys(checkpoint.load(composites["runs"][0])["model"], doc["model"]) == set()


def test_bad_inputs_get_clear_errors(composites, tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(build_model("fixres_cnn", 10).state_dict(), plain)
    with pytest.raises(UserError, match="no fixres-fast metadata"):
        adapt(AdaptConfig(checkpoint=str(plain), k_test=64, **CPU))
    for bad in (0, -32):
        with pytest.raises(UserError, match="positive number of pixels"):
            adapt(AdaptConfig(checkpoint=str(composites["runs"][0]), k_test=bad, **CPU))
    with pytest.raises(UserError, match=r"--max-side 585 or more.*--test-res 448 or less"):
        adapt(AdaptConfig(checkpoint=str(composites["runs"][0]), k_test=512, **CPU))


def test_a_model_without_bn_fails_clearly_under_bn_fc(composites, tmp_path):
    doc = checkpoint.load(composites["runs"][0])
    vit = build_model("vit_tiny_patch16_224", 10)
    path = tmp_path / "vit.pt"
    checkpoint.save(path, vit, {**doc["meta"], "arch": "vit_tiny_patch16_224"})
    result = CliRunner().invoke(main, ["adapt", "--checkpoint", str(path), "--test-res", "64", "--tune", "bn+fc",
                                       "--data", str(composites["data"]),
                                       "--backend", "torch", "--device", "cpu"])
    assert result.exit_code == 1 and "no BatchNorm2d before its global pooling" in result.output
    assert "Traceback" not in result.output


def test_tuned_modules_of_a_resnet_are_the_papers():
    model = build_model("resnet18", 10)
    assert list(tuned_modules(model, "bn+fc")) == ["layer4.1.bn2", "fc"]
    # timm's resnet10t: one block in layer4, whose shortcut projection (AvgPool, conv, BN) runs after bn2
    assert list(tuned_modules(build_model("resnet10t", 10), "bn+fc")) == ["layer4.0.bn2", "fc"]
    stage = list(tuned_modules(model, "last-stage", res=64))
    assert stage[0] == "layer4.0.conv1" and stage[-1] == "fc" and all(n.startswith("layer4") for n in stage[:-1])


def test_leave_one_out_std_is_the_papers_definition():
    correct = [1] * 50 + [0] * 50  # folds i % 10: every fold holds 5 hits out of 10
    assert leave_one_out_std(correct) == 0.0
    correct = [1] * 10 + [0] * 90  # fold f holds image f (a hit) and nine misses
    assert leave_one_out_std(correct) == pytest.approx(0.0)
    correct = [1 if i % 10 == 0 else 0 for i in range(100)]  # all hits in fold 0
    accs = [100 * (0 if f == 0 else 10 / 90) for f in range(10)]
    assert leave_one_out_std(correct) == pytest.approx(torch.tensor(accs, dtype=torch.float64).std(unbiased=False).item())


def test_evaluate_cli_writes_both_curves_and_the_ensemble(composites, tmp_path):
    base = composites["runs"][0]
    adapted(composites, tmp_path)
    out = tmp_path / "eval"
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(base), "--checkpoint", str(tmp_path / "adapted.pt"),
                                       "--res", "32,64", "--ensemble", "64,32", "--out", str(out), "--data", str(composites["small"]),
                                       "--backend", "torch", "--device", "cpu", "--workers", "2"])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "evaluate.json").read_text())["rows"]
    assert [(r["adapted_at"], r["res"]) for r in rows] == [(None, "32"), (None, "64"), (None, "64+32"),
                                                            (64, "32"), (64, "64"), (64, "64+32")]
    assert all(0 <= r["top1"] <= r["top5"] <= 100 and r["n"] == 200 and r["top1_std"] >= 0 for r in rows)
    assert (out / "evaluate.csv").read_text().count("\n") == 7
    assert (out / "accuracy.png").stat().st_size > 10_000


def test_fit_takes_one_shared_train_step_per_batch():
    """adapt's fine-tuning loop is engine.train_step under the fine-tuning recipe's schedule: the same weights as
    the step driven by hand, batch by batch."""
    from fixres_fast.adapt import _Job, fit
    from fixres_fast.engine import train_step
    from fixres_fast.spec import finetune_recipe

    torch.manual_seed(0)
    x, y = torch.randn(16, 6), torch.randint(3, (16,))
    tail, by_hand = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    by_hand.load_state_dict(tail.state_dict())
    cfg = AdaptConfig(checkpoint="unused.pt", batch_size=4, lr=0.5)
    job = _Job(cfg, None, "", None, torch.device("cpu"), None, "torch")
    batches = lambda epoch: (((x[s:s + 4],), y[s:s + 4]) for s in range(0, 16, 4))
    fit(tail, [tail], batches, 4, 2, job, lambda *_: None)

    recipe = finetune_recipe(2, 4, 0.5)
    sgd = torch.optim.SGD(by_hand.parameters(), lr=recipe.base_lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay)
    for epoch in range(2):
        for i, (inputs, labels) in enumerate(batches(epoch)):
            sgd.param_groups[0]["lr"] = recipe.lr_at(epoch + i / 4)
            train_step(by_hand, inputs, labels, sgd, torch.nn.functional.cross_entropy, None)
    assert recipe.lr_at(1.0) != recipe.lr_at(0.0)  # the schedule decays within the two epochs
    for a, b in zip(tail.parameters(), by_hand.parameters()):
        assert torch.equal(a, b)


def test_a_missing_val_file_is_an_error_not_a_missing_split(composites, tmp_path):
    """Only a data set without a validation split skips the before/after top-1; a val split whose records are gone
    is reported."""
    import shutil

    data = tmp_path / "small"
    shutil.copytree(composites["small"], data)
    for f in data.glob("val*"):
        if f.suffix in (".beton", ".rec"):
            f.unlink()
    with pytest.raises(UserError) as e:
        adapted(composites, tmp_path, data=str(data), evaluate=True, backend="torch")
    assert "has no split" not in str(e.value) and "val" in str(e.value)


# --- On several processes: `adapt --gpus N` (torchrun, gloo CPU processes) -------------------------------------


def adapt_cli(composites, out, *extra):
    """`fixres-fast adapt` of seed 0's network at 64 on the small set, as a command."""
    import sys

    return [sys.executable, "-m", "fixres_fast.cli", "adapt", "--checkpoint", str(composites["runs"][0]), "--data",
            str(composites["small"]), "--test-res", "64", "--batch-size", "64", "--lr", "0.01", "--backend", "torch",
            "--device", "cpu", "--workers", "1", "--amp", "off", "--out", str(out), *extra]


def run_cli(cmd):
    import subprocess

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_two_processes_each_cache_half_the_trunk_and_fit_what_one_process_fits(composites, tmp_path):
    """The cached path (test DA): each process runs the frozen trunk over its shard, the shards are gathered in stored
    order and every process fits the same layers on the whole cache: one process's weights and val top-1."""
    one, _ = adapted(composites, tmp_path, epochs=2, evaluate=True)
    stdout = run_cli(adapt_cli(composites, tmp_path / "two.pt", "--epochs", "2", "--gpus", "2"))
    assert "cached the frozen trunk's output for 400 images at K_test=64" in stdout
    assert "each of 2 processes ran it over ~200" in stdout
    assert stdout.count("wrote ") == 1 and stdout.count("val top-1 at K_test=64") == 1  # rank 0 alone saves, logs
    two = checkpoint.load(tmp_path / "two.pt")
    base, mine, ref = (checkpoint.load(p)["model"] for p in (composites["runs"][0], tmp_path / "two.pt", one["out"]))
    assert changed_keys(base, ref) and mine.keys() == ref.keys()
    for k in ref:
        assert torch.allclose(mine[k].float(), ref[k].float(), rtol=1e-4, atol=1e-6), k
    info = two["meta"]["adaptation"]
    assert info["processes"] == 2 and info["cached"] and one["processes"] == 1
    assert (info["val_top1_before"], info["val_top1_after"]) == (one["val_top1_before"], one["val_top1_after"])


def test_a_streamed_adaptation_on_two_processes_is_data_parallel_and_saves_what_every_rank_holds(composites, tmp_path):
    """Test DA2 streams through the trunk: B / 2 images a process, DDP averaging the gradients. The val top-1 and loss
    the processes measured together (each on its shard, with its own model) are those of the checkpoint rank 0 saved:
    every process holds rank 0's model (its BN statistics too, which each process's own batches updated)."""
    import math
    import re

    from fixres_fast.evaluate import EvalConfig, evaluate

    stdout = run_cli(adapt_cli(composites, tmp_path / "two.pt", "--aug", "test2", "--epochs", "1", "--gpus", "2"))
    loss = float(re.search(r"fine-tuned 1 epochs: last epoch's loss ([-\w.]+)", stdout).group(1))
    assert math.isfinite(loss) and stdout.count("wrote ") == 1
    doc = checkpoint.load(tmp_path / "two.pt")
    info = doc["meta"]["adaptation"]
    assert info["processes"] == 2 and not info["cached"] and info["aug"] == "test2"
    assert changed_keys(checkpoint.load(composites["runs"][0])["model"], doc["model"]) == {"fc.weight", "fc.bias"} | {
        f"features.19.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    build_model("fixres_cnn", 10).load_state_dict(doc["model"])
    [row] = evaluate(EvalConfig(checkpoints=(str(tmp_path / "two.pt"),), data=str(composites["small"]), k_test=(64,),
                                **CPU), log=lambda *_: None)
    assert row["top1"] == pytest.approx(info["val_top1_after"])
    assert row["loss"] == pytest.approx(info["val_loss_after"], rel=1e-5)


def test_a_batch_the_processes_cannot_share_is_one_line(composites, tmp_path):
    args = adapt_cli(composites, tmp_path / "x.pt", "--aug", "test2", "--gpus", "2")[3:]
    args[args.index("--batch-size") + 1] = "63"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines() == [
        "Error: --batch-size 63 (over all processes) must divide by the 2 processes: with --aug test2 the fine-tuning "
        "streams through the trunk, B / 2 images a process; use e.g. --batch-size 64"]
    assert not (tmp_path / "x.pt").exists()


def test_fewer_training_images_than_processes_is_each_processs_one_line(composites, tmp_path):
    """A process whose shard would hold no image would wait in the gathers for ever: each says why and stops."""
    import subprocess

    from fixres_fast.convert import ConvertConfig, convert
    from fixres_fast.sampledata import composite_tree

    composite_tree(tmp_path / "src", n_train=1, n_val=2, seed=0)
    convert(ConvertConfig(layout="folder", src=str(tmp_path / "src"), out=str(tmp_path / "one"), workers=1),
            log=lambda *_: None)
    cmd = adapt_cli(composites, tmp_path / "x.pt", "--gpus", "2")
    cmd[cmd.index("--data") + 1] = str(tmp_path / "one")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and not (tmp_path / "x.pt").exists()
    assert (done.stdout + done.stderr).count("train split holds 1 images, fewer than the 2 processes") == 2
