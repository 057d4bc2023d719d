"""`fixres-fast profile`: its outputs and their relations, the adaptation step's graph, Table 7; bad arguments get clear errors."""
import csv
import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from fixres_fast.cli import main
from fixres_fast.errors import UserError
from fixres_fast.models import build_model, classifier, last_bn_before_pool
from fixres_fast.profile import TABLE7, ProfileConfig, _adaptation_mode, fit_exponent, layers_to_adapt, table7_comparison
from fixres_fast.runtime import parse_resolutions


def test_profile_writes_its_table_summary_and_plot(tmp_path):
    """The command's outputs and how they relate. No timing claim: how cost grows with K is measured by the
    command itself (docs/BENCHMARKS.md, "Cost against resolution"), not asserted on a shared CI machine."""
    res = CliRunner().invoke(main, ["profile", "--arch", "resnet18", "--res", "64,32", "--batch-size", "2",
                                    "--device", "cpu", "--warmup", "1", "--repeats", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "profile.csv")))
    assert [int(r["res"]) for r in rows] == [32, 64]  # smallest first
    for r in rows:
        ms = {p: float(r[f"{p}_forward_ms"]) + float(r.get(f"{p}_backward_ms") or 0) for p in ("train", "adapt", "infer")}
        assert all(v > 0 for v in ms.values()), r
        for p, v in ms.items():  # images per second is the batch over the phase's time
            assert float(r[f"{p}_img_s"]) == pytest.approx(1e3 * 2 / v, rel=1e-6)
        assert r["train_peak_mib"] == ""  # the CUDA allocator's peak: none on CPU
    summary = json.loads((tmp_path / "profile.json").read_text())
    train = [float(r["train_forward_ms"]) + float(r["train_backward_ms"]) for r in rows]
    assert summary["exponents"]["train"] == pytest.approx(fit_exponent([32, 64], train), rel=1e-6)
    assert summary["adapted_layers"] == ["layer4.1.bn2", "fc"]
    assert summary["config"]["resolutions"] == [64, 32] and summary["config"]["arch"] == "resnet18"
    assert (tmp_path / "profile.png").stat().st_size > 10_000
    assert "Table 7" in res.output and "train backward / forward at 128" in res.output


def test_fit_exponent_recovers_a_power_law():
    assert fit_exponent([64, 128, 224, 384], [3.0 * k ** 2 for k in (64, 128, 224, 384)]) == pytest.approx(2.0)
    assert fit_exponent([32, 64], [5.0, 10.0]) == pytest.approx(1.0)


def test_adaptation_step_trains_only_last_bn_and_classifier_without_backward_through_trunk():
    model = build_model("resnet18", 10)
    bn, fc = last_bn_before_pool(model)[1], classifier(model)
    _adaptation_mode(model, (bn, fc))
    loss = model(torch.randn(2, 3, 64, 64)).logsumexp(1).mean()
    nodes, todo = set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in nodes:
            nodes.add(node)
            todo.extend(n for n, _ in node.next_functions)
    names = {type(n).__name__ for n in nodes}
    assert not any("Convolution" in n for n in names), names  # autograd recorded nothing of the trunk
    assert any("BatchNorm" in n for n in names)
    loss.backward()
    learning = {id(p) for m in (bn, fc) for p in m.parameters()}
    assert all((p.grad is not None) == (id(p) in learning) for p in model.parameters())
    assert bn.training and not model.layer1.training


def test_a_model_without_batchnorm_adapts_its_classifier_only():
    class NoBN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    notes = []
    assert list(layers_to_adapt(NoBN(), notes.append)) == ["fc"]
    assert "classifier only" in notes[0]
    assert list(layers_to_adapt(build_model("resnet18", 10))) == ["layer4.1.bn2", "fc"]


def test_table7_is_read_as_the_paper_prints_it():
    assert TABLE7["train"][224] == (15.2, 35.0) and TABLE7["finetune"][384] == (18.0, 8.2)
    ratios = {name: paper for name, paper, _ in table7_comparison([])}
    assert ratios["train backward / forward at 224"] == pytest.approx(35.0 / 15.2)
    assert ratios["train step at 384 / at 224"] == pytest.approx((18.2 + 112.4) / (15.2 + 35.0))
    assert ratios["adapt / train step per image at 224"] == pytest.approx((18.8 / 64) / (50.2 / 32))


@pytest.mark.parametrize("text", ["-64,128", "64,abc", "0,128", "224"])
def test_bad_resolutions_are_refused(text):
    with pytest.raises(UserError, match="resolutions"):
        ProfileConfig(resolutions=parse_resolutions(text))


@pytest.mark.parametrize("bad", [dict(amp="fp8"), dict(device="tpu"), dict(batch_size=0), dict(warmup=-1)])
def test_bad_options_are_refused(bad):
    with pytest.raises(UserError):
        ProfileConfig(**bad)


def test_unknown_arch_is_a_one_line_error_with_suggestions():
    proc = subprocess.run([sys.executable, "-m", "fixres_fast.cli", "profile", "--arch", "resnet5", "--res", "32,64",
                           "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "unknown architecture 'resnet5'" in proc.stderr and "resnet50" in proc.stderr


def test_negative_resolution_on_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "fixres_fast.cli", "profile", "--res=-64,128"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "positive resolutions" in proc.stderr


def test_profile_path_imports_neither_dali_nor_ffcv():
    code = ("import sys, fixres_fast.cli, fixres_fast.profile; "
            "sys.exit(any(m.split('.')[0] in ('ffcv', 'nvidia') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_resolution_too_small_for_the_model_is_one_user_error():
    """At 8 px with one image per batch, resnet18's last BN sees one value per channel (torch raises a ValueError):
    a resolution too small, said as such."""
    from fixres_fast.profile import profile

    cfg = ProfileConfig(arch="resnet18", resolutions=(8, 16), batch_size=1, device="cpu", num_classes=2,
                        warmup=0, repeats=1)
    with pytest.raises(UserError, match="cannot run at K=8.*choose larger resolutions"):
        profile(cfg)
