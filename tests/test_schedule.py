"""Progressive resizing (`train --res MIN:MAX@START-END`): FFCV's law, its parsing, the trainer at each epoch's
K_train (loaders, metrics, checkpoints, resume), and the linear learning-rate schedule of FFCV's example."""
import json
import signal
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fixres_fast import checkpoint
from fixres_fast.cli import main
from fixres_fast.convert import ConvertConfig, convert
from fixres_fast.errors import UserError
from fixres_fast.sampledata import composite_tree
from fixres_fast.spec import Recipe, ResolutionSchedule, k_trains, parse_res
from fixres_fast.train import TrainConfig, resume_changes, train


def quiet(*_):
    pass


def ffcv_get_resolution(epoch, min_res, max_res, end_ramp, start_ramp):
    """FFCV's ImageNet example's law (train_imagenet.py, ImageNetTrainer.get_resolution), restated with numpy."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    return int(np.round(np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])[0] / 32)) * 32


def test_the_88_epoch_config_trains_at_160_up_to_epoch_70_and_at_192_after():
    s = parse_res("160:192@65-76")
    assert s == ResolutionSchedule(160, 192, 65, 76) and str(s) == "160:192@65-76"
    assert [s.k_train_at(e) for e in range(88)] == [160] * 71 + [192] * 17
    assert k_trains(s, 88) == (160, 192) and k_trains(s, 70) == (160,)


def test_the_ramp_rounds_to_multiples_of_32_a_half_to_even_as_numpy_does():
    s = ResolutionSchedule(128, 192, 0, 4)  # the ramp passes 144 (4.5 x 32) and 176 (5.5 x 32)
    assert [s.k_train_at(e) for e in range(6)] == [128, 128, 160, 192, 192, 192]
    # endpoints are MIN and MAX themselves, multiples of 32 or not; only the ramp between is rounded
    odd = ResolutionSchedule(100, 300, 2, 10)
    assert [odd.k_train_at(e) for e in (0, 2, 3, 9, 10, 11)] == [100, 100, 128, 288, 300, 300]
    assert [ResolutionSchedule(160, 192, 5, 5).k_train_at(e) for e in (4, 5, 6)] == [160, 160, 192]


@pytest.mark.parametrize("schedule", [(160, 192, 65, 76), (160, 192, 11, 13), (128, 224, 3, 40), (64, 512, 0, 7),
                                      (96, 100, 1, 2), (160, 288, 17, 20), (32, 64, 0, 2)])
def test_every_epoch_follows_ffcvs_get_resolution(schedule):
    lo, hi, start, end = schedule
    s = ResolutionSchedule(*schedule)
    assert [s.k_train_at(e) for e in range(end + 5)] == [ffcv_get_resolution(e, lo, hi, end, start) for e in range(end + 5)]


def test_a_plain_resolution_stays_an_integer():
    assert parse_res("160") == 160 and parse_res(" 224 ") == 224 and k_trains(160, 3) == (160,)


def train_error(res: str) -> str:
    out = CliRunner().invoke(main, ["train", "--data", "nowhere", "--res", res])
    assert out.exit_code == 1 and "Traceback" not in out.output, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1, out.output
    return lines[0]


SYNTAX = "expected a resolution such as 224, or MIN:MAX@START-END such as 160:192@65-76"


@pytest.mark.parametrize("res, expected", [
    ("192:160@65-76", "--res 192:160@65-76: MIN 192 is above MAX 160"),
    ("160:192@76-65", "--res 160:192@76-65: the ramp must start at an epoch >= 0 and not after it ends, got START 76, END 65"),
    ("0:192@65-76", "--res 0:192@65-76: MIN must be a positive number of pixels"),
    ("0", "--res 0: a resolution must be a positive number of pixels"),
    ("160:big@65-76", "--res '160:big@65-76': " + SYNTAX),
    ("160:192", "--res '160:192': " + SYNTAX),
    ("160:192@65", "--res '160:192@65': " + SYNTAX),
    ("160@65-76", "--res '160@65-76': " + SYNTAX),
    ("160:192@-1-5", "--res '160:192@-1-5': " + SYNTAX),
    ("1.5", "--res '1.5': " + SYNTAX),
])
def test_a_bad_schedule_is_one_line_pointing_at_the_syntax(res, expected):
    line = train_error(res)
    assert expected in line and SYNTAX in line, line


def test_train_help_explains_the_syntax():
    text = " ".join(CliRunner().invoke(main, ["train", "--help"], terminal_width=100).output.split())
    assert "MIN:MAX@START-END" in text and "160:192@65-76" in text and "multiples of 32" in text
    assert "linear" in text


def test_the_linear_schedule_is_ffcvs_triangle_after_its_warm_up():
    r = Recipe(epochs=88, lr=1.7, schedule="linear", warmup_epochs=2)
    # FFCV's 'cyclic' lr (get_cyclic_lr, lr_peak_epoch 2): np.interp(epoch, [0, 2, 88], [1e-4 * lr, lr, 0])
    ffcv = lambda e: float(np.interp([e], [0, 2, 88], [1e-4 * 1.7, 1.7, 0])[0])
    for e in (2, 2.5, 30, 45, 87.99, 88):
        assert r.lr_at(e) == pytest.approx(ffcv(e), abs=1e-12)
    assert r.lr_at(0) == 0 and r.lr_at(1) == pytest.approx(ffcv(1), rel=1e-3)  # ours warms up from 0, FFCV's from 1e-4 lr


def test_resuming_compares_the_epochs_of_a_linear_schedule_and_the_schedule_of_resolutions():
    data = {"path": "/d", "manifest_sha256": None}
    old = TrainConfig(data="/d", k_train=ResolutionSchedule(32, 64, 0, 2), recipe=Recipe(epochs=2, schedule="linear"))
    longer = TrainConfig(data="/d", k_train=ResolutionSchedule(32, 64, 0, 2), recipe=Recipe(epochs=3, schedule="linear"))
    assert resume_changes(asdict(old), data, longer, data) == {"--epochs": (2, 3)}
    other = TrainConfig(data="/d", k_train=ResolutionSchedule(32, 64, 0, 1), recipe=old.recipe)
    assert resume_changes(asdict(old), data, other, data) == {"--res": ("32:64@0-2", "32:64@0-1")}
    plain = TrainConfig(data="/d", k_train=32, recipe=old.recipe)
    assert resume_changes(asdict(old), data, plain, data) == {"--res": ("32:64@0-2", 32)}


# --- the trainer ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def composites64(tmp_path_factory):
    """48 train + 16 val composites of 64 px, converted: K_train 32 to 64."""
    root = tmp_path_factory.mktemp("schedule")
    composite_tree(root / "src", 48, 16, size=64, seed=0)
    convert(ConvertConfig(layout="folder", src=str(root / "src"), out=str(root / "rec"), max_side=64, workers=1),
            log=quiet)
    return root / "rec"


def tiny(data, out, epochs, res="32:64@0-2", **kw):
    return TrainConfig(data=str(data), out=str(out), arch="fixres_cnn", k_train=parse_res(res),
                       recipe=Recipe(epochs=epochs, batch_size=16, lr=0.05, repeats=1), backend="torch", device="cpu",
                       workers=1, **kw)


def test_each_epoch_trains_and_evaluates_at_its_k_train_and_the_checkpoint_records_the_last(composites64, tmp_path,
                                                                                           monkeypatch):
    import fixres_fast.loaders as loaders

    built, make = [], loaders.make_loader
    monkeypatch.setattr(loaders, "make_loader", lambda backend, spec, source, split, config: (
        built.append((split, spec.size)), make(backend, spec, source, split, config))[1])
    train(tiny(composites64, tmp_path, 3, eval_res=(48,)), log=quiet)  # K_train 32, then 64 (48 rounds up), 64
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["k_train"] for r in lines] == [32, 64, 64]
    assert [sorted(k for k in r if k.startswith("top1@")) for r in lines] == [["top1@32", "top1@48"]] + [
        ["top1@48", "top1@64"]] * 2
    assert built == [("train", 32), ("val", 32), ("val", 48), ("train", 64), ("val", 64)]  # each built once
    doc = checkpoint.load(tmp_path / "last.pt")
    meta = checkpoint.meta_of(doc)
    assert (meta.k_train, meta.k_test, meta.train_da.k_train, meta.test_da.k_test) == (64, 64, 64, 64)
    assert doc["config"]["k_train"] == {"min_res": 32, "max_res": 64, "start_ramp": 0, "end_ramp": 2}
    best = checkpoint.meta_of(checkpoint.load(tmp_path / "best.pt"))
    assert best.k_train == lines[best.epoch]["k_train"]


def test_a_run_stopped_before_the_ramp_records_the_k_train_it_trained_at(composites64, tmp_path):
    train(tiny(composites64, tmp_path, 1), log=quiet)
    assert checkpoint.meta_of(checkpoint.load(tmp_path / "last.pt")).k_train == 32


def test_resumed_across_the_change_of_resolution_equals_uninterrupted(composites64, tmp_path):
    train(tiny(composites64, tmp_path / "a", 3), log=quiet)
    train(tiny(composites64, tmp_path / "b", 1), log=quiet)
    with pytest.raises(UserError, match=r"--res 32:64@0-2 -> 32:64@0-1\. Resume with the same ones"):
        train(tiny(composites64, tmp_path / "b", 3, res="32:64@0-1", resume=True), log=quiet)
    train(tiny(composites64, tmp_path / "b", 3, resume=True), log=quiet)
    a, b = (checkpoint.load(tmp_path / r / "last.pt")["model"] for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_every_k_train_the_schedule_reaches_is_checked_against_the_records(composites64, tmp_path):
    with pytest.raises(UserError, match=r"--res 32:96@0-2's K_train 96 resizes a region of each image to K_train = 96 px"):
        train(tiny(composites64, tmp_path, 3, res="32:96@0-2"), log=quiet)
    train(tiny(composites64, tmp_path, 1, res="32:96@1-2"), log=quiet)  # epoch 0 never reaches 96: trains


def test_sigterm_mid_epoch_at_the_new_resolution_then_resume_equals_uninterrupted(composites64, tmp_path, monkeypatch):
    """As test_train's SIGTERM test, in one process, across a change of K_train: SIGTERM arrives as epoch 0 (at 32 px)
    ends, so the stop lands at the first check of epoch 1 (at 64 px), after 2 of its 6 steps."""
    import fixres_fast.train as trainer

    monkeypatch.setattr(trainer, "CHECK_EVERY", 2)  # steps between checks of stop requests

    def stop_after_epoch_0(line):
        if str(line).startswith("top1@32=") and "epoch=0 " in str(line):
            signal.raise_signal(signal.SIGTERM)

    cfg = lambda out, **kw: replace(tiny(composites64, tmp_path / out, 2, res="32:64@0-1"),
                                    recipe=Recipe(epochs=2, batch_size=8, lr=0.05, repeats=1), **kw)
    stopped = train(cfg("s"), log=stop_after_epoch_0)
    assert stopped == {"interrupted": True, "signal": signal.SIGTERM, "epoch": 1, "step": 2}
    assert checkpoint.meta_of(checkpoint.load(tmp_path / "s" / "last.pt")).k_train == 64
    train(cfg("s", resume=True), log=quiet)
    train(cfg("u"), log=quiet)
    a, b = (checkpoint.load(tmp_path / r / "last.pt")["model"] for r in "su")
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed, whole = ([json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
                      for r in "su")
    assert [r["k_train"] for r in resumed] == [r["k_train"] for r in whole] == [32, 64]
    for r, w in zip(resumed, whole):
        assert r["train_loss"] == pytest.approx(w["train_loss"], rel=1e-5)
