import pytest

from fixres_fast.convert import ConvertConfig, convert

from . import imagesets


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
