import os

# before torch loads libgomp: OpenMP threads that spin while they wait take the cores from the loaders' worker
# processes and from the CLI processes tests start (inherited), on CI's 2 cores a test ran 3-4 times slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from fixres_fast.convert import ConvertConfig, convert
from fixres_fast.loaders import BACKENDS, OPTIONAL, installed
from fixres_fast.sampledata import composite_tree
from fixres_fast.spec import Recipe
from fixres_fast.train import TrainConfig, train

from . import imagesets

#: CI (`./dev test`) sets this: there a test whose backend's library is missing fails instead of skipping
REQUIRE_BACKENDS = os.environ.get("FIXRES_REQUIRE_BACKENDS") == "1"


def needs(*backends: str):
    """Mark a test that needs the libraries of ``backends`` (dali, ffcv): skipped where one is not installed
    (a `pip install -e .` without extras), failed instead under FIXRES_REQUIRE_BACKENDS=1."""
    return pytest.mark.needs(*backends)


def each(backends=BACKENDS):
    """``backends`` as parameters, each optional one marked with :func:`needs`."""
    return [pytest.param(b, marks=needs(b)) if b in OPTIONAL else b for b in backends]


def pytest_configure(config):
    config.addinivalue_line("markers", "needs(*backends): the test needs these backends' libraries (see conftest.needs)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    missing = [b for m in item.iter_markers("needs") for b in m.args if not installed(b)]
    if not missing:
        return
    libs = " and ".join(sorted({OPTIONAL[b][1] for b in missing}))
    if REQUIRE_BACKENDS:
        pytest.fail(f"needs {libs}, not installed, and FIXRES_REQUIRE_BACKENDS=1 (./dev test) runs every test of every "
                    "backend: pip install -e '.[all]'", pytrace=False)
    pytest.skip(f"needs {libs}, not installed here (pip install -e '.[all]')")


@pytest.fixture(scope="session")
def photos():
    ph = imagesets.photos()
    assert len(ph) == 20, "expected the 20 foolbox ImageNet photos"
    return ph


@pytest.fixture(scope="session")
def imagenet_records(tmp_path_factory):
    """A converted ImageNet-shaped tree of real photos (with bad files): OUT with both formats."""
    root = tmp_path_factory.mktemp("imagenet")
    expected = imagesets.imagenet_tree(root / "src")
    out = root / "out"
    manifest = convert(ConvertConfig(layout="imagenet", src=str(root / "src"), out=str(out), shards=2, workers=2),
                       log=lambda *_: None)
    return {"src": root / "src", "out": out, "manifest": manifest, "expected": expected}


@pytest.fixture(scope="session")
def ramp_records(tmp_path_factory):
    """Coordinate-ramp JPEGs of several shapes (imagesets.RAMP_SHAPES), converted: OUT with both formats."""
    root = tmp_path_factory.mktemp("ramps")
    imagesets.ramp_tree(root / "src")
    out = root / "out"
    convert(ConvertConfig(layout="folder", src=str(root / "src"), out=str(out), shards=2, workers=1), log=lambda *_: None)
    return out


SEEDS = (0, 1)
CPU = dict(backend="torch", device="cpu", workers=2)


@pytest.fixture(scope="session")
def composites(tmp_path_factory):
    """Converted composites (2000 train, 1000 val, 64 px) and a fixres_cnn trained at 32 for each seed;
    'small': another 400 train + 200 val composites, for tests of what adaptation does rather than how well."""
    root = tmp_path_factory.mktemp("composites")
    composite_tree(root / "src", n_train=2000, n_val=1000, seed=0)
    composite_tree(root / "small-src", n_train=400, n_val=200, seed=1)
    out, small = root / "out", root / "small"
    for src, dst in ((root / "src", out), (root / "small-src", small)):
        convert(ConvertConfig(layout="folder", src=str(src), out=str(dst), workers=2), log=lambda *_: None)
    runs = {}
    for seed in SEEDS:
        recipe = Recipe(epochs=6, batch_size=64, lr=0.1, schedule="cosine", warmup_epochs=1, weight_decay=5e-4, repeats=1)
        train(TrainConfig(data=str(out), out=str(root / f"seed{seed}"), arch="fixres_cnn", k_train=32, recipe=recipe,
                          seed=seed, **CPU), log=lambda *_: None)
        runs[seed] = root / f"seed{seed}" / "last.pt"
    return {"data": out, "small": small, "runs": runs, "root": root}
