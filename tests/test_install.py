"""A `pip install -e .` without extras: FFCV and DALI absent. Each run below blocks them in a fresh interpreter the
way Python documents (``sys.modules[name] = None`` makes ``import name`` raise ImportError, and find_spec sees none),
then runs the real command."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

#: the optional libraries, as absent as they are in a venv without the extras
BLOCK = "import sys\nfor name in {names!r}: sys.modules[name] = None\n"
CLI = BLOCK + "from fixres_fast.cli import main\nmain()\n"
PYTEST = BLOCK + "import pytest\nsys.exit(pytest.main(sys.argv[1:]))\n"
ALL = ("ffcv", "nvidia.dali")


def without(names, script, *args, env=None):
    return subprocess.run([sys.executable, "-c", script.format(names=names), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def train_args(data, out, backend):
    return ["train", "--data", str(data), "--arch", "fixres_cnn", "--res", "32", "--epochs", "1", "--batch-size", "8",
            "--repeats", "1", "--device", "cpu", "--workers", "1", "--backend", backend, "--out", str(out)]


# "nvidia": no nvidia package at all, as beside a CPU-only torch (find_spec("nvidia.dali") must not raise then)
@pytest.mark.parametrize("backend,module,lib", [("ffcv", "ffcv", "FFCV"), ("dali", "nvidia.dali", "DALI"),
                                                ("dali", "nvidia", "DALI")])
def test_naming_a_backend_that_is_not_installed_is_one_line(imagenet_records, tmp_path, backend, module, lib):
    res = without((module,), CLI, *train_args(imagenet_records["out"], tmp_path / "run", backend))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"Error: the {backend} backend needs {lib}, which is not installed: pip install 'fixres-fast[{backend}]' "
        "(see README), or use --backend torch"]


def test_auto_trains_with_torch_when_neither_ffcv_nor_dali_is_installed(imagenet_records, tmp_path):
    """Records with a .beton and RecordIO, which auto would give FFCV (DALI on a GPU): without them, torch; nothing
    imported on the way (the CLI, the jobs, the torch backend) needs either."""
    script = CLI.replace("main()\n", "import fixres_fast.data as d, torch\n"
                         f"assert d.backend_for('auto', torch.device('cuda', 0), {str(imagenet_records['out'])!r}) == 'torch'\n"
                         "main()\n")
    res = without(ALL, script, *train_args(imagenet_records["out"], tmp_path / "run", "auto"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "run" / "last.pt").is_file()


def test_a_test_that_needs_ffcv_skips_without_it_and_fails_in_ci():
    """conftest.needs: skipped where FFCV is missing; under FIXRES_REQUIRE_BACKENDS=1 (./dev test) it fails."""
    case = ["-q", "-p", "no:cacheprovider", f"{Path(__file__).parent / 'test_convert.py'}::test_beton_dtypes_are_ffcvs"]
    skipped = without(("ffcv",), PYTEST, *case, "-rs", env={"FIXRES_REQUIRE_BACKENDS": "0"})
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout and "needs FFCV" in skipped.stdout, skipped.stdout
    failed = without(("ffcv",), PYTEST, *case, env={"FIXRES_REQUIRE_BACKENDS": "1"})
    assert failed.returncode == 1 and "needs FFCV, not installed, and FIXRES_REQUIRE_BACKENDS=1" in failed.stdout, failed.stdout


@pytest.fixture(scope="module")
def one_format(tmp_path_factory, photos):
    """4 photos converted twice: a .beton alone (verify reads it with FFCV) and RecordIO alone (with DALI)."""
    import shutil

    from fixres_fast.convert import ConvertConfig, convert

    root = tmp_path_factory.mktemp("one-format")
    for j, p in enumerate(photos[:4]):
        (root / "src" / f"c{j % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / "src" / f"c{j % 2}")
    for fmt in ("beton", "recordio"):
        convert(ConvertConfig(layout="folder", src=str(root / "src"), out=str(root / fmt), formats=(fmt,), workers=1),
                log=lambda *_: None)
    return root


@pytest.mark.parametrize("fmt,module,line", [
    ("beton", "ffcv", "Error: verify (it re-reads each .beton through FFCV's Loader) needs FFCV, which is not installed: "
                      "pip install 'fixres-fast[ffcv]' (see README), or skip verifying (the loaders still check each "
                      "record's CRC-32 as they read it)"),
    ("recordio", "nvidia.dali", "Error: verify (it re-reads RecordIO shards through DALI) needs DALI, which is not "
                                "installed: pip install 'fixres-fast[dali]' (see README), or skip verifying (the loaders "
                                "still check each record's CRC-32 as they read it)")])
def test_verify_without_its_reader_is_one_line(one_format, fmt, module, line):
    res = without((module,), CLI, "convert", "verify", str(one_format / fmt), "--workers", "1")
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [line], res.stderr


def test_the_dali_sampler_without_dali_is_one_line():
    res = without(("nvidia.dali",), CLI, "analyze", "scale", "--samples", "100", "--sampler", "dali")
    assert res.returncode == 1 and res.stderr.strip().splitlines() == [
        "Error: the dali RoC sampler needs DALI, which is not installed: pip install 'fixres-fast[dali]' (see README), "
        "or choose another sampler"], res.stderr
