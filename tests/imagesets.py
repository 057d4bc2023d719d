"""The test image sets live in the package (the demo uses them too); re-exported here for the tests."""
from fixres_fast.sampledata import *  # noqa: F401,F403
from fixres_fast.sampledata import coco_doc, imagenet_class, imagenet_tree, photo_dir, photos, write_json  # noqa: F401
