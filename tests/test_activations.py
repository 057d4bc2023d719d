"""`fixres-fast analyze activations` (Fig. 3 and 4): the pooled activations' distribution against K_test.

The composites' network is trained at K_train = 32 on 64-px images (stored with --max-side 512, so test DA
is possible up to K_test = 448 and 480 is skipped). Measured on it (300 validation images): from K_test = 32
to 64 the fraction of zeros falls from about 3% to 0.1% and the values contract (p99 about 1.25 -> 0.74,
mean 0.32 -> 0.23): the paper's Sec. 3.2 direction, "increasing the resolution [...] the output is less
sparse and less spread out". The mean falls with the resolution too for this model, so the tests assert
that (and the paper's sparsity and spread), not a larger mean at the higher resolution.
"""
import csv
import json

import pytest
import torch
from click.testing import CliRunner

from fixres_fast import checkpoint
from fixres_fast.adapt import AdaptConfig, adapt
from fixres_fast.analysis.activations import FIELDS, ActivationsConfig, pooled_activations
from fixres_fast.cli import main
from fixres_fast.errors import UserError
from fixres_fast.checkpoint import model_from_checkpoint
from fixres_fast.engine import pooled_features
from fixres_fast.loaders import LoaderConfig, make_loader

from .conftest import CPU

LIMIT = 300


def _rows(result_rows, checkpoint_path):
    return {int(r["res"]): r for r in result_rows if r["checkpoint"] == str(checkpoint_path)}


def test_fig3_sparsity_and_spread_fall_with_the_test_resolution(composites):
    base = composites["runs"][0]
    logs = []
    result = pooled_activations(ActivationsConfig(checkpoints=(str(base),), k_test=(32, 64, 480), limit=LIMIT, **CPU),
                                log=logs.append)
    rows = _rows(result.rows, base)
    assert sorted(rows) == [32, 64]
    # 480 needs K_test^image = 549 px > --max-side 512: skipped with a warning, not a crash
    assert [s["res"] for s in result.skipped] == [480]
    assert any(line.startswith("warning: skipping K_test=480") and "--max-side 512" in line for line in logs)
    for r in rows.values():
        assert r["n_images"] == LIMIT and r["n_values"] == LIMIT * 128  # fixres_cnn pools 128 channels
        assert 0 <= r["frac_zero"] <= 1 and 0 <= r["frac_above_2"] <= 1
        assert r["train_res"] == 32 and r["adapted_at"] is None
    # the paper's direction (Sec. 3.2): a smaller map pools more all-zero channels and spreads the values
    low, high = rows[32], rows[64]
    assert low["frac_zero"] > 5 * high["frac_zero"] and low["frac_zero"] > 0.005
    assert low["p99"] > 1.3 * high["p99"] and low["mean"] > high["mean"]
    assert all(q[0] >= 0 for q in result.cdfs)  # after a ReLU and average pooling: nothing below 0

    # the same images through pooled_features directly give the same fraction of zeros and the same mean
    doc = checkpoint.load(base)
    model = model_from_checkpoint(doc, torch.device("cpu"))
    for k in (32, 64):
        loader = make_loader("torch", checkpoint.meta_of(doc).test_spec(k), str(composites["data"]), "val",
                             LoaderConfig(batch_size=100, device="cpu", workers=2, training=False))
        feats, _ = pooled_features(model, loader, LIMIT)
        del loader
        assert feats.shape == (LIMIT, 128)
        assert rows[k]["frac_zero"] == pytest.approx((feats == 0).double().mean().item(), abs=1e-12)
        assert rows[k]["mean"] == pytest.approx(feats.double().mean().item(), rel=1e-6)


def test_cli_before_and_after_adaptation(composites, tmp_path):
    base = composites["runs"][0]
    tuned = tmp_path / "bnfc64.pt"
    adapt(AdaptConfig(checkpoint=str(base), k_test=64, epochs=1, batch_size=64, lr=0.01, evaluate=False,
                      out=str(tuned), **CPU), log=lambda *_: None)
    # a Fréchet-adapted checkpoint with a known map, to check that the measured vector is the one after it
    doc = checkpoint.load(base)
    scale, shift = 1.5, -0.05
    frechet = tmp_path / "frechet64.pt"
    torch.save({"model": doc["model"], "meta": {**doc["meta"], "adaptation": {
        "k_test": 64, "method": "frechet", "tune": "fc", "data": str(composites["data"]),
        "frechet": {"scale": scale, "shift": shift}}}}, frechet)

    out = tmp_path / "act"
    args = ["analyze", "activations", "--res", "64,32", "--limit", str(LIMIT), "--backend", "torch", "--device", "cpu",
            "--workers", "2", "--out", str(out)]
    res = CliRunner().invoke(main, args + [a for c in (base, tuned, frechet) for a in ("--checkpoint", str(c))])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    assert "bnfc64.pt (train 32, adapted at 64 (bn+fc)) @ K_test=64: zeros" in res.output

    rows = list(csv.DictReader(open(out / "activations.csv")))
    assert tuple(rows[0]) == FIELDS and len(rows) == 3 * 2
    doc_json = json.loads((out / "activations.json").read_text())
    assert doc_json["config"]["k_test"] == [64, 32] and len(doc_json["rows"]) == 6  # in the order given
    assert len(doc_json["cdf"]["quantiles"]) == 6 and doc_json["git"]
    assert (out / "activations.png").stat().st_size > 20_000
    assert not list(out.glob("*.partial"))
    for r in rows:
        assert 0 <= float(r["frac_zero"]) <= 1 and 0 <= float(r["frac_above_2"]) <= 1
        assert int(r["n_images"]) == LIMIT

    before, after, eq = (_rows(doc_json["rows"], c) for c in (base, tuned, frechet))
    assert after[64]["adapted_at"] == 64 and after[64]["adaptation"] == "bn+fc"
    # Fig. 4: re-estimating the last BN at K_test = 64 moves the pooled values back towards those at K_train
    assert abs(after[64]["mean"] - before[32]["mean"]) < 0.8 * abs(before[64]["mean"] - before[32]["mean"])
    # the Fréchet map acts on the non-zero components: zeros stay zeros, the mean moves exactly by the map
    for k in (32, 64):
        assert eq[k]["adaptation"] == "frechet"
        assert eq[k]["frac_zero"] == pytest.approx(before[k]["frac_zero"], abs=1e-12)
        expected = scale * before[k]["mean"] + shift * (1 - before[k]["frac_zero"])
        assert eq[k]["mean"] == pytest.approx(expected, rel=1e-5)


def _one_line_error(res, *words):
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for w in words:
        assert w in lines[0], res.output


@pytest.mark.parametrize("res, words", [("0,64", ("positive", "0")), ("-5", ("positive", "-5")),
                                        ("64,abc", ("comma-separated",)), ("", ("at least one",))])
def test_bad_resolutions_are_one_line_errors(tmp_path, res, words):
    out = CliRunner().invoke(main, ["analyze", "activations", "--checkpoint", str(tmp_path / "x.pt"), "--res", res])
    _one_line_error(out, *words)


def test_bad_checkpoints_are_one_line_errors(tmp_path):
    runner = CliRunner()
    _one_line_error(runner.invoke(main, ["analyze", "activations", "--checkpoint", str(tmp_path / "missing.pt")]),
                    "does not exist")
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    _one_line_error(runner.invoke(main, ["analyze", "activations", "--checkpoint", str(plain)]), "no fixres-fast metadata")
    with pytest.raises(UserError, match="--limit"):
        ActivationsConfig(checkpoints=(str(plain),), limit=0)


def test_only_too_large_resolutions_is_an_error(composites):
    res = CliRunner().invoke(main, ["analyze", "activations", "--checkpoint", str(composites["runs"][0]),
                                    "--res", "480,512", "--device", "cpu", "--backend", "torch"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.count("warning: skipping") == 2
    assert res.output.strip().splitlines()[-1].startswith("Error: no test resolution could be measured")
