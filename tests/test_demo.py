"""`fixres-fast demo`, the README's main job, end to end at a small size, as a user runs it: `run demo`
(pipelines/demo.toml) with the demo's options as --set."""
import json
import subprocess
import sys

from .conftest import needs


@needs("ffcv", "dali")  # its part 1 reads every record back through FFCV and DALI (convert.verify)
def test_demo_runs_the_method_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "fixres_fast.cli", "demo", "--out", str(out), "--images", "300",
                           "--epochs", "1", "--adapt-epochs", "1", "--workers", "2"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "can only test a child process" not in proc.stderr
    stage = lambda name: json.loads((out / name / "stage.json").read_text())

    # part 1: the sample with bad files was converted, bad files skipped, every record read back
    conv = stage("convert/photos")["result"]
    assert conv["records"] == {"train": 21, "val": 4} and conv["skipped"] == {"train": 3, "val": 2}
    assert all(v == {"count": conv["records"][s], "beton": "ok", "recordio": "ok", "crc32": "ok"}
               for s, v in conv["verified"].items())

    # part 2: five networks (K_train and the closer pair's 48, each adapted at 64 too, and K_test) evaluated at 32,
    # 48 and 64 on all 150 val images
    assert stage("convert/composites")["result"]["records"] == {"train": 300, "val": 150}
    rows = [r for k in (32, 48, 64) for r in json.loads((out / "evaluate" / str(k) / "evaluate.json").read_text())["rows"]]
    assert sorted((r["adapted_at"] or 0, r["train_res"], r["res"]) for r in rows) == sorted(
        (a, t, k) for a, t in ((0, 32), (64, 32), (0, 48), (64, 48), (0, 64)) for k in ("32", "48", "64"))
    assert all(r["n"] == 150 and 0 <= r["top1"] <= r["top5"] <= 100 for r in rows)
    assert stage("adapt/32-64")["seconds"] > 0 and stage("adapt/32-64")["result"]["epochs"] == 1
    assert (out / "accuracy.png").stat().st_size > 10_000 and (out / "evaluate" / "32" / "accuracy.png").is_file()
    # the demo's table, and where the report is
    for line in ("train 32, test 32:", "train 32, test 64:", "train 32, adapted at 64, test 64:", "train 64, test 64:",
                 "train 32 + adapt at 64:", "train 48, adapted at 64, test 64:", "train 48 + adapt at 64:",
                 f"report: {out / 'report.md'}"):
        assert line in proc.stdout
    # Fig. 3 and 4: pooled activations of both networks at K_test = 16, 32, 48, 64; fewer zeros as K_test grows
    acts = json.loads((out / "analyze" / "32" / "activations.json").read_text())["rows"]
    assert [(r["adapted_at"], r["res"]) for r in acts] == [(a, k) for a in (None, 64) for k in (16, 32, 48, 64)]
    assert acts[0]["frac_zero"] > acts[3]["frac_zero"]
    assert (out / "analyze" / "32" / "activations.png").stat().st_size > 10_000
    assert "| 32 |" in (out / "report.md").read_text()


def _gains(folder, k_train=32, k_test=48, closer=40):
    """The three effects of one seed's run (and (3) for the closer pair), computed here from its evaluate.json files."""
    rows = lambda net: json.loads((folder / "evaluate" / str(net) / "evaluate.json").read_text())["rows"]
    top1 = lambda net, res, adapted=None: next(r["top1"] for r in rows(net)
                                                if r["res"] == str(res) and r["adapted_at"] == adapted)
    above = max(r["top1"] for r in rows(k_train) if r["adapted_at"] is None and int(r["res"]) > k_train)
    return {"above": above - top1(k_train, k_train), "adapted": top1(k_train, k_test, k_test) - top1(k_train, k_test),
            "cheaper": top1(k_train, k_test, k_test) - top1(k_test, k_test),
            "cheaper_closer": top1(closer, k_test, k_test) - top1(k_test, k_test)}


@needs("ffcv", "dali")
def test_demo_over_seeds_reports_each_effect_and_resumes(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "fixres_fast.cli", "demo", "--out", str(out), "--images", "100", "--k-test", "48",
           "--epochs", "1", "--adapt-epochs", "1", "--workers", "1", "--seed", "3", "--seeds", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seeds = {s: out / f"seed-{s}" for s in (3, 4)}
    for s, folder in seeds.items():  # each seed its own run, its seed in every stage that draws
        for stage in ("convert/composites", "train/32", "train/40", "train/48", "adapt/32-48", "adapt/40-48"):
            assert json.loads((folder / stage / "stage.json").read_text())["config"]["seed"] == s
    report = (out / "seeds.md").read_text()
    assert proc.stdout.rstrip().endswith(f"seeds report: {out / 'seeds.md'}") and "| seed 3 | seed 4 |" in report
    lines = {line.split(" |")[0][2:5] + (" closer" if "closer pair" in line else ""): line
             for line in report.splitlines() if line.startswith("| (")}
    for name, effect in (("above", "(1)"), ("adapted", "(2)"), ("cheaper", "(3)"), ("cheaper_closer", "(3) closer")):
        gains = [_gains(folder)[name] for folder in seeds.values()]
        mean, std = sum(gains) / 2, abs(gains[0] - gains[1]) / 2 ** 0.5  # the sample std of two values
        cells = [c.strip().split(" ")[0] for c in lines[effect].split("|")[2:-1]]
        assert cells[:6] == [f"{gains[0]:+.2f}", f"{gains[1]:+.2f}", f"{mean:+.2f}", f"{std:.2f}",
                             f"{min(gains):+.2f}", f"{max(gains):+.2f}"], (effect, lines[effect])
        assert lines[effect] in proc.stdout

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # a rerun: every seed's stages done
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("1 of 12 stages to run") == 2 and "== train/" not in again.stdout
    assert (out / "seeds.md").read_text() == report


def test_demo_seeds_must_be_positive():
    from click.testing import CliRunner

    from fixres_fast.cli import main

    res = CliRunner().invoke(main, ["demo", "--seeds", "0"])
    assert res.exit_code == 1 and res.output.strip() == "Error: --seeds must be at least 1 (the number of seeds to " \
                                                        "run), got 0", res.output
