"""Training, adaptation and evaluation fail clearly on what they cannot do, and say only what informs (issue 15)."""
import re

import pytest
from click.testing import CliRunner

from fixres_fast import checkpoint
from fixres_fast.adapt import AdaptConfig, adapt
from fixres_fast.cli import main
from fixres_fast.evaluate import EvalConfig, evaluate
from fixres_fast.spec import Recipe
from fixres_fast.train import TrainConfig, train

from .conftest import CPU

TORCH_CPU = ["--backend", "torch", "--device", "cpu", "--workers", "1"]


def cli_train(data, out, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--arch", "fixres_cnn", "--res", "32", "--epochs", "1",
            *TORCH_CPU, *extra]


def one_line(result) -> str:
    """The error line of a failed CliRunner run (bars are off: stderr is not a terminal)."""
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(imagenet_records, tmp_path_factory):
    """fixres_cnn trained 1 epoch at 32 px on the real-photo records (21 train images, 5 classes)."""
    out = tmp_path_factory.mktemp("tiny-run")
    logs = []
    train(TrainConfig(data=str(imagenet_records["out"]), out=str(out), arch="fixres_cnn", k_train=32,
                      recipe=Recipe(epochs=1, batch_size=8, repeats=1), **CPU), log=logs.append)
    return {"checkpoint": out / "last.pt", "logs": logs}


def test_a_batch_larger_than_the_epoch_is_refused_before_training(imagenet_records, tmp_path):
    # 21 train images, --repeats 3: 7 distinct images x 3 = 21 samples an epoch; the default B = 512 fits none
    line = one_line(CliRunner().invoke(main, cli_train(imagenet_records["out"], tmp_path / "o")))
    assert "--batch-size 512 is larger than an epoch: this rank reads 21 images per epoch" in line, line
    assert "7 distinct images x --repeats 3" in line and "use --batch-size 16 (at most 21)" in line, line
    assert not (tmp_path / "o" / "best.pt").exists() and not (tmp_path / "o" / "last.pt").exists()
    # the suggestion works
    ok = CliRunner().invoke(main, cli_train(imagenet_records["out"], tmp_path / "p", "--batch-size", "16"))
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "p" / "best.pt").exists()


def test_too_few_images_for_the_repeats_is_refused(imagenet_records, tmp_path):
    line = one_line(CliRunner().invoke(main, cli_train(imagenet_records["out"], tmp_path, "--repeats", "30")))
    assert "holds 21 images: too few for --repeats 30" in line, line


@pytest.mark.parametrize("extra, words", [
    (["--res", "100000"], "cannot be had; the largest that can is --res 65535"),
    (["--res", "600"], "--max-side 512 (long side); convert again with --max-side 600 or more, or choose --res 512 or less"),
    (["--aug", "test", "--res", "500"], "K_test^image = 571 px, but the records"),
    (["--eval-res", "32,1000"], "--eval-res 1000 resizes images to a short side of K_test^image = 1142 px"),
])
def test_train_refuses_resolutions_the_records_cannot_serve(imagenet_records, tmp_path, extra, words):
    line = one_line(CliRunner().invoke(main, cli_train(imagenet_records["out"], tmp_path, "--batch-size", "8", *extra)))
    assert words in line, line


def test_evaluate_and_adapt_refuse_resolutions_the_records_cannot_serve(tiny_run, imagenet_records, tmp_path):
    ckpt, data = str(tiny_run["checkpoint"]), str(imagenet_records["out"])
    args = ["evaluate", "--checkpoint", ckpt, "--data", data, "--out", str(tmp_path), *TORCH_CPU]
    line = one_line(CliRunner().invoke(main, args + ["--res", "32,100000"]))
    assert "--res 100000 resizes images to a short side of K_test^image = 114285 px" in line, line
    assert "cannot be had; the largest that can is --res 57343; these records (--max-side 512) serve --res 448" in line
    line = one_line(CliRunner().invoke(main, args + ["--res", "32", "--ensemble", "32,512"]))
    assert "--ensemble 512 resizes" in line and "choose --ensemble 448 or less" in line, line
    line = one_line(CliRunner().invoke(main, ["adapt", "--checkpoint", ckpt, "--data", data, "--test-res", "100000",
                                              *TORCH_CPU]))
    assert "--test-res 100000" in line and "the largest that can is --test-res 57343" in line, line
    assert "--max-side 114286" not in line  # above JPEG's limit: no conversion can store that


def test_auto_uses_the_training_images_there_are(composites, tmp_path):
    """2000 training images, fewer than --auto-images 5000: 400 of them (0.2) are held out."""
    logs = []
    result = adapt(AdaptConfig(checkpoint=str(composites["runs"][0]), data=str(composites["data"]), k_test=None,
                               epochs=2, batch_size=64, lr=0.01, evaluate=False, out=str(tmp_path / "auto.pt"), **CPU),
                   log=logs.append)
    auto = result["auto"]
    assert (auto["images"], auto["held_out"]) == (2000, 400)
    assert set(auto["top1"]) == {32, 64} and min(auto["top1"].values()) > 20  # 10 classes: chance is 10%
    assert any("on the 400 held-out training images" in line for line in logs)


def test_auto_refuses_a_held_out_slice_too_small_to_decide(composites, tmp_path):
    args = ["adapt", "--checkpoint", str(composites["runs"][0]), "--data", str(composites["small"]), "--test-res", "auto",
            "--out", str(tmp_path / "a.pt"), *TORCH_CPU]
    line = one_line(CliRunner().invoke(main, args))  # 400 images: 80 held out
    assert "on 80 held-out training images (--auto-holdout 0.2 of 400; the train split holds 400)" in line, line
    assert "at least 100" in line and "give --test-res" in line
    ok = CliRunner().invoke(main, args + ["--auto-holdout", "0.25", "--auto-images", "400", "--epochs", "1"])
    assert ok.exit_code == 0, ok.output
    assert checkpoint.load(tmp_path / "a.pt")["meta"]["adaptation"]["auto"]["held_out"] == 100
    line = one_line(CliRunner().invoke(main, args + ["--auto-holdout", "1.5"]))
    assert "expected --auto-images >= 1 and 0 < --auto-holdout < 1, got 5000 and 1.5" in line, line


def test_adapt_reports_one_line_for_its_epochs_and_a_signed_frechet_map(composites, tmp_path):
    cfg = dict(checkpoint=str(composites["runs"][0]), data=str(composites["small"]), k_test=64, batch_size=64,
               evaluate=False, **CPU)
    logs = []
    adapt(AdaptConfig(epochs=3, out=str(tmp_path / "ft.pt"), **cfg), log=logs.append)
    assert not any(line.startswith("adapt epoch") for line in logs), logs
    assert sum(line.startswith("fine-tuned 3 epochs: last epoch's loss ") for line in logs) == 1, logs
    logs = []
    adapt(AdaptConfig(method="frechet", stats_images=400, out=str(tmp_path / "fr.pt"), **cfg), log=logs.append)
    fit = next(line for line in logs if line.startswith("Fréchet fit"))
    assert re.search(r"map x -> \d+\.\d{4} x [+-] \d+\.\d{4}$", fit), fit
    shift = checkpoint.load(tmp_path / "fr.pt")["meta"]["adaptation"]["frechet"]["shift"]
    assert fit.endswith(f"{'-' if shift < 0 else '+'} {abs(shift):.4f}"), fit


def test_top5_is_printed_only_above_5_classes(tiny_run, imagenet_records, composites, tmp_path):
    assert not any("top5" in line for line in tiny_run["logs"]), tiny_run["logs"]  # 5 classes: always 100%
    logs = []
    rows = evaluate(EvalConfig(checkpoints=(str(tiny_run["checkpoint"]),), data=str(imagenet_records["out"]), **CPU),
                    log=logs.append)
    assert rows[0]["top5"] == 100 and "top-1" in logs[0] and "top-5" not in logs[0], logs
    logs = []
    evaluate(EvalConfig(checkpoints=(str(composites["runs"][0]),), data=str(composites["small"]), **CPU), log=logs.append)
    assert "top-5" in logs[0], logs  # 10 classes
