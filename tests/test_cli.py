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


def test_each_jobs_option_defaults_to_its_config_fields_default():
    """The CLI restates no default: each option of a job's command defaults to the field of the config it fills
    (resolution lists as their comma-separated text). Options that fill no field are listed, so that a new one
    is either a field or said here."""
    import dataclasses

    import click

    from fixres_fast.adapt import AdaptConfig
    from fixres_fast.analysis.activations import ActivationsConfig
    from fixres_fast.demo import DemoConfig
    from fixres_fast.evaluate import EvalConfig
    from fixres_fast.profile import ProfileConfig
    from fixres_fast.runtime import parse_resolutions
    from fixres_fast.spec import Recipe
    from fixres_fast.train import TrainConfig

    from fixres_fast.analysis.roc import RocConfig
    from fixres_fast.analysis.scale import ScaleConfig, parse_ratio
    from fixres_fast.convert import ConvertConfig

    from fixres_fast.export import ExportConfig
    from fixres_fast.pretrained import Pretrained

    # --weights, --arch and the model's preprocessing overrides fill a Pretrained (no default: the model's own config)
    jobs = {("train",): (TrainConfig, Recipe), ("adapt",): (AdaptConfig, Pretrained), ("evaluate",): (EvalConfig, Pretrained),
            ("export",): (ExportConfig, Pretrained, EvalConfig),
            ("profile",): (ProfileConfig,), ("demo",): (DemoConfig,),
            ("analyze", "activations"): (ActivationsConfig, Pretrained),
            ("analyze", "scale"): (ScaleConfig,), ("analyze", "roc"): (RocConfig,),
            **{("convert", layout): (ConvertConfig,) for layout in ("imagenet", "inat", "herbarium", "folder")}}
    #: analyze scale and roc pass only the options given (None: the config's default); the ratio is a fraction's text
    given_only = {("analyze", "scale"), ("analyze", "roc")}
    #: processes to launch; the folder the edge writes to; convert's --format (all: FORMATS), --verify (a second step)
    no_field = {"gpus", "out", "fmt", "then_verify", "src", "paths"}  # arguments: convert SRC OUT, export [CKPT] OUT_DIR
    renamed = {"compile_": "compile"}
    checked = 0
    for path, configs in jobs.items():
        cmd = main
        for name in path:
            cmd = cmd.commands[name]
        fields = {f.name: (c, f) for c in configs for f in dataclasses.fields(c)}
        for p in cmd.params:
            name = renamed.get(p.name, p.name)
            if not isinstance(p, click.Option) or name not in fields:
                assert p.name in no_field, f"{' '.join(path)} --{p.name} fills no config field"
                continue
            f = fields[name][1]
            if p.required or f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                continue
            want = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            default = p.get_default(click.Context(cmd))  # a flag's False where click leaves it unset
            if (path in given_only or path[0] == "convert") and (default is None or p.multiple or p.nargs > 1):
                continue
            if name == "resize_ratio":
                got = float(parse_ratio(default))
            else:
                got = parse_resolutions(default) if isinstance(want, tuple) else default
            assert got == want, f"{' '.join(path)} --{p.name}: default {default!r}, {fields[name][0].__name__}.{name} {want!r}"
            checked += 1
    assert checked > 50
