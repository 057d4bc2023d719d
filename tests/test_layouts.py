"""Source layouts as real data sets ship them: encodings, split names, folder shapes, annotation files
and links, on generated trees of the real photos, through the converter (and the CLI for its options)."""
import csv
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from fixres_fast.cli import main
from fixres_fast.convert import ConvertConfig, convert
from fixres_fast.errors import UserError
from fixres_fast.loaders import make_loader
from fixres_fast.spec import make_spec

from . import imagesets


def quiet(*_):
    pass


def run(layout, src, out, **kw):
    logged = []
    m = convert(ConvertConfig(layout=layout, src=str(src), out=str(out), formats=("recordio",), workers=1, **kw),
                log=logged.append)
    return m, "\n".join(logged)


def copy(photo, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(photo, dst)


def herbarium_2021(src, photos, encoding="latin-1"):
    """Herbarium 2020/2021: train/metadata.json (latin-1, a name with é) + images/<...>; test/ without labels."""
    files = []
    for i, p in enumerate(photos[:4]):
        f = f"images/{i // 2:03d}/{i % 2:02d}/{1000 + i}.jpg"
        copy(p, src / "train" / f)
        files.append(f)
    doc = imagesets.coco_doc(files, [7, 3, 7, 3], {3: "Acacia", 7: "Eugénia uniflora"})
    (src / "train" / "metadata.json").write_bytes(json.dumps(doc, ensure_ascii=False).encode(encoding))
    copy(photos[5], src / "test" / "images" / "000" / "9.jpg")
    test = {"images": [{"id": 9, "file_name": "images/000/9.jpg"}], "info": {}, "licenses": []}
    (src / "test" / "metadata.json").write_bytes(json.dumps(test).encode(encoding))


def test_herbarium_2021_latin1_metadata_and_unlabelled_test(tmp_path, photos):
    src = tmp_path / "herb"
    herbarium_2021(src, photos)
    m, log = run("herbarium", src, tmp_path / "out")
    assert list(m["splits"]) == ["train"] and m["splits"]["train"]["count"] == 4
    classes = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert [c["name"] for c in classes] == ["Acacia", "Eugénia uniflora"]
    assert "test/metadata.json lists 1 images without labels" in log


def test_herbarium_utf8_with_bom_is_read_too(tmp_path, photos):
    src = tmp_path / "herb"
    herbarium_2021(src, photos, encoding="utf-8-sig")
    m, _ = run("herbarium", src, tmp_path / "out")
    assert [c["name"] for c in json.loads((tmp_path / "out" / "classes.json").read_text())][1] == "Eugénia uniflora"


def herbarium_2019(src, photos):
    """Herbarium 2019: train/<category>/<id>.jpg, small-train/ (a subset), validation/, a flat unlabelled test/."""
    for i, p in enumerate(photos[:6]):
        copy(p, src / "train" / str([10, 2][i % 2]) / f"{i}.jpg")
    copy(photos[0], src / "small-train" / "10" / "0.jpg")
    for i, p in enumerate(photos[6:10]):
        copy(p, src / "validation" / str([10, 2][i % 2]) / f"{100 + i}.jpg")
    copy(photos[11], src / "test" / "200.jpg")


def test_herbarium_2019_class_folders(tmp_path, photos):
    src = tmp_path / "herb2019"
    herbarium_2019(src, photos)
    m, log = run("herbarium", src, tmp_path / "out")
    assert {s: v["count"] for s, v in m["splits"].items()} == {"train": 6, "val": 4}
    classes = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert [(c["name"], c["category_id"]) for c in classes] == [("2", 2), ("10", 10)]  # numeric order
    assert "small-train/ is a subset of train/ and is not converted" in log


def test_validation_folder_becomes_split_val_and_train_reads_it(tmp_path, photos):
    """Converted from validation/ (or valid/), the split is val, the one the jobs evaluate on; also read unconverted."""
    for name in ("validation", "valid"):
        src = tmp_path / name
        for j, c in enumerate(["cat", "dog"]):
            copy(photos[j], src / "train" / c / "a.jpg")
            copy(photos[j + 2], src / name / c / "b.jpg")
        m, _ = run("folder", src, tmp_path / f"out-{name}")
        assert set(m["splits"]) == {"train", "val"}
        for data in (tmp_path / f"out-{name}", src):
            labels = [y for _, y in make_loader("torch", make_spec("test", 32), data, "val", batch_size=2, workers=1)]
            assert sum(len(y) for y in labels) == 2


def test_folder_of_split_folders_with_other_names_is_refused_not_emptied(tmp_path, photos):
    """SRC/small-train/<class>/<image>: small-train is no split name, so it looks like a class holding no images."""
    src = tmp_path / "tree"
    for j, c in enumerate(["10", "2"]):
        copy(photos[j], src / "small-train" / c / "a.jpg")
    with pytest.raises(UserError, match="hold folders: expected SRC/<split>/<class>/<image>"):
        run("folder", src, tmp_path / "out")
    herbarium_2019(tmp_path / "h", photos)  # split folders beside one that is not a split: converted, and said
    m, log = run("folder", tmp_path / "h", tmp_path / "out2")
    assert set(m["splits"]) == {"train", "val"} and "folder small-train/ in SRC is not a split" in log


def kaggle_imagenet(root, photos):
    """Kaggle's archive: LOC_val_solution.csv at its root, the images in ILSVRC/Data/CLS-LOC/{train,val}."""
    cls_loc = root / "ILSVRC" / "Data" / "CLS-LOC"
    wnids = ["n01440764", "n01443537"]
    for j, w in enumerate(wnids):
        copy(photos[j], cls_loc / "train" / w / f"{w}_{j}.JPEG")
    rows = []
    for i in range(3):
        copy(photos[4 + i], cls_loc / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
        rows.append((f"ILSVRC2012_val_{i + 1:08d}", f"{wnids[i % 2]} 1 2 30 40 {wnids[i % 2]} 5 6 70 80"))
    with open(root / "LOC_val_solution.csv", "w", newline="") as f:
        csv.writer(f).writerows([("ImageId", "PredictionString")] + rows)
    return cls_loc


def test_kaggle_imagenet_finds_the_solution_three_levels_up(tmp_path, photos):
    cls_loc = kaggle_imagenet(tmp_path / "imagenet-object-localization-challenge", photos)
    m, _ = run("imagenet", cls_loc, tmp_path / "out")
    assert (m["splits"]["train"]["count"], m["splits"]["val"]["per_class"]) == (2, [2, 1])


def test_kaggle_imagenet_val_labels_option(tmp_path, photos):
    cls_loc = kaggle_imagenet(tmp_path / "a" / "b" / "c" / "d", photos)
    moved = tmp_path / "labels.csv"
    os.replace(tmp_path / "a" / "b" / "c" / "d" / "LOC_val_solution.csv", moved)
    r = CliRunner().invoke(main, ["convert", "imagenet", str(cls_loc), str(tmp_path / "o1"), "--workers", "1"])
    assert r.exit_code == 1 and "Pass --val-labels FILE" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["convert", "imagenet", str(cls_loc), str(tmp_path / "o2"), "--workers", "1",
                                  "--format", "recordio", "--val-labels", str(moved)])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "o2" / "manifest.json").read_text())["splits"]["val"]["count"] == 3


def inat_2021(src, photos, train="train_mini.json"):
    files = []
    for i, p in enumerate(photos[:6]):
        f = f"{'train_mini' if i < 4 else 'val'}/0000{i % 2}_Plantae/{i}.jpg"
        copy(p, src / f)
        files.append(f)
    cats = {0: "Quercus", 1: "Acer"}
    imagesets.write_json(src / train, imagesets.coco_doc(files[:4], [0, 1, 0, 1], cats))
    imagesets.write_json(src / "val.json", imagesets.coco_doc(files[4:], [0, 1], cats))


def test_inat_2021_train_mini(tmp_path, photos):
    src = tmp_path / "inat"
    inat_2021(src, photos)
    with pytest.raises(UserError, match="train_mini.json but no train.json: pass --train-set train_mini"):
        run("inat", src, tmp_path / "o1", year=2021)
    r = CliRunner().invoke(main, ["convert", "inat", str(src), str(tmp_path / "o2"), "--year", "2021", "--workers", "1",
                                  "--format", "recordio", "--train-set", "train_mini"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "o2" / "manifest.json").read_text())
    assert (m["splits"]["train"]["count"], m["splits"]["val"]["count"]) == (4, 2)


def test_inat_missing_annotation_file_is_said(tmp_path, photos):
    src = tmp_path / "inat"
    inat_2021(src, photos, train="elsewhere.json")
    m, log = run("inat", src, tmp_path / "out", year=2021)
    assert list(m["splits"]) == ["val"] and "has no train.json (split train): that split is not converted" in log


def test_symlink_loops_are_skipped_with_a_reason(tmp_path, photos):
    src = tmp_path / "tree"
    for j, c in enumerate(["cat", "dog"]):
        copy(photos[j], src / "train" / c / "a.jpg")
    os.symlink("loop.jpg", src / "train" / "cat" / "loop.jpg")  # a file that links to itself
    os.symlink("self", src / "train" / "self")  # a class folder that links to itself
    os.symlink("..", src / "train" / "dog" / "up")  # a link back up: never walked
    os.symlink("gone.jpg", src / "train" / "dog" / "broken.jpg")
    m, _ = run("folder", src, tmp_path / "out")
    assert m["splits"]["train"]["count"] == 2
    reasons = {os.path.basename(s["path"]): s["reason"] for s in m["splits"]["train"]["skipped"]}
    assert "cannot be followed" in reasons["loop.jpg"] and "cannot be followed" in reasons["self"]
    assert "target is missing" in reasons["broken.jpg"]
