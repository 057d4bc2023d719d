"""The edge every job writes through: a file appears whole under its final name, or not at all."""
import json

import pytest

from fixres_fast import artifacts


def test_a_write_that_fails_leaves_the_old_file_and_no_partial(tmp_path):
    path = tmp_path / "results.json"
    artifacts.write_json(path, {"top1": 1.0})
    with pytest.raises(RuntimeError):
        with artifacts.replacing(path, "w") as f:
            f.write('{"half": ')
            raise RuntimeError("interrupted")
    assert json.loads(path.read_text()) == {"top1": 1.0} and list(tmp_path.iterdir()) == [path]


def test_csv_has_the_header_of_its_fields(tmp_path):
    artifacts.write_csv(tmp_path / "r.csv", [{"res": 224, "top1": 50.0}], ("res", "top1"))
    assert (tmp_path / "r.csv").read_text().splitlines() == ["res,top1", "224,50.0"]


def test_the_revision_is_a_commit_marked_dirty_where_the_tree_has_changes():
    import re

    rev = artifacts.git_revision()
    assert rev == "unknown" or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", rev), rev
