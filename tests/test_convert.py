"""Converters: real photos and generated bad files, through real .beton and RecordIO files."""
import io
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fixres_fast.convert import ConvertConfig, beton, convert, transcode, verify
from fixres_fast.convert.beton import BetonReader
from fixres_fast.convert.index import read_index
from fixres_fast.convert.recordio import read_records
from fixres_fast.convert.verify import read_beton_labels, read_recordio_labels
from fixres_fast.cli import main
from fixres_fast.errors import UserError

from . import imagesets
from .conftest import needs


def quiet(*_):
    pass


def index_rows(out, split):
    labels, paths = read_index(out / f"{split}.index.tsv")
    return [(r, int(lab), path) for r, (lab, path) in enumerate(zip(labels, paths))]


def beton_images(path):
    """Stored bytes of every image in a .beton, through FFCV's own Reader."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    raw = np.fromfile(str(path), dtype=np.uint8)
    table = {int(s): (int(p), int(n)) for s, p, n in reader.alloc_table}
    meta = reader.metadata
    return [(bytes(raw[table[i][0]: table[i][0] + table[i][1]]), int(meta[i][0]["width"]), int(meta[i][0]["height"]),
             int(meta[i][1])) for i in range(len(meta))]


def test_imagenet_counts_labels_and_skips(imagenet_records):
    out, m, exp = imagenet_records["out"], imagenet_records["manifest"], imagenet_records["expected"]
    assert m["splits"]["train"]["count"] == exp["train"]
    assert m["splits"]["val"]["count"] == exp["val"]
    skipped = {s["path"].rsplit("/", 1)[1]: s["reason"] for sp in m["splits"].values() for s in sp["skipped"]}
    assert set(skipped) == set(exp["skipped"])
    for name, kind in exp["skipped"].items():
        assert kind in skipped[name], (name, skipped[name])
    # class index = sorted wnid order; the empty class keeps its index and is warned about
    classes = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in classes] == sorted(exp["wnids"])
    assert classes[-1]["counts"] == {"train": 0, "val": 0}
    assert any(exp["wnids"][-1] in w and "no images" in w for w in m["warnings"])
    for _, label, path in index_rows(out, "train"):
        assert path.split("/")[-2] == exp["wnids"][label]


@needs("ffcv", "dali")
def test_records_read_back_through_ffcv_and_dali(imagenet_records):
    out, m = imagenet_records["out"], imagenet_records["manifest"]
    report = verify(out, workers=2, log=quiet)
    assert report["train"] == {"count": m["splits"]["train"]["count"], "crc32": "ok", "beton": "ok", "recordio": "ok"}
    want = [lab for _, lab, _ in index_rows(out, "val")]
    assert list(read_beton_labels(out / "val.beton", 2)) == want
    rio = m["splits"]["val"]["recordio"]
    assert rio == {"rec": ["val-00000-of-00002.rec", "val-00001-of-00002.rec"], "idx": "val.idx"}
    assert list(read_recordio_labels([out / r for r in rio["rec"]], out / rio["idx"], 2)) == want


def rgb(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@needs("ffcv")
def test_same_image_in_both_formats_and_fit_photos_keep_their_pixels(imagenet_records):
    """Both formats store the same bytes; a fit photo (the foolbox ones are progressive JPEGs) is stored as a
    sequential JPEG of the same coefficients: the same pixels, exactly."""
    out = imagenet_records["out"]
    rows = index_rows(out, "train")
    beton = beton_images(out / "train.beton")
    rec = {k: (lab, data) for r in sorted(out.glob("train-*.rec")) for k, lab, data in read_records(r)}
    assert sorted(rec) == list(range(len(rows)))
    fit = 0
    for (i, label, path), (data, w, h, blabel) in zip(rows, beton):
        assert rec[i] == (label, data) and blabel == label
        assert Image.open(io.BytesIO(data)).size == (w, h)
        if path.split("/")[-1].startswith("n0") and max(Image.open(path).size) <= 512:  # a fit photo
            source = open(path, "rb").read()
            assert Image.open(path).info.get("progressive") and not Image.open(io.BytesIO(data)).info.get("progressive")
            assert np.array_equal(rgb(data), rgb(source)) and len(data) < 1.15 * len(source)
            fit += 1
    assert fit >= 15
    assert imagenet_records["manifest"]["splits"]["train"]["reencoded"]["progressive"] == fit


def test_sequential_jpegs_are_stored_byte_for_byte_and_progressive_ones_on_request(tmp_path, photos):
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    Image.open(photos[0]).convert("RGB").save(src / "baseline.jpg", "JPEG", quality=85)
    shutil.copy(photos[1], src / "progressive.jpg")
    for flag, sequential in (("--sequential", True), ("--keep-progressive", False)):  # --sequential: the default
        out = tmp_path / flag
        res = CliRunner().invoke(main, ["convert", "folder", str(tmp_path / "src"), str(out), "--format", "recordio",
                                        flag, "--workers", "1"])
        assert res.exit_code == 0, res.output
        assert ("1 progressive rewritten as sequential" in res.output) == sequential
        paths = {i: p for i, _, p in index_rows(out, "train")}
        stored_bytes = {paths[k].rsplit("/", 1)[1]: data for r in out.glob("train-*.rec") for k, _, data in read_records(r)}
        assert stored_bytes["baseline.jpg"] == (src / "baseline.jpg").read_bytes()
        assert (stored_bytes["progressive.jpg"] == (src / "progressive.jpg").read_bytes()) == (not sequential)
        assert np.array_equal(rgb(stored_bytes["progressive.jpg"]), rgb((src / "progressive.jpg").read_bytes()))


def test_a_damaged_progressive_jpeg_is_treated_as_a_damaged_sequential_one(tmp_path, photos):
    """TurboJPEG refuses damaged data; then the file is checked and kept as it is, as a sequential one would be:
    skipped when truncated, stored byte for byte when PIL decodes it despite garbled entropy-coded bytes."""
    from fixres_fast.convert.image import prepare

    data = open(photos[1], "rb").read()
    cut, garbled = data[: len(data) // 2], bytearray(data)
    garbled[len(data) // 2: len(data) // 2 + 64] = bytes(range(64))
    with pytest.raises(ValueError):
        transcode.to_sequential(bytes(garbled))
    (tmp_path / "cut.jpg").write_bytes(cut)
    (tmp_path / "garbled.jpg").write_bytes(bytes(garbled))
    assert "truncated" in prepare(str(tmp_path / "cut.jpg"), max_side=512)
    kept = prepare(str(tmp_path / "garbled.jpg"), max_side=512)
    assert kept.data == bytes(garbled) and kept.fix == ""


def stored(out, name):
    rows = index_rows(out, "train")
    beton = beton_images(out / "train.beton")
    (i,) = [i for i, _, p in rows if p.endswith("/" + name)]
    data = beton[i][0]
    assert data[:2] == b"\xff\xd8", "every stored image is JPEG data"
    return Image.open(io.BytesIO(data))


@needs("ffcv")
def test_unusual_images_are_converted_to_rgb(imagenet_records, photos):
    out = imagenet_records["out"]
    cmyk, grey, png, rotated, large = (stored(out, n) for n in
                                       ("cmyk.JPEG", "grey.JPEG", "png.JPEG", "rotated.JPEG", "large.JPEG"))
    for im in (cmyk, grey, png, rotated, large):
        assert im.mode == "RGB"
    ref = np.asarray(Image.open(photos[2]).convert("RGB"), dtype=float)
    assert np.abs(np.asarray(png, dtype=float) - ref).mean() < 4  # PNG data re-encoded at quality 90
    g = np.asarray(grey, dtype=float)
    assert np.abs(g[..., 0] - g[..., 2]).max() < 8
    c = np.asarray(cmyk, dtype=float)
    ref0 = np.asarray(Image.open(photos[0]).convert("RGB"), dtype=float)
    assert np.abs(c - ref0).mean() < 12  # colours survive the CMYK round trip
    assert rotated.size == (240, 400)  # EXIF orientation 6 applied: the 400x240 crop stands upright
    upright = np.asarray(imagesets.write_exif_rotated(photos[3], out / "tmp.jpg"), dtype=float)
    assert np.abs(np.asarray(rotated, dtype=float) - upright).mean() < 6
    assert large.size == (512, 384)  # long side brought to --max-side


def test_inat_layout(tmp_path, photos):
    src = tmp_path / "inat"
    files = []
    for i, p in enumerate(photos[:6]):
        f = f"train_val2019/Plantae/{i % 2}/{i}.jpg"
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, src / f)
        files.append(f)
    cats = {5: "Quercus", 9: "Acer"}
    imagesets.write_json(src / "train2019.json", imagesets.coco_doc(files[:4] + ["gone/x.jpg"], [9, 5, 9, 5, 5], cats))
    imagesets.write_json(src / "val2019.json", imagesets.coco_doc(files[4:], [5, None], cats))
    m = convert(ConvertConfig(layout="inat", src=str(src), out=str(tmp_path / "out"), year=2019, workers=1), log=quiet)
    assert m["splits"]["train"]["count"] == 4 and m["splits"]["val"]["count"] == 1
    assert m["splits"]["train"]["skipped"][0]["reason"].startswith("file listed in the annotations is missing")
    assert m["splits"]["val"]["skipped"][0]["reason"] == "no annotation for this image"
    classes = json.loads((tmp_path / "out" / "classes.json").read_text())
    assert [(c["index"], c["category_id"], c["name"]) for c in classes] == [(0, 5, "Quercus"), (1, 9, "Acer")]
    labels = {p.split("/")[-1]: lab for _, lab, p in index_rows(tmp_path / "out", "train")}
    assert labels == {"0.jpg": 1, "1.jpg": 0, "2.jpg": 1, "3.jpg": 0}
    with pytest.raises(UserError, match="train2018.json"):
        convert(ConvertConfig(layout="inat", src=str(src), out=str(tmp_path / "o2"), year=2018), log=quiet)


def test_herbarium_layout(tmp_path, photos):
    src = tmp_path / "herb"
    for split, sub, n in (("train", "train", 4), ("val", "validation", 2)):
        files = []
        for i, p in enumerate(photos[:n]):
            f = f"images/{i}/{i}.jpg"
            (src / sub / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, src / sub / f)
            files.append(f)
        imagesets.write_json(src / sub / "metadata.json",
                             imagesets.coco_doc(files, [i % 2 for i in range(n)], {0: "a", 1: "b"}))
    m = convert(ConvertConfig(layout="herbarium", src=str(src), out=str(tmp_path / "out"), workers=1), log=quiet)
    assert (m["splits"]["train"]["count"], m["splits"]["val"]["count"]) == (4, 2)
    assert m["splits"]["train"]["per_class"] == [2, 2]


def test_folder_layout_keeps_class_indices_across_splits(tmp_path, photos):
    src = tmp_path / "tree"
    for split, classes in (("train", ["cat", "dog"]), ("val", ["cat", "dog", "eel"])):
        for j, c in enumerate(classes):
            (src / split / c).mkdir(parents=True)
            shutil.copy(photos[j], src / split / c / f"{j}.jpg")
    m = convert(ConvertConfig(layout="folder", src=str(src), out=str(tmp_path / "out"), workers=1), log=quiet)
    assert m["num_classes"] == 3
    assert m["splits"]["train"]["per_class"] == [1, 1, 0] and m["splits"]["val"]["per_class"] == [1, 1, 1]


def test_recordio_conversion_works_without_ffcv(tmp_path, photos, monkeypatch):
    """A machine without FFCV (the GPU machines here have none) converts to RecordIO: nothing imports ffcv."""
    import sys

    for name in [m for m in sys.modules if m == "ffcv" or m.startswith("ffcv.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ffcv", None)  # `import ffcv` now raises ImportError
    src = tmp_path / "tree"
    for j, c in enumerate(["cat", "dog"]):
        (src / "train" / c).mkdir(parents=True)
        shutil.copy(photos[j], src / "train" / c / f"{j}.jpg")
    m = convert(ConvertConfig(layout="folder", src=str(src), out=str(tmp_path / "out"), formats=("recordio",),
                              workers=1), log=quiet)
    assert m["splits"]["train"]["count"] == 2 and m["formats"]["beton"]["ffcv_version"] == beton.VERSION


def test_imagenet_devkit_val_labels(tmp_path, photos):
    from scipy.io import savemat

    src = tmp_path / "in"
    wnids = ["n01440764", "n01443537"]
    for w, p in zip(wnids, photos):
        (src / "train" / w).mkdir(parents=True)
        shutil.copy(p, src / "train" / w / "a.JPEG")
    (src / "val").mkdir()
    for i in range(3):
        shutil.copy(photos[i], src / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    data = src / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    # the devkit numbers classes by ILSVRC2012_ID, here in the reverse of wnid order
    synsets = np.array([(1, wnids[1]), (2, wnids[0])], dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O")])
    savemat(str(data / "meta.mat"), {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n1\n")
    convert(ConvertConfig(layout="imagenet", src=str(src), out=str(tmp_path / "out"), workers=1), log=quiet)
    assert [lab for _, lab, _ in index_rows(tmp_path / "out", "val")] == [1, 0, 1]


@pytest.mark.parametrize("layout, make, expect", [
    ("imagenet", lambda d: (d / "images").mkdir(), "expected SRC/train/nXXXXXXXX"),
    ("imagenet", lambda d: (d / "train" / "cats").mkdir(parents=True), "only wnid folders"),
    ("herbarium", lambda d: (d / "train").mkdir(), "metadata.json"),
    ("folder", lambda d: None, "class folders"),
])
def test_wrong_layout_says_what_was_expected_and_found(tmp_path, layout, make, expect):
    src = tmp_path / "src"
    src.mkdir()
    make(src)
    with pytest.raises(UserError, match=expect) as e:
        convert(ConvertConfig(layout=layout, src=str(src), out=str(tmp_path / "out")), log=quiet)
    assert "found" in str(e.value)


def test_bad_options_are_refused(tmp_path):
    for kw, msg in ((dict(max_side=0), "--max-side"), (dict(formats=("zip",)), "formats"),
                    (dict(write_mode="raw"), "beton only"), (dict(jpeg_quality=101), "--jpeg-quality")):
        with pytest.raises(UserError, match=msg):
            convert(ConvertConfig(layout="folder", src=str(tmp_path), out=str(tmp_path / "o"), **kw), log=quiet)


@needs("ffcv")
def test_raw_write_mode_reads_back_through_ffcv(tmp_path, photos):
    src = tmp_path / "tree" / "c"
    src.mkdir(parents=True)
    for p in photos[:3]:
        shutil.copy(p, src)
    out = tmp_path / "out"
    convert(ConvertConfig(layout="folder", src=str(tmp_path / "tree"), out=str(out), formats=("beton",),
                          write_mode="raw", max_side=128, workers=1), log=quiet)
    assert verify(out, workers=1, log=quiet)["train"] == {"count": 3, "crc32": "ok", "beton": "ok"}
    data, w, h, _ = beton_images(out / "train.beton")[0]
    assert (w, h) == (128, 128) and len(data) == 128 * 128 * 3
    reader = BetonReader(out / "train.beton")
    assert reader.is_raw(0) and bytes(reader.read(0)) == data


@needs("ffcv")
def test_beton_dtypes_are_ffcvs():
    from ffcv import types
    from ffcv.fields import IntField, RGBImageField

    assert (beton.HEADER, beton.FIELD_DESC, beton.ALLOC) == (types.HeaderType, types.FieldDescType, types.ALLOC_TABLE_TYPE)
    assert beton.METADATA == types.get_metadata_type([RGBImageField(), IntField()])
    assert beton.VERSION == types.CURRENT_VERSION
    assert [types.TYPE_ID_HANDLER[t] for t in beton.TYPE_IDS] == [RGBImageField, IntField]


@needs("ffcv")
def test_beton_reader_reads_what_ffcv_reads(imagenet_records, tmp_path):
    path = imagenet_records["out"] / "train.beton"
    reader = BetonReader(path)
    got = [(bytes(reader.read(i)), int(reader.image["width"][i]), int(reader.image["height"][i]), int(reader.labels[i]))
           for i in range(len(reader))]
    assert got == beton_images(path) and not any(reader.is_raw(i) for i in range(len(reader)))
    cut = tmp_path / "cut.beton"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size - 40])  # the allocation table loses its end
    with pytest.raises(ValueError, match="truncated or damaged"):
        BetonReader(cut)


def test_max_side_warning(tmp_path, photos):
    src = tmp_path / "tree" / "c"
    src.mkdir(parents=True)
    shutil.copy(photos[0], src)
    lines = []
    m = convert(ConvertConfig(layout="folder", src=str(tmp_path / "tree"), out=str(tmp_path / "out"), max_side=256,
                              test_res=288, workers=1), log=lines.append)
    assert any("--max-side 256 is below K_test^image = 329" in s for s in lines)
    assert m["splits"]["train"]["max_side_for_test_res"] == 330
