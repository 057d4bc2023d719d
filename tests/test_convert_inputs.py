"""Hostile inputs to `convert`: each ends in stored records that are right, or in one clear line."""
import shutil
import subprocess
import uuid

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fixres_fast.cli import main
from fixres_fast.convert import ConvertConfig, convert, verify
from fixres_fast.convert.beton import BetonReader
from fixres_fast.convert.image import FIRST_FRAME, MAX_PIXELS, prepare
from fixres_fast.convert.index import escape_path, read_index, unescape_path
from fixres_fast.loaders import make_loader
from fixres_fast.loaders.source import open_source
from fixres_fast.spec import make_spec

from . import imagesets
from .conftest import needs


def quiet(*_):
    pass


def one_class_tree(root, files):
    """SRC/train/c/<name> for each (name, writer) in ``files``; returns SRC."""
    d = root / "src" / "train" / "c"
    d.mkdir(parents=True)
    for name, write in files:
        write(d / name)
    return root / "src"


def raw_pixels(out, split="train"):
    reader = BetonReader(out / f"{split}.beton")
    return [np.asarray(reader.read(i)).reshape(int(reader.image["height"][i]), int(reader.image["width"][i]), 3)
            for i in range(len(reader))]


def run_cli(*args):
    """(exit code, the error line); asserts the command printed exactly one error line and no traceback."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    errors = [s for s in result.output.splitlines() if s.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return result.exit_code, errors[0]


# --- pixels --------------------------------------------------------------------------------------

def test_16_bit_pngs_are_scaled_to_8_bits(tmp_path):
    grey = (np.arange(64 * 16, dtype=np.uint32).reshape(16, 64) * 64).astype(np.uint16)  # 0 .. 65472
    rgb = np.stack([grey, 65535 - grey, np.full_like(grey, 40000)], axis=-1)
    src = one_class_tree(tmp_path, [("a_grey16.png", lambda p: imagesets.write_png16(p, grey)),
                                    ("b_rgb48.png", lambda p: imagesets.write_png16(p, rgb))])
    out = tmp_path / "out"
    convert(ConvertConfig(layout="folder", src=str(src), out=str(out), formats=("beton",), write_mode="raw",
                          workers=1), log=quiet)
    _, paths = read_index(out / "train.index.tsv")
    stored = dict(zip((p.rsplit("/", 1)[1] for p in paths), raw_pixels(out)))
    for name, want16 in (("a_grey16.png", np.stack([grey] * 3, axis=-1)), ("b_rgb48.png", rgb)):
        got = stored[name].astype(np.float64)
        assert np.abs(got - want16 / 257).max() <= 1, f"{name} is not its 16-bit values scaled to 8 bits"


def test_a_decompression_bomb_is_skipped_on_its_header_before_decoding(tmp_path, photos):
    """31,000^2 px (just above MAX_PIXELS, where PIL only warns) in ~120 KB: skipped on the size in its header."""
    bomb = tmp_path / "bomb.png"
    imagesets.write_bomb_png(bomb)
    assert bomb.stat().st_size < 300_000 and 31_000 ** 2 > MAX_PIXELS
    assert prepare(str(bomb), max_side=512).startswith(f"image larger than {MAX_PIXELS} pixels")
    src = one_class_tree(tmp_path, [("bomb.png", lambda p: shutil.copy(bomb, p)),
                                    ("photo.jpg", lambda p: shutil.copy(photos[0], p))])
    m = convert(ConvertConfig(layout="folder", src=str(src), out=str(tmp_path / "out"), workers=1), log=quiet)
    assert m["splits"]["train"]["count"] == 1
    [skip] = m["splits"]["train"]["skipped"]
    assert skip["path"].endswith("bomb.png") and skip["reason"].startswith("image larger than")


def test_an_animated_gif_is_stored_as_its_first_frame(tmp_path, photos):
    src = one_class_tree(tmp_path, [("anim.gif", imagesets.write_animated_gif),
                                    ("photo.jpg", lambda p: shutil.copy(photos[0], p))])
    out = tmp_path / "out"
    lines = []
    m = convert(ConvertConfig(layout="folder", src=str(src), out=str(out), formats=("beton",), write_mode="raw",
                              workers=1), log=lines.append)
    split = m["splits"]["train"]
    assert split["count"] == 2 and split["skipped"] == [] and split["reencoded"][FIRST_FRAME] == 1
    assert any(f"{FIRST_FRAME} 1" in s for s in lines)
    _, paths = read_index(out / "train.index.tsv")
    gif = raw_pixels(out)[[p.endswith(".gif") for p in paths].index(True)]
    assert gif.shape == (32, 48, 3)
    assert np.abs(gif.reshape(-1, 3).astype(int) - imagesets.GIF_FRAMES[0]).max() <= 2


# --- file names ----------------------------------------------------------------------------------

ODD_NAMES = ("new\nline.jpg", "tab\there.jpg", "para\u2029graph.jpg", "back\\slash\\n.jpg", "cr\r.jpg",
             "sep\x1c\x85\u2028.jpg", "plain.jpg")


def test_index_escaping_round_trips_every_line_break():
    for name in ODD_NAMES + ("\\u2029 literally", "\udcff not utf-8"):
        line = escape_path("/d/" + name)
        assert len(line.splitlines()) == 1 and "\t" not in line and unescape_path(line) == "/d/" + name


@needs("ffcv", "dali")
def test_file_names_with_line_breaks_convert_verify_and_load(tmp_path, photos):
    src = one_class_tree(tmp_path, [(n, lambda p, k=k: shutil.copy(photos[k], p)) for k, n in enumerate(ODD_NAMES)])
    out = tmp_path / "out"
    convert(ConvertConfig(layout="folder", src=str(src), out=str(out), workers=1), log=quiet)
    labels, paths = read_index(out / "train.index.tsv")
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == sorted(ODD_NAMES) and list(labels) == [0] * len(ODD_NAMES)
    assert verify(out, workers=1, log=quiet)["train"] == {"count": len(ODD_NAMES), "beton": "ok", "recordio": "ok",
                                                         "crc32": "ok"}
    assert open_source(out, "train").paths == paths
    loader = make_loader("torch", make_spec("test", 32), out, "train", batch_size=4, workers=1, device="cpu")
    got = torch.cat([lab for _, lab in loader])
    assert got.tolist() == [0] * len(ODD_NAMES)


# --- empty splits --------------------------------------------------------------------------------

def test_a_split_with_no_images_is_refused(tmp_path, photos):
    one_class_tree(tmp_path, [("a.jpg", lambda p: shutil.copy(photos[0], p))])
    for c in ("a", "b"):
        (tmp_path / "src" / "val" / c).mkdir(parents=True)
    code, text = run_cli("convert", "folder", tmp_path / "src", tmp_path / "out", "--workers", "1")
    assert code == 1
    assert "split 'val'" in text and "holds no images" in text
    shutil.rmtree(tmp_path / "src" / "train")  # and a tree with no image at all: refused by the layout
    code, text = run_cli("convert", "folder", tmp_path / "src", tmp_path / "out", "--workers", "1")
    assert code == 1 and "no image files" in text


def test_a_split_whose_every_file_is_skipped_is_refused(tmp_path):
    src = one_class_tree(tmp_path, [("empty.jpg", lambda p: p.write_bytes(b"")),
                                    ("junk.jpg", lambda p: p.write_bytes(b"not an image"))])
    code, text = run_cli("convert", "folder", src, tmp_path / "out", "--workers", "1")
    assert code == 1
    assert "all 2 files were skipped" in text and "zero-byte file" in text
    assert not list((tmp_path / "out").glob("*.partial")) and not (tmp_path / "out" / "manifest.json").exists()


# --- where OUT cannot be written -----------------------------------------------------------------

@pytest.fixture
def mounted(tmp_path):
    """mount(options) -> a fresh tmpfs mounted with ``options``; unmounted after the test. Needs root."""
    mounts = []

    def mount(options):
        d = tmp_path / f"mnt-{uuid.uuid4().hex[:8]}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
        mounts.append(d)
        return d

    yield mount
    for d in mounts:
        subprocess.run(["umount", "--lazy", str(d)], check=False)  # detached even where a file is still open


def small_tree(root, photos, n=60):
    d = root / "src" / "train" / "c"
    d.mkdir(parents=True)
    for k in range(n):
        shutil.copy(photos[k % len(photos)], d / f"{k}.jpg")
    return root / "src"


def test_an_out_that_cannot_be_written_gets_one_line(tmp_path, photos, mounted):
    src = small_tree(tmp_path, photos, n=2)
    (tmp_path / "file").write_text("x")
    read_only = mounted("ro,size=1m")
    for out in (tmp_path / "file" / "out", read_only, read_only / "out"):
        code, text = run_cli("convert", "folder", src, out, "--workers", "1")
        assert code == 1, text
        assert f"cannot write the conversion to {out}" in text, text


def test_a_full_disk_removes_the_partial_files_and_says_how_much_is_needed(tmp_path, photos, mounted):
    src = small_tree(tmp_path, photos)
    disk = mounted("size=1m")
    code, text = run_cli("convert", "folder", src, disk / "out", "--workers", "1")
    assert code == 1, text
    assert "no space left" in text and "partial files were removed" in text and "needs about" in text, text
    assert not list((disk / "out").glob("*.partial"))
    need = float(text.split("needs about ")[1].split(" MB")[0]) * 1e6
    roomy = tmp_path / "roomy"
    convert(ConvertConfig(layout="folder", src=str(src), out=str(roomy), workers=1), log=quiet)
    written = sum(p.stat().st_blocks * 512 for p in roomy.iterdir())  # the .beton's header gap is a hole
    assert 0.5 * written < need < 2 * written, (need, written, text)
