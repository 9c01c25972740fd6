"""Selecting inputs: labels, filter files, validation scoped to the selected participants."""

from __future__ import annotations

import json
import logging

import pytest
from bids.layout import Query

from bidsapp_dl.bids import index
from bidsapp_dl.bids.validate import _scoped_tree, validate
from bidsapp_dl.errors import BidsValidationError, InputMissingError, UsageError


def test_filter_file_null_and_star(tmp_path, caplog):
    path = tmp_path / "f.json"
    path.write_text(json.dumps({"t1w": {"acquisition": None, "reconstruction": "*", "run": [1, 2]},
                                "bold": {"task": "rest"}, "dseg": {"desc": "aseg"}}))
    with caplog.at_level(logging.WARNING):
        queries = index.load_filters(str(path))
    t1w = queries["t1w"]
    assert t1w["acquisition"] is Query.NONE and t1w["reconstruction"] is Query.ANY
    assert t1w["run"] == [1, 2] and t1w["suffix"] == "T1w" and t1w["datatype"] == "anat"
    assert queries["dseg"] == {"suffix": "dseg", "extension": [".nii", ".nii.gz"], "desc": "aseg"}
    assert "'bold' is not used" in caplog.text
    assert index.load_filters(None)["t1w"] == index.DEFAULT_QUERIES["t1w"]


@pytest.mark.parametrize("text", ["{bad json", "[1, 2]", '{"t1w": 3}'])
def test_bad_filter_files(tmp_path, text):
    path = tmp_path / "f.json"
    path.write_text(text)
    with pytest.raises(UsageError, match="bids-filter-file"):
        index.load_filters(str(path))


def test_participants_and_sessions(tmp_path):
    for sub, ses in [("01", "A"), ("01", "B"), ("02", "A"), ("10", "C")]:
        (tmp_path / f"sub-{sub}" / f"ses-{ses}").mkdir(parents=True)
    (tmp_path / "sub-03.txt").write_text("a file, not a participant")
    assert index.resolve_participants([tmp_path], []) == ["01", "02", "10"]
    assert index.resolve_participants([tmp_path], ["10"]) == ["10"]
    with pytest.raises(InputMissingError, match="sub-03.*the dataset has sub-01, sub-02, sub-10"):
        index.resolve_participants([tmp_path], ["01", "03"])
    index.check_sessions([tmp_path], ["01"], ["A", "B"])
    with pytest.raises(InputMissingError, match="ses-C.*ses-A, ses-B"):
        index.check_sessions([tmp_path], ["01", "02"], ["C"])


def test_validation_tree_holds_only_selected_participants(tmp_path):
    bids = tmp_path / "bids"
    for name in ("sub-01/anat", "sub-02/anat", "derivatives/x", "code"):
        (bids / name).mkdir(parents=True)
    (bids / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    root = _scoped_tree(bids, ["02"], scratch)
    assert sorted(p.name for p in root.iterdir()) == ["participants.tsv", "sub-02"]
    assert (root / "sub-02").resolve() == (bids / "sub-02").resolve()


def test_validation_failure_lists_problems(tmp_path):
    (tmp_path / "sub-01").mkdir()
    with pytest.raises(BidsValidationError, match="dataset_description.json is missing"):
        validate(tmp_path, ["01"])
