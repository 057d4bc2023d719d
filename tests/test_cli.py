"""The command line: every command explains itself; bad input gives a message, not a traceback."""
import subprocess
import sys

import pytest
from click.testing import CliRunner

from fixres_fast.cli import main

COMMANDS = [[], ["demo"], ["convert"], ["convert", "imagenet"], ["convert", "inat"], ["convert", "herbarium"],
            ["convert", "folder"], ["convert", "verify"], ["train"], ["adapt"], ["evaluate"], ["profile"],
            ["analyze"], ["analyze", "scale"], ["analyze", "roc"], ["analyze", "activations"]]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help(cmd):
    res = CliRunner().invoke(main, cmd + ["--help"])
    assert res.exit_code == 0 and "Usage:" in res.output


def test_convert_help_speaks_the_papers_terms():
    res = CliRunner().invoke(main, ["convert", "imagenet", "--help"])
    assert "K_test" in res.output and "256/224" in res.output


def test_wrong_layout_is_a_one_line_error(tmp_path):
    (tmp_path / "src" / "pictures").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "fixres_fast.cli", "convert", "imagenet", str(tmp_path / "src"),
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "expected SRC/train/nXXXXXXXX/*.JPEG" in proc.stderr and "pictures/" in proc.stderr


def test_verify_of_a_folder_that_was_never_converted(tmp_path):
    res = CliRunner().invoke(main, ["convert", "verify", str(tmp_path)])
    assert res.exit_code == 1 and "not a finished conversion" in res.output


def test_inat_needs_a_known_year(tmp_path):
    res = CliRunner().invoke(main, ["convert", "inat", str(tmp_path), str(tmp_path / "o"), "--year", "2020"])
    assert res.exit_code == 2 and "2017" in res.output
