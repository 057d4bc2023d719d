"""`fixres-fast profile`: what it measures grows with the resolution; bad arguments get clear errors."""
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
from fixres_fast.profile import (TABLE7, ProfileConfig, _adaptation_mode, layers_to_adapt, parse_resolutions,
                                 table7_comparison)


@pytest.fixture
def one_thread():
    """One thread: timings on a shared 2-core machine are steadier (this test checks shapes, not speed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_profile_costs_grow_with_resolution(tmp_path, one_thread):
    # resolutions 3-4x apart, so that costs 9-16x apart stay ordered on a loaded machine
    res = CliRunner().invoke(main, ["profile", "--arch", "resnet18", "--res", "40,128,384", "--batch-size", "1",
                                    "--device", "cpu", "--warmup", "2", "--repeats", "3", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "profile.csv")))
    assert [int(r["res"]) for r in rows] == [40, 128, 384]
    for phase in ("train", "adapt"):
        cost = [float(r[f"{phase}_forward_ms"]) + float(r[f"{phase}_backward_ms"]) for r in rows]
        assert cost == sorted(cost), (phase, cost)
    infer = [float(r["infer_forward_ms"]) for r in rows]
    assert infer == sorted(infer)
    summary = json.loads((tmp_path / "profile.json").read_text())
    assert 0.7 < summary["exponents"]["train"] < 3.0, summary["exponents"]
    assert summary["adapted_layers"] == ["layer4.1.bn2", "fc"]
    assert (tmp_path / "profile.png").stat().st_size > 10_000
    assert "Table 7" in res.output and "train backward / forward at 128" in res.output


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
