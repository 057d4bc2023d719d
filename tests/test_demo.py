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

    # part 2: three networks (K_train, adapted, K_test) evaluated at 32, 48 and 64 on all 150 val images
    assert stage("convert/composites")["result"]["records"] == {"train": 300, "val": 150}
    rows = [r for k in (32, 64) for r in json.loads((out / "evaluate" / str(k) / "evaluate.json").read_text())["rows"]]
    assert sorted((r["adapted_at"] or 0, r["train_res"], r["res"]) for r in rows) == sorted(
        (a, t, k) for a, t in ((0, 32), (64, 32), (0, 64)) for k in ("32", "48", "64"))
    assert all(r["n"] == 150 and 0 <= r["top1"] <= r["top5"] <= 100 for r in rows)
    assert stage("adapt/32-64")["seconds"] > 0 and stage("adapt/32-64")["result"]["epochs"] == 1
    assert (out / "accuracy.png").stat().st_size > 10_000 and (out / "evaluate" / "32" / "accuracy.png").is_file()
    # the demo's table, and where the report is
    for line in ("train 32, test 32:", "train 32, test 64:", "train 32, adapted at 64, test 64:", "train 64, test 64:",
                 "train 32 + adapt at 64:", f"report: {out / 'report.md'}"):
        assert line in proc.stdout
    # Fig. 3 and 4: pooled activations of both networks at K_test = 16, 32, 48, 64; fewer zeros as K_test grows
    acts = json.loads((out / "analyze" / "32" / "activations.json").read_text())["rows"]
    assert [(r["adapted_at"], r["res"]) for r in acts] == [(a, k) for a in (None, 64) for k in (16, 32, 48, 64)]
    assert acts[0]["frac_zero"] > acts[3]["frac_zero"]
    assert (out / "analyze" / "32" / "activations.png").stat().st_size > 10_000
    assert "| 32 |" in (out / "report.md").read_text()
