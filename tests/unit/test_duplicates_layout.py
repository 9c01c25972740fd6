"""Duplicates by content, the MAPS layout, and reading the tensor catalogue back."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bidsapp_dl.bids.index import ImageRecord
from bidsapp_dl.errors import DataError, InputMissingError, UsageError
from bidsapp_dl.extract import store
from bidsapp_dl.extract.catalog import read_catalog
from bidsapp_dl.maps.io import write_json
from bidsapp_dl.maps.layout import MapsLayout
from bidsapp_dl.split.duplicates import find_duplicates


def images(rows):
    return pd.DataFrame(rows, columns=["participant_id", "session_id", "tensor", "data_sha256",
                                       "source_sha256"])


def test_duplicates_merge_participants_transitively():
    table = images([
        ("sub-01", "ses-1", "a", "h1", "s1"),
        ("sub-02", "ses-1", "b", "h1", "s2"),   # same voxels as sub-01
        ("sub-03", "ses-1", "c", "h3", "s2"),   # same source file as sub-02
        ("sub-04", "ses-1", "d", "h4", "s4"),
        ("sub-04", "ses-2", "e", "h5", "s5"),
        ("sub-05", "ses-1", "f", "h5", "s6"),   # same as sub-04's second visit
        ("sub-06", "ses-1", "g", "h6", "s7"),
    ])
    units, report = find_duplicates(table)
    assert list(units) == ["sub-01+sub-02+sub-03"] * 3 + ["sub-04+sub-05"] * 3 + ["sub-06"]
    assert sorted(report["tensor"]) == ["a", "b", "c", "e", "f"]
    assert report.groupby("duplicate_set")["tensor"].apply(sorted).tolist() == [["a", "b", "c"],
                                                                                 ["e", "f"]]


def test_no_duplicates_no_report():
    units, report = find_duplicates(images([("sub-01", "", "a", "h1", "s1"),
                                            ("sub-02", "", "b", "h2", "s2")]))
    assert list(units) == ["sub-01", "sub-02"] and report.empty


def test_same_image_twice_in_one_participant_keeps_the_unit():
    units, report = find_duplicates(images([("sub-01", "ses-1", "a", "h1", "s1"),
                                            ("sub-01", "ses-2", "b", "h1", "s1")]))
    assert list(units) == ["sub-01", "sub-01"] and len(report) == 2


def test_maps_layout_paths_and_name_checks(tmp_path):
    layout = MapsLayout.under(tmp_path, "adcn")
    assert layout.maps_json == tmp_path / "maps/adcn/maps.json"
    assert layout.split_data("train", 3) == tmp_path / "maps/adcn/groups/train/split-3/data.tsv"
    assert layout.model(0, "BA") == tmp_path / "maps/adcn/split-0/best-BA/model.pt"
    assert layout.prediction_tsv(1, "loss", "test", "image").name == "test_image_level_prediction.tsv"
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(UsageError):
            layout.group_data(bad)
    with pytest.raises(UsageError):
        MapsLayout.under(tmp_path, "../elsewhere")
    with pytest.raises(ValueError):
        layout.split_data("test", 0)
    for i in (0, 2):
        for group in ("train", "validation"):
            layout.split_data(group, i).parent.mkdir(parents=True)
            layout.split_data(group, i).write_text("x")
    layout.split_data("train", 5).parent.mkdir(parents=True)  # no validation table: not a split
    assert layout.splits_written() == [0, 2]


def _write_tensor(out, sub, ses, shape=(4, 4, 4), params=None):
    rel = f"sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}_T1w.nii.gz"
    record = ImageRecord(out / "raw" / rel, "raw", out / "raw",
                         {"subject": sub, "session": ses, "datatype": "anat", "suffix": "T1w"})
    tensor, sidecar = store.tensor_paths(out, record)
    data = np.full(shape, float(int(sub)), np.float32)
    store.write_tensor(tensor, data)
    write_json(sidecar, store.sidecar(record, "s" * 64, data, np.eye(4), params or {"v": 1}, {}, 0))
    return tensor


def test_catalog_reads_sidecars(tmp_path):
    for sub in ("01", "02"):
        for ses in ("A", "B"):
            _write_tensor(tmp_path, sub, ses)
    table = read_catalog(tmp_path)
    assert list(table["participant_id"]) == ["sub-01", "sub-01", "sub-02", "sub-02"]
    assert list(table["session_id"]) == ["ses-A", "ses-B", "ses-A", "ses-B"]
    assert table["tensor"][0] == "sub-01/ses-A/anat/sub-01_ses-A_desc-tensor_T1w.npy"
    assert table["shape"][0] == (4, 4, 4) and json.loads(table["preprocessing"][0]) == {"v": 1}
    assert len(read_catalog(tmp_path, ["02"], ["B"])) == 1
    with pytest.raises(InputMissingError, match="sub-03"):
        read_catalog(tmp_path, ["01", "03"])


def test_catalog_refuses_mixed_preprocessing_and_empty_outputs(tmp_path):
    with pytest.raises(InputMissingError, match="participant level first"):
        read_catalog(tmp_path)
    _write_tensor(tmp_path, "01", "A", params={"voxel_size": 1.0})
    _write_tensor(tmp_path, "02", "A", params={"voxel_size": 2.0})
    with pytest.raises(DataError, match="voxel_size.*1.0.*versus.*2.0"):
        read_catalog(tmp_path)


def test_catalog_skips_a_sidecar_whose_tensor_is_gone(tmp_path, caplog):
    tensor = _write_tensor(tmp_path, "01", "A")
    _write_tensor(tmp_path, "02", "A")
    tensor.unlink()
    assert list(read_catalog(tmp_path)["participant_id"]) == ["sub-02"]
    assert "is missing" in caplog.text
