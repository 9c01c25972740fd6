"""Predicting new data groups with a trained MAPS, and the leakage guard that protects it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bidsapp_dl.generate import generate_dataset

from ..conftest import run_script

TINY = ["--voxel-size", "8", "--target-shape", "24", "28", "24"]
TRAIN = ["--epochs", "2", "--batch-size", "4", "--n-splits", "2", "--test-size", "0.25",
         "--seed", "5", "--selection-metrics", "loss", "BA"]


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def relabel(bids: Path, prefix: str) -> None:
    """Give every participant a new ID (sub-01 -> sub-<prefix>01), files and tables included."""
    for folder in sorted(bids.glob("sub-*")):
        new = folder.with_name(folder.name.replace("sub-", f"sub-{prefix}"))
        for path in sorted(folder.rglob("*"), reverse=True):
            if path.is_file() and path.name.startswith("sub-"):
                path.rename(path.with_name(path.name.replace("sub-", f"sub-{prefix}", 1)))
        folder.rename(new)
    tsv = bids / "participants.tsv"
    tsv.write_text(tsv.read_text().replace("sub-", f"sub-{prefix}"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A dataset with a patch-mode MAPS evaluated, and a second cohort with other IDs."""
    root = tmp_path_factory.mktemp("predict")
    bids = root / "bids"
    generate_dataset(bids, kind="trivial", n_subjects=12, sessions=1, seed=4, voxel_size=6.0)
    out = bids / "derivatives" / "neurodl"
    assert run_script(bids, out, "participant", *TINY).returncode == 0
    run = run_script(bids, out, "group", "--maps-name", "adcn", "--mode", "patch",
                     "--patch-size", "12", "--stride", "12", "--architecture", "Conv4_FC3", *TRAIN)
    assert run.returncode == 0, run.stderr
    cohort = root / "cohort"
    generate_dataset(cohort, kind="trivial", n_subjects=6, sessions=1, seed=99, voxel_size=6.0)
    relabel(cohort, "NC")
    assert run_script(cohort, cohort / "derivatives" / "neurodl", "participant", *TINY).returncode == 0
    return bids, cohort


@pytest.fixture
def maps(trained, tmp_path) -> Path:
    """A private copy of the trained MAPS."""
    dest = tmp_path / "maps" / "adcn"
    shutil.copytree(trained[0] / "derivatives/neurodl/maps/adcn", dest)
    return dest


def predict(neurodl, cohort: Path, maps: Path, *args):
    return neurodl(cohort, cohort / "derivatives" / "neurodl", "group", "--stages", "predict",
                   "--maps", maps, *args)


def test_new_cohort_with_labels(trained, maps, neurodl):
    _, cohort = trained
    code, err = predict(neurodl, cohort, maps, "--group-name", "newcohort")
    assert code == 0, err
    for split in (0, 1):
        for best in ("loss", "BA"):
            folder = maps / f"split-{split}/best-{best}/newcohort"
            image = read(folder / "newcohort_image_level_prediction.tsv")
            assert len(image) == 6 and set(image["participant_id"]) == {
                f"sub-NC0{i}" for i in range(1, 7)}
            assert set(image["true_label"]) <= {"AD", "CN"} and "" not in set(image["true_label"])
            patches = read(folder / "newcohort_patch_level_prediction.tsv")
            assert len(patches) == 6 * len(set(patches["patch_id"]))
            metrics = read(folder / "newcohort_image_level_metrics.tsv")
            assert "BA" in set(metrics["metric"])
    data = read(maps / "groups/newcohort/data.tsv")
    assert len(data) == 6
    meta = json.loads((maps / "groups/newcohort/group.json").read_text())
    assert meta["leak_check"] == "passed" and meta["shared_participants"] == []
    summary = read(maps / "groups/newcohort/summary.tsv")
    assert summary["n_participants"][0] == "6" and "label_AD" in summary.columns


def test_new_cohort_without_labels(trained, maps, neurodl, tmp_path):
    _, cohort = trained
    unlabelled = tmp_path / "cohort"
    shutil.copytree(cohort, unlabelled)
    tsv = read(unlabelled / "participants.tsv").drop(columns="diagnosis")
    tsv.to_csv(unlabelled / "participants.tsv", sep="\t", index=False)
    code, err = predict(neurodl, unlabelled, maps, "--group-name", "nolabels", "--best", "BA")
    assert code == 0, err
    folder = maps / "split-0/best-BA/nolabels"
    image = read(folder / "nolabels_image_level_prediction.tsv")
    assert set(image["true_label"]) == {""} and set(image["predicted_label"]) <= {"AD", "CN"}
    assert not list(folder.glob("*_metrics.tsv"))
    assert not (maps / "split-0/best-loss/nolabels").exists()  # --best BA only


def test_same_ids_refused_listing_them(trained, maps, neurodl):
    bids, _ = trained
    seen = set(read(maps / "groups/train+validation.tsv")["participant_id"])
    code, err = predict(neurodl, bids, maps, "--group-name", "again")
    assert code == 65 and "would leak" in err
    assert all(p in err for p in sorted(seen)[:3])
    assert not (maps / "groups/again").exists()


def test_same_scans_under_new_ids_refused(trained, maps, neurodl, tmp_path):
    bids, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(bids, copy, ignore=shutil.ignore_patterns("derivatives"))
    relabel(copy, "X")
    out = copy / "derivatives" / "neurodl"
    assert neurodl(copy, out, "participant", *TINY)[0] == 0
    code, err = predict(neurodl, copy, maps, "--group-name", "copies")
    assert code == 65 and "same content" in err and "sub-X" in err
    code, err = predict(neurodl, copy, maps, "--group-name", "copies", "--skip-leak-check")
    assert code == 0 and "LEAKAGE CHECK SKIPPED" in err
    meta = json.loads((maps / "groups/copies/group.json").read_text())
    assert meta["leak_check"] == "skipped" and meta["shared_images"]


def test_preprocessing_mismatch_and_unseen_labels_refused(trained, maps, neurodl, tmp_path):
    _, cohort = trained
    other = tmp_path / "other"
    shutil.copytree(cohort, other, ignore=shutil.ignore_patterns("derivatives"))
    out = other / "derivatives" / "neurodl"
    assert neurodl(other, out, "participant", "--voxel-size", "8", "--target-shape", "20", "20",
                   "20")[0] == 0
    code, err = predict(neurodl, other, maps, "--group-name", "x")
    assert code == 65 and "[20, 20, 20]" in err and "[24, 28, 24]" in err
    unseen = tmp_path / "unseen"
    shutil.copytree(cohort, unseen)
    tsv = read(unseen / "participants.tsv")
    tsv.loc[0, "diagnosis"] = "FTD"
    tsv.to_csv(unseen / "participants.tsv", sep="\t", index=False)
    code, err = predict(neurodl, unseen, maps, "--group-name", "y")
    assert code == 65 and "FTD" in err and "never seen in training" in err


def test_group_name_checks(trained, maps, neurodl):
    _, cohort = trained
    assert predict(neurodl, cohort, maps)[0] == 64
    assert predict(neurodl, cohort, maps, "--group-name", "test")[0] == 64
    assert predict(neurodl, cohort, maps, "--group-name", "../x")[0] == 64
    assert predict(neurodl, cohort, maps, "--group-name", "ok")[0] == 0
    code, err = predict(neurodl, cohort, maps, "--group-name", "ok")
    assert code == 64 and "--overwrite" in err


def test_transfer_learning_carries_weights_and_participants(trained, neurodl, tmp_path):
    bids, _ = trained
    out = tmp_path / "out"
    shutil.copytree(bids / "derivatives" / "neurodl", out, ignore=shutil.ignore_patterns("maps"))
    # the source saw only the first 6 participants (a parent task on part of the cohort)
    first = [f"{i:02d}" for i in range(1, 7)]
    args = ["--epochs", "1", "--batch-size", "4", "--n-splits", "2", "--test-size", "0",
            "--seed", "3", "--architecture", "Conv4_FC3"]
    code, err = neurodl(bids, out, "group", "--maps-name", "src", "--participant-label", *first,
                        *args)
    assert code == 0, err
    code, err = neurodl(bids, out, "group", "--maps-name", "dst", "--transfer-from",
                        out / "maps/src", "--freeze", "features", "--epochs", "1",
                        "--batch-size", "4", "--n-splits", "2", "--test-size", "2", "--seed", "3",
                        "--architecture", "Conv4_FC3")
    assert code == 0, err
    assert "transferred from" in err and "kept out of the test group" in err
    seen = read(out / "maps/dst/groups/train+validation.tsv")
    assert {f"sub-{p}" for p in first} <= set(seen["participant_id"])
    test = set(read(out / "maps/dst/groups/test/data.tsv")["participant_id"])
    assert len(test) == 2 and not test & {f"sub-{p}" for p in first}
    # frozen convolutional layers: exactly the source's weights after training
    import torch

    for split in (0, 1):
        src = torch.load(out / f"maps/src/split-{split}/best-loss/model.pt", weights_only=True)
        dst = torch.load(out / f"maps/dst/split-{split}/best-loss/model.pt", weights_only=True)
        convs = [k for k in src if k.startswith("features.") and k.endswith("weight")]
        assert convs and all(torch.equal(src[k], dst[k]) for k in convs)
    # the source retrained on everyone: its weights would now leak into the test group
    code, err = neurodl(bids, out, "group", "--maps-name", "src", "--overwrite", *args)
    assert code == 0, err
    code, err = neurodl(bids, out, "group", "--stages", "train", "--maps-name", "dst",
                        "--overwrite")
    assert code == 65 and "would leak" in err
    # an autoencoder's encoder starts a CNN
    code, err = neurodl(bids, out, "group", "--maps-name", "ae", "--task", "reconstruction",
                        "--architecture", "AE_Conv5_FC3", "--epochs", "1", "--n-splits", "2",
                        "--test-size", "0", "--seed", "3")
    assert code == 0, err
    code, err = neurodl(bids, out, "group", "--maps-name", "fromae", "--transfer-from",
                        out / "maps/ae", "--architecture", "Conv5_FC3", "--epochs", "1",
                        "--n-splits", "2", "--test-size", "0", "--seed", "3")
    assert code == 0 and "transferred from" in err, err


def test_interpret_test_group_and_a_new_cohort(trained, maps, neurodl):
    import nibabel as nib
    import numpy as np

    bids, cohort = trained
    out = bids / "derivatives" / "neurodl"
    code, err = neurodl(bids, out, "group", "--stages", "interpret", "--maps-name", "adcn",
                        "--method", "gradients", "--best", "BA")
    assert code == 0, err
    test = read(out / "maps/adcn/groups/test/data.tsv")
    folder = out / "maps/adcn/split-0/best-BA/test/interpret-gradients"
    maps_made = sorted(folder.glob("sub-*_saliency.nii.gz"))
    assert len(maps_made) == len(test)
    for path in maps_made:
        img = nib.load(path)
        sidecar = out / next(t for t in test["tensor"] if Path(t).name.startswith(
            path.name.replace("_saliency.nii.gz", "")))
        meta = json.loads(sidecar.with_suffix(".json").read_text())
        np.testing.assert_allclose(img.affine, np.array(meta["Affine"]), atol=1e-5)
        assert img.shape == tuple(meta["Shape"])
        data = img.get_fdata()
        assert data.max() > 0 and data.min() >= 0
    assert (folder / "test_mean_saliency.nii.gz").is_file()
    # a predicted cohort: its tensors are found where predict read them
    assert predict(neurodl, cohort, maps, "--group-name", "nc", "--best", "BA")[0] == 0
    code, err = neurodl(cohort, cohort / "derivatives" / "neurodl", "group", "--stages",
                        "interpret", "--maps", maps, "--group-name", "nc", "--best", "BA")
    assert code == 0, err
    assert len(list((maps / "split-1/best-BA/nc/interpret-grad-cam").glob("sub-NC*"))) == 6
    code, err = neurodl(bids, out, "group", "--stages", "interpret", "--maps-name", "adcn",
                        "--group-name", "train")
    assert code == 64 and "trained on" in err


def test_random_search_trials_as_separate_jobs(trained, tmp_path, neurodl):
    import subprocess
    import sys

    from ..conftest import ROOT

    bids, _ = trained
    out = tmp_path / "out"
    shutil.copytree(bids / "derivatives" / "neurodl", out, ignore=shutil.ignore_patterns("maps"))
    space = tmp_path / "space.toml"
    space.write_text('[fixed]\nepochs = 1\nselection-metrics = ["loss", "BA"]\n'
                     'architecture = "Conv4_FC3"\n'
                     '[sample.learning_rate]\ndistribution = "log-uniform"\nlow = 1e-5\nhigh = 1e-2\n'
                     '[sample.batch_size]\ndistribution = "choice"\nvalues = [2, 4]\n')
    jobs = [subprocess.Popen([sys.executable, str(ROOT / "run.py"), str(bids), str(out), "group",
                              "--search-space", str(space), "--trial", str(i), "--seed", "11",
                              "--maps-name", "search", "--n-splits", "2", "--test-size", "3"],
                             stderr=subprocess.PIPE, text=True) for i in range(4)]
    for job in jobs:
        assert job.wait(timeout=900) == 0, job.stderr.read()
    rates = set()
    for i in range(4):
        meta = json.loads((out / f"maps/search-trial-00{i}/maps.json").read_text())
        assert meta["search"]["trial"] == i and meta["options"]["epochs"] == 1
        rates.add(meta["options"]["learning_rate"])
        assert meta["options"]["learning_rate"] == meta["search"]["values"]["learning_rate"]
    assert len(rates) == 4
    code, err = neurodl(bids, out, "group", "--stages", "search-summary", "--maps-name", "search")
    assert code == 0, err
    summary = read(out / "maps/search-search_summary.tsv")
    assert list(summary["rank"]) == ["1", "2", "3", "4"]
    assert {"learning_rate", "batch_size", "BA_validation_mean"} <= set(summary.columns)
    # the same trial drawn again gives the same configuration
    again = tmp_path / "again"
    shutil.copytree(out, again, ignore=shutil.ignore_patterns("maps"))
    assert neurodl(bids, again, "group", "--stages", "split", "--search-space", space, "--trial",
                   "2", "--seed", "11", "--maps-name", "search", "--n-splits", "2",
                   "--test-size", "3")[0] == 0
    first = json.loads((out / "maps/search-trial-002/maps.json").read_text())["options"]
    second = json.loads((again / "maps/search-trial-002/maps.json").read_text())["options"]
    assert first["learning_rate"] == second["learning_rate"]
    assert first["batch_size"] == second["batch_size"]


def test_nested_tasks_child_split_first(trained, neurodl, tmp_path):
    """A child task split first reserves its test group; the parent never trains on it."""
    bids, _ = trained
    out = tmp_path / "out"
    shutil.copytree(bids / "derivatives" / "neurodl", out, ignore=shutil.ignore_patterns("maps"))
    common = ["--n-splits", "2", "--seed", "8", "--architecture", "Conv4_FC3", "--epochs", "1"]
    assert neurodl(bids, out, "group", "--stages", "split", "--maps-name", "child",
                   "--test-size", "4", *common)[0] == 0
    child_test = set(read(out / "maps/child/groups/test/data.tsv")["participant_id"])
    code, err = neurodl(bids, out, "group", "--maps-name", "parent", "--test-size", "0",
                        "--reserve-test-of", out / "maps/child", *common)
    assert code == 0, err
    parent_seen = set(read(out / "maps/parent/groups/train+validation.tsv")["participant_id"])
    assert not parent_seen & child_test
    assert set(read(out / "maps/parent/groups/test/data.tsv")["participant_id"]) == child_test
    # the child, split again as a transfer from the parent, tests only on unseen participants
    code, err = neurodl(bids, out, "group", "--maps-name", "child", "--overwrite",
                        "--transfer-from", out / "maps/parent", "--test-size", "4", *common)
    assert code == 0, err
    assert set(read(out / "maps/child/groups/test/data.tsv")["participant_id"]) == child_test
    code, err = neurodl(bids, out, "group", "--stages", "split", "--maps-name", "bad",
                        "--reserve-test-of", out / "maps/child", "--transfer-from",
                        out / "maps/src-missing", "--test-size", "0", *common)
    assert code == 66


class _Payload:
    """Unpickling this runs a command: what a hostile model file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_model_file_that_runs_code_is_refused(trained, maps, neurodl, tmp_path):
    import torch

    _, cohort = trained
    marker = tmp_path / "pwned"
    torch.save({"features.0.weight": _Payload(marker)}, maps / "split-0/best-BA/model.pt")
    code, err = predict(neurodl, cohort, maps, "--group-name", "safe", "--best", "BA")
    assert code == 65 and "not a weights-only model file" in err and "model.pt" in err
    assert not marker.exists()
