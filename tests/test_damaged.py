"""Damaged records and data folders: one policy in every backend (stop naming the record, or skip and count),
found by the CRC-32 the conversion recorded (or, without CRCs, libjpeg's decode check), truncated files refused in
one line, and the auto backend picking one that can read what is there."""
import io
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fixres_fast.convert import ConvertConfig, convert, verify
from fixres_fast.convert.beton import BetonReader
from fixres_fast.convert.verify import VerifyError
from fixres_fast.data import backend_for
from fixres_fast.errors import UserError
from fixres_fast.loaders import RecordError, make_loader
from fixres_fast.loaders.kernels import check_jpeg
from fixres_fast.loaders.source import open_source
from fixres_fast.spec import make_spec

from .conftest import each, needs

BACKENDS = ("torch", "ffcv", "dali")  # torch first: no DataLoader fork after DALI has run in this process
VICTIM = 2  # the damaged val record


def flip_bytes(jpeg: bytes) -> bytes:
    """Every 4th byte of 64 in the middle of the entropy-coded data inverted: libjpeg warns, PIL decodes."""
    out = bytearray(jpeg)
    for k in range(len(jpeg) // 2, len(jpeg) // 2 + 64, 4):
        out[k] ^= 0xFF
    return bytes(out)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, photos):
    """6 real photos converted (train and val splits, both formats); record 2 of each split damaged in the .beton
    and the .rec alike."""
    root = tmp_path_factory.mktemp("damaged")
    for split in ("train", "val"):
        for j in range(6):
            (root / "src" / split / f"c{j % 2}").mkdir(parents=True, exist_ok=True)
            shutil.copy(photos[j + (6 if split == "train" else 0)], root / "src" / split / f"c{j % 2}" / f"{j}.jpg")
    out = root / "out"
    convert(ConvertConfig(layout="folder", src=str(root / "src"), out=str(out), workers=1), log=lambda *_: None)
    for split in ("train", "val"):
        jpeg = open_source(out, split).read(VICTIM).tobytes()
        bad = flip_bytes(jpeg)
        assert check_jpeg(np.frombuffer(bad, np.uint8)) == -4  # libjpeg: "Corrupt JPEG data"
        Image.open(io.BytesIO(bad)).load()  # which PIL decodes around, silently
        for f in list(out.glob(f"{split}*.rec")) + [out / f"{split}.beton"]:
            data = f.read_bytes()
            assert data.count(jpeg) == 1
            f.write_bytes(data.replace(jpeg, bad))
    labels = open_source(out, "val").labels
    return out, labels


def without_crcs(out):
    """``out`` as a conversion made before CRCs were recorded: no ``.crc32`` files, none in the manifest."""
    manifest = json.loads((out / "manifest.json").read_text())
    for split in manifest["splits"].values():
        split["files"] = [f for f in split["files"] if not f["name"].endswith(".crc32")]
    (out / "manifest.json").write_text(json.dumps(manifest))
    for p in out.glob("*.crc32"):
        p.unlink()
    return out


@pytest.fixture(scope="module")
def sources(damaged, tmp_path_factory):
    """Where the damaged record lies, and how it is found: records with CRCs (CRC-32), records converted without
    them (libjpeg's decode check), an ImageFolder tree (the decode check; no ffcv there)."""
    out, labels = damaged
    old = without_crcs(shutil.copytree(out, tmp_path_factory.mktemp("old") / "out"))
    tree = shutil.copytree(out.parent / "src", tmp_path_factory.mktemp("tree") / "src")
    bad = tree / "val" / open_source(out, "val").paths[VICTIM].split("/val/", 1)[1]
    bad.write_bytes(flip_bytes(bad.read_bytes()))
    assert open_source(tree, "val").labels.tolist() == labels.tolist()
    crc, decode = "its bytes do not match the CRC-32 the conversion recorded", "libjpeg reports corrupt data"
    return {"crc": (out, crc), "old": (old, decode), "tree": (tree, decode)}


CASES = [pytest.param(kind, b, marks=needs(b)) for kind in ("crc", "old", "tree") for b in BACKENDS if (kind, b) != ("tree", "ffcv")]


@pytest.mark.parametrize("kind,backend", CASES)
def test_flipped_bytes_stop_and_name_the_record(sources, kind, backend):
    where, why = sources[kind]
    loader = make_loader(backend, make_spec("test", 64), where, "val", batch_size=3, workers=1)
    with pytest.raises(RecordError, match=rf" {VICTIM} of split 'val' .*is damaged: {why}"
                                          r".*`fixres-fast convert verify OUT`.*--on-corrupt skip"):
        list(loader)


@pytest.mark.parametrize("kind,backend", CASES)
def test_flipped_bytes_skipped_and_counted(damaged, sources, kind, backend, capfd):
    _, labels = damaged
    loader = make_loader(backend, make_spec("test", 64), sources[kind][0], "val", batch_size=3, workers=1,
                         on_corrupt="skip")
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert [len(y) for _, y in batches] == [2, 3]  # the batch is one image shorter; nothing is seen twice
        got = torch.cat([y for _, y in batches]).tolist()
        assert got == np.delete(labels, VICTIM).tolist()
        assert all(torch.isfinite(x).all() for x, _ in batches)
    assert loader.skipped == 2
    assert "epoch 1: left out 1 damaged record(s) of split 'val'" in capfd.readouterr().err


@pytest.mark.parametrize("backend", each(("ffcv", "torch")))
def test_flipped_pixels_of_a_raw_record_found_by_its_crc(damaged, tmp_path, backend):
    """Raw pixels have no decoder to complain: only the CRC-32 sees them change."""
    out = tmp_path / "raw"
    convert(ConvertConfig(layout="folder", src=str(damaged[0].parent / "src"), out=str(out), formats=("beton",),
                          write_mode="raw", workers=1), log=lambda *_: None)
    start = int(BetonReader(out / "val.beton").image["data_ptr"][VICTIM])
    with open(out / "val.beton", "r+b") as f:
        f.seek(start + 100)
        pixels = f.read(8)
        f.seek(start + 100)
        f.write(bytes(b ^ 0xFF for b in pixels))
    with pytest.raises(RecordError, match=rf"record {VICTIM} of split 'val' .*do not match the CRC-32"):
        list(make_loader(backend, make_spec("test", 64), out, "val", batch_size=3, workers=1))


def test_a_conversion_without_crcs_is_warned_about_once(sources, tmp_path, capfd):
    old = shutil.copytree(sources["old"][0], tmp_path / "old")  # a conversion this process has not warned about
    for split in ("val", "train", "val"):
        make_loader("torch", make_spec("test", 64), old, split, batch_size=3, workers=1)
    err = capfd.readouterr().err
    assert err.count("records no CRC-32 per record") == 1, err
    assert "decode check, which is slower; re-convert to add them" in err


@needs("ffcv", "dali")
def test_crcs_in_the_manifest_and_checked_by_verify(damaged, tmp_path):
    out = tmp_path / "out"
    convert(ConvertConfig(layout="folder", src=str(damaged[0].parent / "src"), out=str(out), workers=1),
            log=lambda *_: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"train.crc32", "val.crc32"} <= {f["name"] for s in manifest["splits"].values() for f in s["files"]}
    assert (out / "val.crc32").stat().st_size == 4 * 6
    assert verify(out, workers=1, log=lambda *_: None)["val"]["crc32"] == "ok"
    jpeg = open_source(out, "val").read(VICTIM).tobytes()
    data = (out / "val.beton").read_bytes()
    (out / "val.beton").write_bytes(data.replace(jpeg, flip_bytes(jpeg)))
    from fixres_fast.convert.outputs import sha256

    for f in manifest["splits"]["val"]["files"]:  # a manifest that agrees with the damaged file: only the CRCs see it
        f["sha256"] = sha256(out / f["name"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(VerifyError, match=rf"val beton: record {VICTIM} of split 'val' .*does not match its CRC-32"):
        verify(out, workers=1, log=lambda *_: None)


def test_a_batch_of_nothing_but_damaged_records_stops_even_when_skipping(damaged):
    out, _ = damaged
    loader = make_loader("torch", make_spec("test", 64), out, "val", batch_size=1, workers=0, on_corrupt="skip")
    with pytest.raises(RecordError, match="so are all 1 records of its batch"):
        list(loader)


def test_unknown_policy_is_refused(damaged):
    with pytest.raises(UserError, match="choose one of stop, skip"):
        make_loader("torch", make_spec("test", 64), damaged[0], "val", on_corrupt="ignore")


@needs("ffcv", "dali")
def test_auto_backend_reads_what_is_there(damaged, tmp_path, photos):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    out, _ = damaged
    tree = out.parent / "src"
    assert backend_for("auto", cpu, out) == "ffcv" and backend_for("auto", cuda, out) == "dali"
    assert backend_for("auto", cpu, tree) == "torch" and backend_for("auto", cuda, tree) == "dali"
    rec = tmp_path / "rec"
    convert(ConvertConfig(layout="folder", src=str(tree), out=str(rec), formats=("recordio",), workers=1), log=lambda *_: None)
    assert backend_for("auto", cpu, rec) == "torch"
    raw = tmp_path / "raw"
    convert(ConvertConfig(layout="folder", src=str(tree), out=str(raw), formats=("beton",), write_mode="raw", workers=1),
            log=lambda *_: None)
    assert backend_for("auto", cuda, raw) == "ffcv"
    assert backend_for("torch", cpu, raw) == "torch"  # a named backend is kept


@pytest.mark.parametrize("cut", ["val.beton", "val-00000-of-00001.rec"])
@pytest.mark.parametrize("backend", each(BACKENDS))
def test_a_truncated_file_is_one_line_from_every_backend(damaged, tmp_path, backend, cut):
    out = tmp_path / "out"
    shutil.copytree(damaged[0], out)
    size = (out / cut).stat().st_size
    with open(out / cut, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(UserError, match=rf"{cut} is truncated \({size // 2} of {size} bytes\): re-convert") as e:
        list(make_loader(backend, make_spec("test", 64), out, "val", batch_size=3, workers=1))
    assert "\n" not in str(e.value)


def test_train_on_corrupt_option(damaged, tmp_path):
    """Through the CLI: stop is one line naming the record; skip trains, and says what it left out."""
    from click.testing import CliRunner

    from fixres_fast.cli import main

    args = ["train", "--data", str(damaged[0]), "--arch", "fixres_cnn", "--res", "32", "--epochs", "1", "--batch-size",
            "6", "--repeats", "1", "--device", "cpu", "--backend", "torch", "--workers", "1"]
    res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "a")])
    assert res.exit_code == 1 and f"record {VICTIM} of split 'train'" in res.output and "--on-corrupt skip" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "b"), "--on-corrupt", "skip"])
    assert res.exit_code == 0, res.output
    assert "epoch 0: left out 1 damaged record(s) of split 'train'" in res.output
    assert "left out 1 damaged record(s) of split 'val'" in res.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", each(("torch", "dali")))  # nvJPEG decodes around corrupt data as PIL does
def test_flipped_bytes_on_the_gpu(damaged, backend):
    out, labels = damaged
    spec = make_spec("test", 64)
    with pytest.raises(RecordError, match=rf"record {VICTIM} of split 'val' .*do not match the CRC-32"):
        list(make_loader(backend, spec, out, "val", batch_size=3, workers=1, device="cuda"))
    loader = make_loader(backend, spec, out, "val", batch_size=3, workers=1, device="cuda", on_corrupt="skip")
    got = torch.cat([y for _, y in loader]).cpu().tolist()
    assert got == np.delete(labels, VICTIM).tolist() and loader.skipped == 1


def test_train_with_the_auto_backend_on_an_image_folder_tree(damaged, tmp_path):
    """The tree the records were converted from (no .beton there): auto must not pick ffcv."""
    from click.testing import CliRunner

    from fixres_fast.cli import main

    res = CliRunner().invoke(main, ["train", "--data", str(damaged[0].parent / "src"), "--arch", "fixres_cnn", "--res",
                                    "32", "--epochs", "1", "--batch-size", "6", "--repeats", "1", "--device", "cpu",
                                    "--workers", "1", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "last.pt").is_file()


@pytest.mark.parametrize("damage", ["cut", "no splits", "not an object"])
def test_a_damaged_manifest_is_one_line_for_every_reader(damaged, tmp_path, damage):
    """verify (through the CLI), the loaders and the auto backend all say the manifest is damaged, in one line."""
    from click.testing import CliRunner

    from fixres_fast.cli import main

    out = tmp_path / "out"
    shutil.copytree(damaged[0], out)
    text = (out / "manifest.json").read_text()
    doc = json.loads(text)
    doc.pop("splits")
    (out / "manifest.json").write_text({"cut": text[: len(text) // 2], "no splits": json.dumps(doc),
                                        "not an object": "[1, 2]"}[damage])
    res = CliRunner().invoke(main, ["convert", "verify", str(out)])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "is not the manifest a conversion writes" in lines[0] and "re-convert" in lines[0]
    for read in (lambda: open_source(out, "val"), lambda: backend_for("auto", torch.device("cpu"), out)):
        with pytest.raises(UserError, match="manifest.json is not the manifest a conversion writes") as e:
            read()
        assert "\n" not in str(e.value)
