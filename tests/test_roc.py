"""`fixres-fast analyze roc` (Fig. 2): on images of known aspect ratios, test RoCs are spiky, train RoCs spread."""
import csv

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fixres_fast.analysis.roc import RocConfig, roc_areas
from fixres_fast.cli import main
from fixres_fast.errors import UserError

from .conftest import needs

#: (height, width, copies): 4:3 landscape and portrait, 3:2, square.
SHAPES = ((300, 400, 4), (400, 300, 2), (300, 450, 2), (320, 320, 2))


@pytest.fixture(scope="module")
def aspect_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("aspects")
    for k, (h, w, copies) in enumerate(SHAPES):
        d = root / "train" / f"c{k}"
        d.mkdir(parents=True)
        for c in range(copies):
            Image.new("RGB", (w, h), (40 * k, 90, 200)).save(d / f"{c}.jpg", quality=80)
    return root


@pytest.mark.parametrize("backend", ["ffcv", "torch", pytest.param("dali", marks=needs("dali"))])
def test_test_rocs_are_spiky_and_train_rocs_spread(aspect_tree, backend):
    result = roc_areas(RocConfig(str(aspect_tree), backend=backend, draws=50))
    assert sorted(map(tuple, result.sizes)) == sorted((h, w) for h, w, n in SHAPES for _ in range(n))
    crop = (224 / 256) ** 2  # (K_test / K_test^image)^2
    expected = sorted({round(crop * min(h, w) / max(h, w), 2) for h, w, _ in SHAPES})
    assert sorted(set(np.round(result.test, 2))) == expected  # one value per aspect ratio: 3 spikes
    assert len(result.train) == 50 * len(result.sizes)
    assert result.train.min() < 0.15 and result.train.max() > 0.8 and result.train.std() > 0.15
    assert 0.4 < result.train.mean() < 0.55  # E[sigma^2] is 0.54, less where large non-square RoCs are redrawn


def test_cli_writes_csv_and_png(aspect_tree, tmp_path):
    res = CliRunner().invoke(main, ["analyze", "roc", "--data", str(aspect_tree), "--draws", "3", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "3 distinct values" in res.output
    rows = list(csv.DictReader(open(tmp_path / "roc.csv")))
    assert len(rows) == 10 * (3 + 1) and {r["mode"] for r in rows} == {"train", "test"}
    assert (tmp_path / "roc.png").stat().st_size > 10_000


@pytest.mark.parametrize("bad", [dict(backend="mxnet"), dict(area_range=(0.5, 1.5)), dict(k_test=-1), dict(draws=0)])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(UserError):
        RocConfig("somewhere", **bad)


def test_a_missing_data_folder_is_a_user_error(tmp_path):
    res = CliRunner().invoke(main, ["analyze", "roc", "--data", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "does not exist" in res.output
