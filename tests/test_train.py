"""The trainer, on CPU, on the real-photo records: recipe, AMP step, resume, DDP, checkpoints, faults."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import torchvision
from torch import nn

from fixres_fast import checkpoint
from fixres_fast.errors import UserError
from fixres_fast.spec import Recipe
from fixres_fast.engine import train_step
from fixres_fast.train import TrainConfig, train

lr_at = Recipe.lr_at  # the schedule: Recipe.lr_at(recipe, epoch)

TINY = dict(arch="resnet18", k_train=32, backend="torch", device="cpu", workers=1, aug="test")


def quiet(*_):
    pass


def tiny(data, out, epochs=2, **kw):
    recipe = Recipe(epochs=epochs, batch_size=8, repeats=1, lr=kw.pop("lr", 0.02))
    return TrainConfig(data=str(data), out=str(out), recipe=recipe, **{**TINY, **kw})


def test_recipe_defaults_are_the_papers():
    r = Recipe()
    assert (r.epochs, r.batch_size, r.momentum, r.weight_decay, r.repeats) == (120, 512, 0.9, 1e-4, 3)
    assert r.base_lr == pytest.approx(0.1 * 512 / 256)
    assert [lr_at(r, e) for e in (0, 29.9, 30, 60, 90)] == pytest.approx([0.2, 0.2, 0.02, 0.002, 0.0002])
    cos = Recipe(schedule="cosine", warmup_epochs=5)
    assert lr_at(cos, 2.5) == pytest.approx(0.1) and lr_at(cos, 120) == pytest.approx(0.0)


class CountingSGD(torch.optim.SGD):
    steps = 0

    def step(self, closure=None):
        CountingSGD.steps += 1
        return super().step(closure)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, None])
def test_amp_step_runs_forward_under_autocast_and_steps_once(dtype):
    seen = []
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3))
    model(torch.zeros(1, 3, 8, 8))
    model[2].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    opt = CountingSGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu") if dtype == torch.float16 else None
    before = [p.detach().clone() for p in model.parameters()]
    CountingSGD.steps = 0
    loss = train_step(model, torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]), opt, nn.CrossEntropyLoss(), dtype, scaler)
    assert seen == [dtype or torch.float32], "the forward pass must run inside autocast"
    assert CountingSGD.steps == 1
    assert torch.isfinite(loss) and all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_loss_falls_and_the_metrics_reach_tensorboard(imagenet_records, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny(imagenet_records["out"], tmp_path, epochs=8, lr=0.01, k_train=64, tensorboard=True), log=quiet)
    losses = [json.loads(line)["train_loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert min(losses[-2:]) < 0.6 * losses[0], losses
    board = EventAccumulator(str(tmp_path / "tensorboard"))
    board.Reload()
    logged = board.Scalars("train_loss")
    assert [e.step for e in logged] == list(range(8))
    assert [e.value for e in logged] == pytest.approx(losses, rel=1e-5)
    assert "top1@64" in board.Tags()["scalars"]


def test_out_of_memory_names_the_batch_size_and_resolution(imagenet_records, tmp_path, monkeypatch):
    """What a CUDA OOM inside a training step becomes (raised here by the step itself: no GPU in CI)."""
    import fixres_fast.train as trainer

    def oom(*_, **__):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "train_step", oom)
    with pytest.raises(UserError, match=r"out of memory at --batch-size 8 \(8 per GPU\) and --res 64: lower one"):
        train(tiny(imagenet_records["out"], tmp_path, epochs=1, k_train=64), log=quiet)


def weights(path):
    return checkpoint.load(path)["model"]


def test_resume_equals_uninterrupted(imagenet_records, tmp_path):
    data = imagenet_records["out"]
    train(tiny(data, tmp_path / "a", epochs=2), log=quiet)
    train(tiny(data, tmp_path / "b", epochs=1), log=quiet)
    train(tiny(data, tmp_path / "b", epochs=2, resume=True), log=quiet)
    a, b = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def cli_train(data, out, *extra):
    return [sys.executable, "-m", "fixres_fast.cli", "train", "--data", str(data), "--out", str(out), "--arch",
            "resnet18", "--res", "32", "--backend", "torch", "--device", "cpu", "--workers", "1", "--aug", "test",
            "--batch-size", "8", "--repeats", "1", "--lr", "0.02", *extra]


def test_sigterm_exits_143_and_the_resumed_epoch_reports_the_whole_epoch(tmp_path):
    """A scheduler sees an unfinished job (128 + SIGTERM); --resume continues exactly, and the resumed epoch's
    metrics line averages the loss over all its steps, as an uninterrupted run's does."""
    from fixres_fast.convert import ConvertConfig, convert
    from fixres_fast.sampledata import composite_tree

    composite_tree(tmp_path / "src", n_train=100, n_val=20, seed=0)  # 50 steps of 2 an epoch: stops land mid-epoch
    data = tmp_path / "data"
    convert(ConvertConfig(layout="folder", src=str(tmp_path / "src"), out=str(data), workers=1), log=quiet)

    def cmd(out, epochs, *extra):
        return [sys.executable, "-m", "fixres_fast.cli", "train", "--data", str(data), "--out", str(tmp_path / out),
                "--arch", "fixres_cnn", "--res", "32", "--backend", "torch", "--device", "cpu", "--workers", "1",
                "--aug", "test", "--batch-size", "2", "--repeats", "1", "--lr", "0.02", "--epochs", str(epochs), *extra]

    proc = subprocess.Popen(cmd("s", 40), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    while not (tmp_path / "s" / "metrics.jsonl").exists():
        assert proc.poll() is None and time.monotonic() - t0 < 120
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in text and "resume with --resume" in text, text
    state = checkpoint.load(tmp_path / "s" / "last.pt")["state"]
    stopped = state["epoch"] + (1 if state["step"] else 0)
    assert 1 <= stopped < 40
    # all runs in subprocesses alike, so that their CPU thread counts (and float sums) agree
    for out, extra in (("s", ["--resume"]), ("u", [])):
        done = subprocess.run(cmd(out, stopped + 1, *extra), capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    a, b = weights(tmp_path / "s" / "last.pt"), weights(tmp_path / "u" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed, whole = ([json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
                      for out in ("s", "u"))
    assert [r["epoch"] for r in resumed] == [r["epoch"] for r in whole] == list(range(stopped + 1))
    for r, w in zip(resumed, whole):
        assert r["train_loss"] == pytest.approx(w["train_loss"], rel=1e-5) and r["train_img_s"] > 0, (state, r, w)


def test_two_gloo_processes_match_one_with_twice_the_batch(imagenet_records, tmp_path):
    """DDP averages the gradients of 2 x 4 images as one process does for 8. The model is a ViT-Tiny
    (timm): no BatchNorm, whose per-process statistics would rightly differ, and no dropout, whose
    masks are drawn per process; so the weights of both runs must agree to float precision."""
    timm = pytest.importorskip("timm")
    data = imagenet_records["out"]
    for name, extra in (("one", []), ("two", ["--gpus", "2"])):
        cmd = cli_train(data, tmp_path / name, "--epochs", "1", *extra) + ["--arch", "vit_tiny_patch16_224", "--res", "224"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
    torch.manual_seed(0)  # the trainer's seed, before it builds the model
    init = timm.create_model("vit_tiny_patch16_224", num_classes=5).state_dict()
    a, b = weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "two" / "last.pt")
    for k in ("patch_embed.proj.weight", "blocks.11.mlp.fc2.weight", "head.weight"):
        moved, gap = (a[k] - init[k]).norm(), (a[k] - b[k]).norm()
        assert moved > 0 and gap < 1e-3 * moved, (k, float(gap), float(moved))


def test_checkpoint_is_plain_and_carries_metadata(imagenet_records, tmp_path):
    train(tiny(imagenet_records["out"], tmp_path, epochs=1), log=quiet)
    doc = checkpoint.load(tmp_path / "best.pt")
    fresh = torchvision.models.resnet18(num_classes=5)
    fresh.load_state_dict(doc["model"])  # strict: a plain torchvision state_dict
    meta = doc["meta"]
    assert (meta["arch"], meta["num_classes"], meta["train_res"], meta["test_res"]) == ("resnet18", 5, 32, 32)
    assert meta["classes"] == sorted(imagenet_records["expected"]["wnids"])
    assert meta["preprocessing"]["test"]["resize_ratio"] == pytest.approx(256 / 224)
    assert meta["recipe"]["momentum"] == 0.9 and meta["git"]


def test_timm_model_checkpoint_loads_into_timm(imagenet_records, tmp_path):
    timm = pytest.importorskip("timm")
    train(tiny(imagenet_records["out"], tmp_path, epochs=1, arch="resnet10t"), log=quiet)
    timm.create_model("resnet10t", num_classes=5).load_state_dict(weights(tmp_path / "last.pt"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(imagenet_records, tmp_path):
    data = imagenet_records["out"]
    train(tiny(data, tmp_path, epochs=1), log=quiet)
    good = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(UserError, match="diverged"):
        train(tiny(data, tmp_path, epochs=3, resume=True, resume_changed=True, lr=1e30), log=quiet)
    assert (tmp_path / "last.pt").read_bytes() == good


def test_bad_data_and_mismatched_resume_are_clear_errors(imagenet_records, tmp_path):
    with pytest.raises(UserError, match="neither a conversion"):
        train(tiny(tmp_path / "nothing", tmp_path / "o"), log=quiet)
    train(tiny(imagenet_records["out"], tmp_path / "r", epochs=1), log=quiet)
    with pytest.raises(UserError, match="resnet18 with 5 classes"):
        train(tiny(imagenet_records["out"], tmp_path / "r", epochs=2, resume=True, arch="resnet34"), log=quiet)


def test_sigterm_to_torchrun_with_loader_workers_leaves_a_resumable_checkpoint(tmp_path):
    """torchrun stops its processes by signalling their process groups, DataLoader workers included: the workers
    leave the stop to the training process, which writes a resumable last.pt (a killed worker failed the step)."""
    from fixres_fast.convert import ConvertConfig, convert
    from fixres_fast.sampledata import composite_tree

    composite_tree(tmp_path / "src", n_train=200, n_val=20, seed=0)
    data = tmp_path / "data"
    convert(ConvertConfig(layout="folder", src=str(tmp_path / "src"), out=str(data), workers=1), log=quiet)
    cmd = [sys.executable, "-m", "fixres_fast.cli", "train", "--data", str(data), "--out", str(tmp_path / "s"),
           "--arch", "fixres_cnn", "--res", "32", "--backend", "torch", "--device", "cpu", "--workers", "1",
           "--aug", "test", "--batch-size", "4", "--repeats", "1", "--lr", "0.02", "--epochs", "40", "--gpus", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    while not (tmp_path / "s" / "metrics.jsonl").exists():
        assert proc.poll() is None and time.monotonic() - t0 < 180
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which the CLI became
    text, _ = proc.communicate(timeout=180)
    assert "stopped by SIGTERM" in text and "killed by signal" not in text, text[-3000:]
    state = checkpoint.load(tmp_path / "s" / "last.pt")["state"]
    assert state["epoch"] >= 1 and state["epoch"] + (1 if state["step"] else 0) < 40, state
