"""The supplement's Table 10 recipes (pipelines/inat2019.toml, pipelines/herbarium2019.toml): their values are the
paper's, their models build, and each runs end to end at a small size on a tree of the data set's shape made of
the real photos (real converter, loaders and training; pretrained weights from a state_dict saved here)."""
import json
import shutil

import pytest
import torch

from fixres_fast.models import build_model
from fixres_fast.run import load, run

from . import imagesets

CPU = ["common.backend=torch", "common.device=cpu", "common.amp=off", "common.workers=1"]
CLASSES = 4


def quiet(*_):
    pass


def copy(photo, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(photo, dst)


def inat2019_tree(src, photos):
    """iNaturalist 2019: train_val2019/<kingdom>/<category>/<image>, listed by train2019.json and val2019.json."""
    cats = {10 + c: f"species {c}" for c in range(CLASSES)}
    docs = {}
    for split, n in (("train", len(photos)), ("val", 8)):
        files = [f"train_val2019/Plantae/{10 + i % CLASSES}/{split}{i}.jpg" for i in range(n)]
        for f, p in zip(files, photos):
            copy(p, src / f)
        docs[split] = imagesets.coco_doc(files, [10 + i % CLASSES for i in range(n)], cats)
        imagesets.write_json(src / f"{split}2019.json", docs[split])


def herbarium2019_tree(src, photos):
    """Herbarium 2019: train/<category>/<image> and validation/<category>/<image>."""
    for split, n in (("train", len(photos)), ("validation", 8)):
        for i, p in enumerate(photos[:n]):
            copy(p, src / split / str(100 + i % CLASSES) / f"{split}{i}.jpg")


#: recipe: (its convert stage, the tree maker, Table 10's arch, K_train, K_test)
TABLE_10 = {"inat2019": ("inat", inat2019_tree, "legacy_seresnext101_32x4d", 448, 704),
            "herbarium2019": ("herbarium", herbarium2019_tree, "resnet50", 384, 640)}


@pytest.mark.parametrize("recipe", TABLE_10)
def test_the_recipe_holds_table_10s_row(recipe):
    name, _, arch, k_train, k_test = TABLE_10[recipe]
    doc = load(recipe)[1]
    assert (doc["train"]["arch"], doc["train"]["k_train"], doc["adapt"]["k_test"]) == (arch, [k_train], [k_test])
    assert doc["train"]["recipe"]["epochs"] == 120 and doc["adapt"]["tune"] == "bn+fc"
    assert doc["convert"][name]["max_side"] >= 800 and doc["train"]["init"]
    plan = run(recipe, dry_run=True, log=quiet)["plan"]
    assert [s for s, _, _ in plan] == [f"convert/{name}", f"train/{k_train}", f"adapt/{k_train}-{k_test}",
                                       f"evaluate/{k_train}", "report"]


def test_the_inat_model_is_timms_pretrained_models_port():
    """Table 10's SE-ResNeXt-101-32x4d: timm's port of the pretrained-models one, with ImageNet weights described."""
    timm = pytest.importorskip("timm")
    from fixres_fast.pretrained import model_config, split_arch

    assert "legacy_seresnext101_32x4d" in timm.list_models() and split_arch("legacy_seresnext101_32x4d")[0] == "timm"
    assert model_config("legacy_seresnext101_32x4d", log=quiet).k_train == 224
    with torch.device("meta"):
        model = build_model("legacy_seresnext101_32x4d", 1010)
    from fixres_fast.models import tuned_modules

    assert list(tuned_modules(model, "bn+fc")) == ["layer4.2.bn3", "last_linear"]


@pytest.mark.parametrize("recipe", TABLE_10)
def test_the_recipe_runs_at_a_small_size(recipe, tmp_path, photos):
    """Stage (1) fine-tunes ImageNet-shaped weights (a 1000-class fixres_cnn) on the data set, its classifier new;
    stage (2) adapts BN + classifier at a higher K_test; both are evaluated."""
    name, make_tree, *_ = TABLE_10[recipe]
    make_tree(tmp_path / "src", photos)
    weights = tmp_path / "imagenet.pth"
    torch.save(build_model("fixres_cnn", 1000).state_dict(), weights)
    out, lines = tmp_path / "out", []
    sets = CPU + [f"convert.{name}.src={tmp_path / 'src'}", f"convert.{name}.max_side=96", f"convert.{name}.test_res=48",
                  f"train.init={weights}", "train.arch=fixres_cnn", "train.k_train=[32]", "train.recipe.epochs=1",
                  "train.recipe.batch_size=8", "adapt.k_test=[48]", "adapt.epochs=1", "adapt.batch_size=8",
                  "evaluate.k_test=[32, 48]"]
    run(recipe, sets, str(out), log=lines.append)
    converted = json.loads((out / "convert" / name / "stage.json").read_text())["result"]["records"]
    assert converted == {"train": 20, "val": 8}
    assert any(f"replaced by a new one for the data's {CLASSES} classes" in str(line) for line in lines)
    rows = json.loads((out / "evaluate" / "32" / "evaluate.json").read_text())["rows"]
    assert {(r["adapted_at"], r["res"]) for r in rows} == {(a, k) for a in (None, 48) for k in ("32", "48")}
    assert "| 32 | " in (out / "report.md").read_text()
