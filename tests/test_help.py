"""--help of every command and subcommand reads cleanly: one default per option, whole summaries, no repeats."""
import re

import click
import pytest
from click.testing import CliRunner

from fixres_fast.cli import main
from fixres_fast.errors import UserError
from fixres_fast.models import build_model

from .conftest import needs


def commands(cmd=main, path=()):
    yield list(path), cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from commands(sub, path + (name,))


@pytest.mark.parametrize("path", [p for p, _ in commands()], ids=lambda p: " ".join(p) or "fixres-fast")
def test_help_states_each_default_once(path):
    res = CliRunner().invoke(main, path + ["--help"], terminal_width=100)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # wrapped lines joined
    assert not re.search(r"\]\.? \[default", text), text
    assert '[default: ""]' not in text


@pytest.mark.parametrize("path", [p for p, c in commands() if isinstance(c, click.Group)], ids=lambda p: " ".join(p) or "fixres-fast")
def test_group_listing_shows_whole_summaries(path):
    res = CliRunner().invoke(main, path + ["--help"], terminal_width=100)
    listing = res.output.split("Commands:")[1].strip().splitlines()
    assert listing
    for line in listing:
        summary = line.split(None, 1)[1]
        assert not summary.endswith("..."), line
        assert summary.count("(") == summary.count(")"), line  # not cut inside "(Sec. 4.2)"


def test_unknown_architecture_suggests_each_name_once():
    with pytest.raises(UserError, match="did you mean") as e:
        build_model("resnet5", 2)
    names = str(e.value).split("did you mean ")[1].rstrip("?").split(", ")
    assert len(names) == len(set(names)) and "resnet50" in names


@needs("ffcv", "dali")
def test_convert_verify_shows_progress_in_images_per_second(tmp_path, photos):
    import shutil

    for j, c in enumerate(["cat", "dog"]):
        (tmp_path / "src" / "train" / c).mkdir(parents=True)
        shutil.copy(photos[j], tmp_path / "src" / "train" / c / "a.jpg")
    runner = CliRunner()
    assert runner.invoke(main, ["convert", "folder", str(tmp_path / "src"), str(tmp_path / "out"), "--workers", "1"]).exit_code == 0
    res = runner.invoke(main, ["convert", "verify", str(tmp_path / "out"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    for fmt in ("beton", "recordio"):
        # a rate in images: tqdm writes s/img instead of img/s below one image a second (FFCV compiles first)
        assert re.search(rf"verify train {fmt}: 100%.* 2/2 .*(img/s|s/img)", res.output), res.output
