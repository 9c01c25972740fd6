"""Many jobs at once on one OUTPUT_DIR, or on one MAPS: whole files, and what one job gives."""

from __future__ import annotations

import shutil

import pytest

from bidsapp_dl.generate import generate_dataset

from ..conftest import SMALL, run_script, validation_errors
from .integrity import check_whole, sidecars, start, tensors
from .test_kill import GROUP, TINY, assert_same_maps

# overlapping subsets, and whole datasets, as jobs of a cluster array submitted twice
LABELS = [["01"], ["sub-02"], ["01", "02"], ["03", "04"], ["02", "03"], [], [], ["04", "sub-01"]]


def _wait(jobs) -> None:
    for job in jobs:
        _, err = job.communicate(timeout=600)
        assert job.returncode == 0, err


def test_eight_participant_jobs_at_once(bids):
    out = bids / "derivatives" / "neurodl"
    reference = bids / "derivatives" / "sequential"
    run = run_script(bids, reference, "participant", *SMALL, "--skip-bids-validation")
    assert run.returncode == 0, run.stderr
    jobs = []
    for k, labels in enumerate(LABELS):
        # two jobs validate BIDS_DIR too: the validator's scratch space is per job
        skip = [] if k in (0, 5) else ["--skip-bids-validation"]
        chosen = ["--participant-label", *labels] if labels else []
        jobs.append(start(bids, out, "participant", *SMALL, *skip, *chosen))
    _wait(jobs)
    assert validation_errors(out) == []
    check_whole(out)
    assert tensors(out) == tensors(reference)
    assert sidecars(out) == sidecars(reference)
    for name in ("dataset_description.json", ".bidsignore", "README.md"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert len(list((out / "logs").glob("participant-*.log"))) == len(LABELS)


@pytest.mark.slow
def test_jobs_with_other_settings_never_mix_tensors_and_sidecars(bids):
    """Two settings racing on one image: each tensor stays with its own sidecar."""
    out = bids / "derivatives" / "neurodl"
    other = ["--voxel-size", "4", "--target-shape", "40", "48", "40"]
    jobs = [start(bids, out, "participant", *(SMALL if k % 2 else other), "--skip-bids-validation",
                  "--participant-label", "01", "02") for k in range(4)]
    _wait(jobs)
    check_whole(out)  # every sidecar's DataSHA256 is that of the tensor beside it
    run = run_script(bids, out, "participant", *SMALL, "--skip-bids-validation")
    assert run.returncode == 0, run.stderr
    reference = bids / "derivatives" / "sequential"
    assert run_script(bids, reference, "participant", *SMALL, "--skip-bids-validation").returncode == 0
    assert tensors(out) == tensors(reference)


@pytest.mark.slow
def test_two_training_jobs_at_once_on_one_maps(tmp_path):
    bids = tmp_path / "bids"
    generate_dataset(bids, kind="trivial", n_subjects=8, sessions=1, seed=4, voxel_size=6.0)
    out = bids / "derivatives" / "neurodl"
    assert run_script(bids, out, "participant", *TINY, "--nprocs", "2").returncode == 0
    copy = tmp_path / "copy"
    shutil.copytree(bids, copy)
    sequential = copy / "derivatives" / "neurodl"
    run = run_script(copy, sequential, "group", *GROUP)
    assert run.returncode == 0, run.stderr
    run = run_script(bids, out, "group", *GROUP, "--stages", "split")
    assert run.returncode == 0, run.stderr
    _wait([start(bids, out, "group", *GROUP, "--stages", "train", "--splits", i) for i in (0, 1)])
    run = run_script(bids, out, "group", *GROUP, "--stages", "evaluate")
    assert run.returncode == 0, run.stderr
    assert validation_errors(out) == []
    check_whole(out)
    assert_same_maps(sequential / "maps/m", out / "maps/m")
