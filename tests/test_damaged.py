"""Damaged records and data folders: one policy in every backend (stop naming the record, or skip and count),
truncated files refused in one line, and the auto backend picking one that can read what is there."""
import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fixres_fast.convert import ConvertConfig, convert
from fixres_fast.data import backend_for
from fixres_fast.errors import UserError
from fixres_fast.loaders import RecordError, make_loader
from fixres_fast.loaders.kernels import check_jpeg
from fixres_fast.loaders.source import open_source
from fixres_fast.spec import make_spec

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


@pytest.mark.parametrize("backend", BACKENDS)
def test_flipped_bytes_stop_and_name_the_record(damaged, backend):
    out, _ = damaged
    loader = make_loader(backend, make_spec("test", 64), out, "val", batch_size=3, workers=1)
    with pytest.raises(RecordError, match=rf"record {VICTIM} of split 'val' .*is damaged: libjpeg reports corrupt "
                                          r"data.*`fixres-fast convert verify OUT`.*--on-corrupt skip"):
        list(loader)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flipped_bytes_skipped_and_counted(damaged, backend, capfd):
    out, labels = damaged
    loader = make_loader(backend, make_spec("test", 64), out, "val", batch_size=3, workers=1, on_corrupt="skip")
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert [len(y) for _, y in batches] == [2, 3]  # the batch is one image shorter; nothing is seen twice
        got = torch.cat([y for _, y in batches]).tolist()
        assert got == np.delete(labels, VICTIM).tolist()
        assert all(torch.isfinite(x).all() for x, _ in batches)
    assert loader.skipped == 2
    assert "epoch 1: left out 1 damaged record(s) of split 'val'" in capfd.readouterr().err


def test_a_batch_of_nothing_but_damaged_records_stops_even_when_skipping(damaged):
    out, _ = damaged
    loader = make_loader("torch", make_spec("test", 64), out, "val", batch_size=1, workers=0, on_corrupt="skip")
    with pytest.raises(RecordError, match="so are all 1 records of its batch"):
        list(loader)


def test_unknown_policy_is_refused(damaged):
    with pytest.raises(UserError, match="choose one of stop, skip"):
        make_loader("torch", make_spec("test", 64), damaged[0], "val", on_corrupt="ignore")


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
@pytest.mark.parametrize("backend", BACKENDS)
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
@pytest.mark.parametrize("backend", ["torch", "dali"])  # nvJPEG decodes around corrupt data as PIL does
def test_flipped_bytes_on_the_gpu(damaged, backend):
    out, labels = damaged
    spec = make_spec("test", 64)
    with pytest.raises(RecordError, match=rf"record {VICTIM} of split 'val' .*libjpeg reports corrupt data"):
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
