"""`fixres-fast demo`, the README's main job, end to end at a small size, as a user runs it."""
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
    summary = json.loads((out / "summary.json").read_text())

    # part 1: the sample with bad files was converted, bad files skipped, every record read back
    conv = summary["converters"]
    assert conv["records"] == {"train": 21, "val": 4} and conv["skipped"] == {"train": 3, "val": 2}
    assert all(v == {"count": conv["records"][s], "beton": "ok", "recordio": "ok", "crc32": "ok"}
               for s, v in conv["verified"].items())

    # part 2: three networks (K_train, adapted, K_test) evaluated at 32, 48 and 64 on all 150 val images
    fixres = summary["fixres"]
    rows = fixres["rows"]
    assert sorted((r["adapted_at"] or 0, r["train_res"], r["res"]) for r in rows) == sorted(
        (a, t, k) for a, t in ((0, 32), (64, 32), (0, 64)) for k in ("32", "48", "64"))
    assert all(r["n"] == 150 and 0 <= r["top1"] <= r["top5"] <= 100 for r in rows)
    assert set(fixres["top1"]) == {"train_at_k_train_test_at_k_train", "train_at_k_train_test_at_k_test",
                                   "train_at_k_train_adapted_test_at_k_test", "train_at_k_test_test_at_k_test"}
    assert 0 < fixres["seconds"]["adapt"] and fixres["adapt_fraction_of_training"] > 0
    assert (out / "evaluate" / "accuracy.png").stat().st_size > 10_000
    assert "adapted at 64, test 64" in proc.stdout
    # Fig. 3 and 4: pooled activations of both networks at K_test = 16, 32, 48, 64; fewer zeros as K_test grows
    acts = fixres["activations"]
    assert [(r["adapted_at"], r["res"]) for r in acts] == [(a, k) for a in (None, 64) for k in (16, 32, 48, 64)]
    assert acts[0]["frac_zero"] > acts[3]["frac_zero"]
    assert (out / "activations" / "activations.png").stat().st_size > 10_000
