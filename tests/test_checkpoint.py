"""Checkpoints a user did not make: no code runs from them, and they are checked against their own weights,
the data set they are used with, and (on --resume) the settings they were trained with."""
import hashlib
import os
import pathlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import fixres_fast
from fixres_fast import checkpoint
from fixres_fast.cli import main
from fixres_fast.data import check_classes, data_record
from fixres_fast.errors import UserError
from fixres_fast.models import build_model
from fixres_fast import spec
from fixres_fast.spec import Recipe
from fixres_fast.train import TrainConfig, metadata, train

from . import imagesets

CPU = ["--device", "cpu", "--backend", "torch"]


def quiet(*_):
    pass


def one_line_error(res, *words):
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    for w in words:
        assert w in lines[0], res.output
    return lines[0]


# --- No code runs from a checkpoint --------------------------------------------------------------------


class ShellPayload:
    """A real pickle payload: unpickling it calls os.system, which creates ``target``."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


class TouchPayload(ShellPayload):
    """The same through pathlib (no shell): unpickling calls Path.touch."""

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.target),)


def commands(data, tmp_path, payload):
    """Every command that takes a checkpoint, given ``payload`` (train --resume finds it as OUT/last.pt)."""
    out = tmp_path / "train"
    out.mkdir()
    shutil.copy(payload, out / "last.pt")
    return {
        "evaluate": ["evaluate", "--checkpoint", str(payload), "--out", str(tmp_path / "e"), *CPU],
        "adapt": ["adapt", "--checkpoint", str(payload), "--test-res", "64", *CPU],
        "analyze activations": ["analyze", "activations", "--checkpoint", str(payload), "--out", str(tmp_path / "a"), *CPU],
        "train --resume": ["train", "--data", str(data), "--out", str(out), "--resume", "--arch", "fixres_cnn",
                           "--res", "32", "--epochs", "2", "--batch-size", "8", "--repeats", "1", *CPU],
        # plain weights: --weights and train --init read them with weights_only=True too
        "evaluate --weights": ["evaluate", "--weights", str(payload), "--arch", "resnet18", "--data", str(data),
                               "--out", str(tmp_path / "e"), *CPU],
        "adapt --weights": ["adapt", "--weights", str(payload), "--arch", "resnet18", "--data", str(data),
                            "--test-res", "64", *CPU],
        "export --weights": ["export", "--weights", str(payload), "--arch", "resnet18", str(tmp_path / "x")],
        "train --init": ["train", "--data", str(data), "--out", str(tmp_path / "t2"), "--init", str(payload),
                         "--arch", "fixres_cnn", "--res", "32", "--epochs", "1", "--batch-size", "8", *CPU],
    }


@pytest.mark.parametrize("payload, fmt", [(ShellPayload, "zip"), (TouchPayload, "legacy")])
def test_a_payload_runs_under_no_command(imagenet_records, tmp_path, payload, fmt):
    target = tmp_path / "pwned"
    path = tmp_path / "payload.pt"
    doc = {"model": {}, "meta": payload(target), "state": payload(target)}
    torch.save(doc, path, _use_new_zipfile_serialization=fmt == "zip")
    for name, args in commands(imagenet_records["out"], tmp_path, path).items():
        res = CliRunner().invoke(main, args)
        assert not target.exists(), f"{name}: the checkpoint ran code"
        one_line_error(res, "needs arbitrary Python objects to unpickle", "could run code", "re-save its state_dict")


def test_no_load_in_the_package_unpickles_objects():
    root = Path(fixres_fast.__file__).parent
    assert [p for p in root.rglob("*.py") if "weights_only=False" in p.read_text()] == []


def test_what_we_save_is_plain_and_loads_without_objects(tmp_path):
    meta = metadata(TrainConfig(data=str(tmp_path), arch="fixres_cnn", k_train=32), ["a", "b"], 0,
                    {"top1@32": np.float64(50.0)}, data_record(tmp_path)).to_dict()
    meta["adaptation"] = {"frechet": {"reference": (np.float32(0.5), np.float64(0.25)), "scale": np.float64(1.5),
                                      "shift": 0.0}, "data": tmp_path}
    path = tmp_path / "c.pt"
    checkpoint.save(path, build_model("fixres_cnn", 2), meta, state={"epoch": np.int64(1)})
    doc = checkpoint.load(path)  # weights_only=True
    assert doc["meta"]["results"]["top1@32"] == 50.0 and type(doc["meta"]["results"]["top1@32"]) is float
    assert doc["meta"]["adaptation"]["frechet"]["reference"] == (0.5, 0.25)
    assert doc["meta"]["adaptation"]["data"] == str(tmp_path) and doc["state"]["epoch"] == 1
    with pytest.raises(TypeError, match=r"meta\['bad'\] is a object"):
        checkpoint.save(path, build_model("fixres_cnn", 2), {**meta, "bad": object()})


# --- A checkpoint against its own weights ------------------------------------------------------------


def crafted(path, weights_classes=4, records=None, **meta_kw):
    """A checkpoint of a fixres_cnn with ``weights_classes`` outputs, trained (says its metadata, as ``metadata()``
    writes it, then overridden by ``meta_kw``) on ``records``."""
    records = records or path.parent
    classes = [f"c{i}" for i in range(weights_classes)]
    meta = metadata(TrainConfig(data=str(records), arch="fixres_cnn", k_train=32), classes, 0, {}, data_record(records)).to_dict()
    checkpoint.save(path, build_model("fixres_cnn", weights_classes), {**meta, **meta_kw})
    return path


@pytest.mark.parametrize("meta, words", [
    (dict(num_classes=7, classes=[f"c{i}" for i in range(7)]), ("metadata says a fixres_cnn with 7 classes",
                                                                "fc.weight has shape (4, 128), the model's (7, 128)")),
    (dict(arch="resnet18"), ("metadata says a resnet18 with 4 classes", "is missing", "and ")),
    (dict(num_classes=4, classes=["a", "b", "c"]), ("metadata says 4 classes but lists 3 class names",)),
])
def test_weights_that_do_not_fit_their_metadata_are_one_line(tmp_path, meta, words):
    path = crafted(tmp_path / "c.pt", **meta)
    for args in (["evaluate", "--checkpoint", str(path), "--out", str(tmp_path / "e")],
                 ["adapt", "--checkpoint", str(path), "--test-res", "64"]):
        one_line_error(CliRunner().invoke(main, args + CPU), f"the checkpoint {path} is inconsistent", *words)


@pytest.mark.parametrize("meta, words", [(dict(num_classes="seven"), ("num_classes must be a positive integer",)),
                                         (dict(preprocessing={"test": 3}), ("preprocessing",)),
                                         (dict(adaptation={"frechet": {"scale": "x", "shift": 0}}), ("frechet",)),
                                         (dict(data={"path": 3}), ("data must be",))])
def test_invalid_metadata_is_one_line(tmp_path, meta, words):
    path = crafted(tmp_path / "c.pt", **meta)
    res = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(path), "--out", str(tmp_path / "e"), *CPU])
    one_line_error(res, "has invalid fixres-fast metadata", *words)


# --- A checkpoint against the data set it is used with --------------------------------------------------


def two_class_tree(root):
    """An ImageFolder tree of real photos: train/ and val/, classes n1 and n2."""
    photos = imagesets.photos()
    for split in ("train", "val"):
        for i, cls in enumerate(("n1", "n2")):
            (root / split / cls).mkdir(parents=True)
            for j in range(3):
                shutil.copy(photos[3 * i + j], root / split / cls / f"{j}.jpg")
    return root


def test_a_checkpoint_of_other_classes_is_refused_by_every_job(tmp_path):
    data = two_class_tree(tmp_path / "two")
    path = crafted(tmp_path / "four.pt", weights_classes=4)
    for args in (["evaluate", "--checkpoint", str(path), "--out", str(tmp_path / "e"), "--res", "32"],
                 ["adapt", "--checkpoint", str(path), "--test-res", "32", "--batch-size", "4", "--epochs", "1"],
                 ["analyze", "activations", "--checkpoint", str(path), "--res", "32", "--out", str(tmp_path / "a")]):
        one_line_error(CliRunner().invoke(main, args + ["--data", str(data), *CPU]),
                       "was trained on 4 classes (c0, c1, c2, c3)", f"{data} holds 2 (n1, n2)", "#0 'c0' vs 'n1'")


def test_long_class_lists_are_shortened_to_counts_and_the_first_differences(tmp_path):
    (tmp_path / "classes.json").write_text("[" + ",".join(f'{{"name": "n{i:05d}"}}' for i in range(1000)) + "]")
    theirs = [f"n{i:05d}" for i in range(1000)]
    theirs[7], theirs[500] = "cat", "dog"
    with pytest.raises(UserError) as e:
        check_classes(theirs, 1000, tmp_path, "the checkpoint x.pt")
    msg = str(e.value)
    assert "1000 classes (n00000, n00001, n00002, ..., n00999)" in msg and "differ at 2 label(s)" in msg
    assert "#7 'cat' vs 'n00007'; #500 'dog' vs 'n00500'" in msg and len(msg) < 600
    with pytest.raises(UserError, match="has 999 classes, but"):
        check_classes(None, 999, tmp_path, "the checkpoint x.pt")
    check_classes(None, 1000, tmp_path, "the checkpoint x.pt")  # no names recorded: the number agrees


def tiny(data, out, epochs=1, schedule="step", momentum=0.9, **kw):
    recipe = Recipe(epochs=epochs, batch_size=8, repeats=1, lr=kw.pop("lr", 0.02), schedule=schedule, momentum=momentum)
    return TrainConfig(data=str(data), out=str(out), recipe=recipe,
                       **{**dict(arch="fixres_cnn", k_train=32, backend="torch", device="cpu", workers=1, aug="test"), **kw})


def test_every_checkpoint_finds_its_data_set_from_anywhere(imagenet_records, tmp_path, monkeypatch):
    """The README's `adapt --checkpoint runs/train/best.pt`, after training with a relative --data."""
    out = imagenet_records["out"]
    monkeypatch.chdir(out.parent)
    train(tiny(out.name, tmp_path / "run"), log=quiet)
    monkeypatch.chdir(tmp_path)
    sha = hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    for name in ("best.pt", "last.pt"):
        assert checkpoint.load(tmp_path / "run" / name)["meta"]["data"] == {"path": str(out), "manifest_sha256": sha}
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", "--checkpoint", "run/best.pt", "--out", "e", *CPU])
    assert res.exit_code == 0 and "4 images" in res.output, res.output
    res = runner.invoke(main, ["adapt", "--checkpoint", "run/best.pt", "--test-res", "48", "--epochs", "1",
                               "--batch-size", "8", *CPU])
    assert res.exit_code == 0, res.output
    adapted = checkpoint.load(tmp_path / "run" / "best-adapted48.pt")["meta"]
    assert adapted["data"] == {"path": str(out), "manifest_sha256": sha} and adapted["adaptation"]["data"] == str(out)
    res = runner.invoke(main, ["analyze", "activations", "--checkpoint", "run/best-adapted48.pt", "--res", "48",
                               "--out", "a", *CPU])
    assert res.exit_code == 0, res.output


def test_an_older_checkpoint_with_only_its_config_still_finds_its_data(imagenet_records, tmp_path, monkeypatch):
    out = imagenet_records["out"]
    monkeypatch.chdir(out.parent)
    train(tiny(out.name, tmp_path / "run"), log=quiet)
    doc = checkpoint.load(tmp_path / "run" / "last.pt")
    for key in ("data", "resumed_from"):  # what this version adds
        doc["meta"].pop(key, None)
    torch.save(doc, tmp_path / "old.pt")
    res = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(tmp_path / "old.pt"), "--out", str(tmp_path / "e"),
                                    *CPU])
    assert res.exit_code == 0 and "4 images" in res.output, res.output


def test_a_moved_or_reconverted_data_set_is_a_clear_error(imagenet_records, tmp_path):
    copy = tmp_path / "records"
    shutil.copytree(imagenet_records["out"], copy)
    moved = crafted(tmp_path / "moved.pt", weights_classes=5, records=copy,
                    classes=sorted(imagenet_records["expected"]["wnids"]), data={"path": str(tmp_path / "gone"),
                                                                                 "manifest_sha256": None})
    evaluate = ["evaluate", "--out", str(tmp_path / "e"), *CPU, "--checkpoint"]
    one_line_error(CliRunner().invoke(main, evaluate + [str(moved)]), str(tmp_path / "gone"), "no longer exists",
                   "pass --data OUT")
    changed = crafted(tmp_path / "changed.pt", weights_classes=5, records=copy,
                      classes=sorted(imagenet_records["expected"]["wnids"]))
    with open(copy / "manifest.json", "a") as f:
        f.write("\n")
    one_line_error(CliRunner().invoke(main, evaluate + [str(changed)]), f"the records in {copy} changed",
                   "SHA-256", "pass --data OUT")
    res = CliRunner().invoke(main, evaluate + [str(changed), "--data", str(copy)])
    assert res.exit_code == 0, res.output


# --- train --resume against the settings it was trained with ----------------------------------------------


def test_resume_with_other_settings_is_refused_unless_asked(imagenet_records, tmp_path):
    data = imagenet_records["out"]
    other = tmp_path / "other-records"
    shutil.copytree(data, other)
    out = tmp_path / "run"
    train(tiny(data, out, epochs=1), log=quiet)
    with pytest.raises(UserError) as e:
        train(tiny(other, out, epochs=2, k_train=48, lr=0.05, aug="train", resume=True), log=quiet)
    msg = str(e.value)
    for change in ("--res 32 -> 48", "--aug test -> train", "--lr 0.02 -> 0.05", f"--data {data} -> {other}",
                   "--resume-changed"):
        assert change in msg, msg
    assert "--epochs" not in msg  # extending a step-schedule run is what --resume is for
    res = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(out), "--resume", "--res", "40",
                                    "--arch", "fixres_cnn", "--epochs", "2", "--batch-size", "8", "--repeats", "1",
                                    "--lr", "0.02", "--aug", "test", "--workers", "1", *CPU])
    one_line_error(res, "--res 32 -> 40")
    # settings that do not change what is learnt: workers, evaluation resolutions, tensorboard
    train(tiny(data, out, epochs=2, resume=True, workers=2, eval_res=(40,)), log=quiet)
    assert checkpoint.load(out / "last.pt")["meta"]["resumed_from"] == []
    train(tiny(data, out, epochs=3, k_train=48, momentum=0.5, resume=True, resume_changed=True), log=quiet)
    doc = checkpoint.load(out / "last.pt")
    meta = doc["meta"]
    assert meta["train_res"] == 48 and meta["epoch"] == 2 and meta["recipe"]["momentum"] == 0.5
    assert doc["optimizer"]["param_groups"][0]["momentum"] == 0.5  # the new settings, not the loaded ones
    [was] = meta["resumed_from"]
    assert (was["epoch"], was["step"], was["config"]["k_train"]) == (2, 0, 32)
    assert was["changed"] == {"--res": [32, 48], "--momentum": [0.9, 0.5]}
    res = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(out), "--resume-changed", *CPU])
    one_line_error(res, "add --resume")


def test_resume_of_a_cosine_run_counts_a_new_length_as_a_change(imagenet_records, tmp_path):
    data, out = imagenet_records["out"], tmp_path / "run"
    train(tiny(data, out, epochs=1, schedule="cosine"), log=quiet)
    with pytest.raises(UserError, match="--epochs 1 -> 2"):
        train(tiny(data, out, epochs=2, schedule="cosine", resume=True), log=quiet)


# --- The typed metadata, and checkpoints of earlier versions ---------------------------------------------


def test_an_old_format_checkpoint_loads_unchanged(tmp_path):
    """A checkpoint as commit b9a268f's train.metadata() wrote it (no data set record, no resumed_from; the data
    set named only in its config) opens as typed metadata, and its data set is found through the config."""
    records = tmp_path / "records"
    records.mkdir()
    old = {"arch": "fixres_cnn", "num_classes": 2, "classes": ["a", "b"], "train_res": 32, "test_res": 32,
           "preprocessing": {"train": {"mode": "train", "k_train": 32, "area_range": [0.08, 1.0],
                                       "aspect_range": [0.75, 4 / 3], "flip": True, "jitter": 0.3, "max_attempts": 10},
                             "test": {"mode": "test", "k_test": 32, "resize_ratio": 256 / 224},
                             "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)},
           "recipe": {"epochs": 1, "batch_size": 8, "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4,
                      "schedule": "step", "step_epochs": 30, "warmup_epochs": 0.0, "label_smoothing": 0.0,
                      "no_bn_weight_decay": False, "repeats": 1},
           "epoch": 0, "results": {"top1@32": 50.0}, "git": "b9a268f", "fixres_fast": "0.1.0"}
    path = tmp_path / "old.pt"
    torch.save({"model": build_model("fixres_cnn", 2).state_dict(), "meta": old, "config": {"data": str(records)}},
               path)
    model, meta = checkpoint.open_model(path, torch.device("cpu"))
    assert (meta.arch, meta.num_classes, meta.k_train, meta.k_test, meta.classes) == ("fixres_cnn", 2, 32, 32, ("a", "b"))
    assert meta.train_da == spec.TrainDA(k_train=32) and meta.test_da == spec.TestDA(k_test=32)
    assert meta.test_spec(64) == spec.TestDA(k_test=64) and meta.recipe == Recipe(epochs=1, batch_size=8, lr=0.02, repeats=1)
    assert meta.data is None and meta.adaptation is None and meta.resumed_from == () and meta.revision == "b9a268f"
    assert meta.legacy_data == str(records) and not model.training
    assert checkpoint.CheckpointMeta.from_dict(meta.to_dict()) == meta  # and it round-trips through the plain form


def test_checkpoint_meta_round_trips_through_plain_types(tmp_path):
    meta = metadata(TrainConfig(data=str(tmp_path), arch="fixres_cnn", k_train=32, aug="test2"), ["a", "b"], 3,
                    {"top1@32": 1.0}, data_record(tmp_path))
    assert meta.train_da == spec.TestDA2(k_test=32) and meta.test_da == spec.TestDA(k_test=32)
    path = tmp_path / "c.pt"
    checkpoint.save(path, build_model("fixres_cnn", 2), meta)
    again = checkpoint.meta_of(checkpoint.load(path))
    assert again == meta and again.to_dict() == meta.to_dict()
