"""The group level's split stage end to end: labels, duplicates, splits, the MAPS."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bidsapp_dl.generate import generate_dataset

from ..conftest import run_script

TINY = ["--voxel-size", "8", "--target-shape", "24", "28", "24"]


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Path:
    """16 participants (one a planted copy of another), 2 sessions, tensors extracted."""
    root = tmp_path_factory.mktemp("group")
    bids = root / "bids"
    generate_dataset(bids, kind="trivial", n_subjects=15, sessions=2, seed=8, voxel_size=6.0,
                     duplicates=1)
    run = run_script(bids, bids / "derivatives" / "neurodl", "participant", *TINY, "--nprocs", "2")
    assert run.returncode == 0, run.stderr
    return bids


@pytest.fixture
def bids(extracted, tmp_path) -> Path:
    dest = tmp_path / "bids"
    shutil.copytree(extracted, dest, symlinks=True)
    return dest


def split(neurodl, bids: Path, *args) -> tuple[int, str]:
    return neurodl(bids, bids / "derivatives" / "neurodl", "group", "--stages", "split", *args)


def maps_files(root: Path) -> dict[str, bytes]:
    """Every file of a MAPS but its report (which shows the command line and when it was written)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != "report.html"}


def test_split_writes_a_leakage_proof_maps(bids, neurodl):
    code, err = split(neurodl, bids, "--maps-name", "adcn", "--n-splits", "3", "--test-size",
                      "0.25", "--seed", "42")
    assert code == 0, err
    maps = bids / "derivatives/neurodl/maps/adcn"
    meta = json.loads((maps / "maps.json").read_text())
    assert meta["seed"] == 42 and meta["seed_drawn"] is False
    assert meta["options"]["n_splits"] == 3 and meta["options"]["label"] == "diagnosis"
    assert meta["label"]["task"] == "classification"
    assert set(meta["label"]["classes"]) >= {"AD", "CN"}
    assert meta["preprocessing"]["target_shape"] == [24, 28, 24]
    assert meta["tensor_shape"] == [24, 28, 24]
    assert len(meta["data"]["labels_sha256"]) == 64 and len(meta["data"]["tensors_sha256"]) == 64
    env = json.loads((maps / "environment.json").read_text())
    assert env["packages"]["numpy"] and env["python"]
    test = read(maps / "groups/test/data.tsv")
    seen = read(maps / "groups/train+validation.tsv")
    assert set(test["participant_id"]).isdisjoint(seen["participant_id"])
    assert len(test) + len(seen) == meta["data"]["n_images"]
    validated = []
    for i in range(3):
        train = read(maps / f"groups/train/split-{i}/data.tsv")
        val = read(maps / f"groups/validation/split-{i}/data.tsv")
        assert set(train["participant_id"]).isdisjoint(val["participant_id"])
        assert set(train["participant_id"]) | set(val["participant_id"]) == set(seen["participant_id"])
        assert set(val["label"]) >= {"AD", "CN"}
        validated += list(val["tensor"])
    assert sorted(validated) == sorted(seen["tensor"])  # each image validated exactly once
    # the planted copy: found by content, reported, kept with its original everywhere
    dups = read(maps / "groups/duplicates.tsv")
    pair = sorted(set(dups["participant_id"]))
    assert len(pair) == 2 and "identical content" in err
    for i in range(3):
        for group in ("train", "validation"):
            ids = set(read(maps / f"groups/{group}/split-{i}/data.tsv")["participant_id"])
            assert len(ids & set(pair)) in (0, 2)
    summary = read(maps / "groups/split_summary.tsv")
    assert {"split", "group", "n_participants", "n_images"} <= set(summary.columns)
    assert any(c.startswith("sex_") for c in summary.columns) and "age_mean" in summary.columns


def test_same_command_same_files_and_no_silent_overwrite(bids, neurodl, tmp_path):
    args = ["--maps-name", "x", "--n-splits", "2", "--seed", "7"]
    assert split(neurodl, bids, *args)[0] == 0
    maps = bids / "derivatives/neurodl/maps/x"
    first = maps_files(maps)
    code, err = split(neurodl, bids, *args)
    assert code == 64 and "--overwrite" in err
    assert maps_files(maps) == first
    assert split(neurodl, bids, *args, "--overwrite")[0] == 0
    again = maps_files(maps)
    env = json.loads(again.pop("environment.json"))
    assert env["command"][-1] == "--overwrite" and env["command"][0] == "neurodl"
    first.pop("environment.json")
    assert again == first
    assert split(neurodl, bids, "--maps-name", "y", "--n-splits", "2", "--seed", "8")[0] == 0
    other = maps_files(maps.with_name("y"))
    assert other["groups/validation/split-0/data.tsv"] != first["groups/validation/split-0/data.tsv"]
    assert not [p for p in maps.parent.iterdir() if p.name.startswith(".")]


def test_seed_drawn_and_recorded_and_config_reruns_it(bids, neurodl):
    assert split(neurodl, bids, "--maps-name", "a", "--n-splits", "2")[0] == 0
    maps = bids / "derivatives/neurodl/maps"
    meta = json.loads((maps / "a/maps.json").read_text())
    assert meta["seed_drawn"] is True and isinstance(meta["seed"], int)
    assert meta["options"]["seed"] == meta["seed"]
    # the recorded options re-run the experiment under another name
    assert split(neurodl, bids, "--config", maps / "a/maps.json", "--maps-name", "b")[0] == 0
    a, b = maps_files(maps / "a"), maps_files(maps / "b")
    assert {k: v for k, v in a.items() if k.startswith("groups/")} == \
           {k: v for k, v in b.items() if k.startswith("groups/")}


def test_regression_on_per_session_age(bids, neurodl):
    code, err = split(neurodl, bids, "--task", "regression", "--label", "age", "--n-splits", "2",
                      "--seed", "1")
    assert code == 0, err
    maps = bids / "derivatives/neurodl/maps/regression-age"
    meta = json.loads((maps / "maps.json").read_text())
    assert meta["label"]["source"].startswith("sessions.tsv") or "sessions" in meta["label"]["source"]
    data = read(maps / "groups/train/split-0/data.tsv")
    ages = data["label"].astype(float)
    assert ages.between(40, 100).all()
    # the two sessions of one participant have different ages: per-session labels were used
    per = data.groupby("participant_id")["label"].nunique()
    assert (per > 1).any()


def test_regression_label_that_is_not_a_number(bids, neurodl):
    participants = (bids / "participants.tsv").read_text().splitlines()
    header = participants[0] + "\tmmse"
    rows = [f"{row}\t{'30+' if i == 2 else 20 + i}" for i, row in enumerate(participants[1:])]
    (bids / "participants.tsv").write_text("\n".join([header, *rows]) + "\n")
    bad = rows[2].split("\t")[0]
    code, err = split(neurodl, bids, "--task", "regression", "--label", "mmse", "--n-splits", "2")
    assert code == 65 and bad in err and "30+" in err and "--drop-invalid-labels" in err
    code, err = split(neurodl, bids, "--task", "regression", "--label", "mmse", "--n-splits", "2",
                      "--drop-invalid-labels", "--seed", "3")
    assert code == 0, err
    meta = json.loads((bids / "derivatives/neurodl/maps/regression-mmse/maps.json").read_text())
    assert any(d.startswith(bad) for d in meta["label"]["dropped"])


def test_no_tensors_exit_66(bids, neurodl):
    out = bids / "derivatives" / "empty"
    code, err = neurodl(bids, out, "group", "--stages", "split")
    assert code == 66 and "participant level first" in err


def test_mixed_preprocessing_exit_65(bids, neurodl):
    out = bids / "derivatives" / "neurodl"
    assert neurodl(bids, out, "participant", "--voxel-size", "8", "--target-shape", "20", "20",
                   "20", "--participant-label", "02")[0] == 0
    code, err = split(neurodl, bids)
    assert code == 65 and "[20, 20, 20]" in err and "[24, 28, 24]" in err


def test_label_errors_exit_65(bids, neurodl):
    code, err = split(neurodl, bids, "--label", "diagnosys")
    assert code == 65 and "did you mean 'diagnosis'" in err
    participants = read(bids / "participants.tsv")
    cn = [p for p, d in zip(participants["participant_id"], participants["diagnosis"]) if d == "CN"]
    # participants that are CN at every session: a single class
    stable = [p for p in cn if set(read(bids / p / f"{p}_sessions.tsv")["diagnosis"]) == {"CN"}]
    code, err = split(neurodl, bids, "--participant-label", *stable[:3], "--n-splits", "2")
    assert code == 65 and "class" in err
    code, err = split(neurodl, bids, "--n-splits", "12")
    assert code == 65 and "--n-splits" in err


def test_report_without_a_maps_says_so(bids, neurodl):
    code, err = neurodl(bids, bids / "derivatives" / "neurodl", "group", "--stages", "report",
                        "--maps-name", "nothing")
    assert code == 66 and "no MAPS at" in err and "--stages split" in err


def test_forty_participants_two_sessions_with_planted_duplicates(tmp_path):
    bids = tmp_path / "bids"
    generate_dataset(bids, kind="shepplogan", n_subjects=38, sessions=2, seed=21, voxel_size=8.0,
                     duplicates=2)
    out = bids / "derivatives" / "neurodl"
    assert run_script(bids, out, "participant", *TINY, "--nprocs", "2").returncode == 0
    args = [bids, out, "group", "--stages", "split", "--maps-name", "adcn", "--n-splits", "5",
            "--test-size", "0.2", "--seed", "42"]
    run = run_script(*args)
    assert run.returncode == 0, run.stderr
    maps = out / "maps" / "adcn"
    first = maps_files(maps)
    assert len(set(read(maps / "groups/duplicates.tsv")["participant_id"])) == 4
    units = read(maps / "groups/train+validation.tsv")
    for i in range(5):
        train = read(maps / f"groups/train/split-{i}/data.tsv")
        val = read(maps / f"groups/validation/split-{i}/data.tsv")
        assert set(train["unit"]).isdisjoint(val["unit"])
        assert set(train["participant_id"]).isdisjoint(val["participant_id"])
    test = read(maps / "groups/test/data.tsv")
    assert len(units) + len(test) == 80  # 40 participants, 2 sessions
    assert set(units["unit"]).isdisjoint(test["unit"])
    assert run_script(*args, "--overwrite").returncode == 0
    # everything but the recorded command line (which now has --overwrite) is identical
    again = maps_files(maps)
    assert again.keys() == first.keys()
    assert {k: v for k, v in again.items() if k != "environment.json"} == \
           {k: v for k, v in first.items() if k != "environment.json"}
