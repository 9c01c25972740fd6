"""The participant level end to end, from the command line, on generated datasets."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ..conftest import SMALL, validation_errors


def tensors(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*_desc-tensor_T1w.npy"))


def test_whole_dataset_sessions_runs_and_acquisitions(bids, tmp_path, neurodl):
    out = bids / "derivatives" / "neurodl"
    code, err = neurodl(bids, out, "participant", *SMALL, "--nprocs", "2")
    assert code == 0, err
    sources = sorted(p.relative_to(bids).as_posix() for p in bids.glob("sub-*/ses-*/anat/*.nii.gz"))
    made = tensors(out)
    assert len(made) == len(sources) > 8
    # every run and acquisition keeps its entities in its own output name
    assert any("_run-2_desc-tensor_T1w.npy" in m for m in made)
    assert any("_acq-lowres_desc-tensor_T1w.npy" in m for m in made)
    for src in sources:
        stem = src.replace("_T1w.nii.gz", "_desc-tensor_T1w")
        tensor = np.load(out / f"{stem}.npy", mmap_mode="r")
        meta = json.loads((out / f"{stem}.json").read_text())
        assert tensor.shape == (48, 56, 48) == tuple(meta["Shape"])
        assert tensor.dtype == np.float32
        assert meta["Sources"] == [f"bids:raw:{src}"]
        assert nib.aff2axcodes(np.array(meta["Affine"])) == ("R", "A", "S")
        assert meta["VoxelSize"] == [4.0, 4.0, 4.0]
        assert meta["Preprocessing"]["normalization"] == "robust-minmax"
        assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0
        # the head is in the field of view: the border is mostly background
        assert tensor[tensor.shape[0] // 2].mean() > tensor[0].mean()
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "neurodl"
    assert len(list((out / "logs").glob("participant-*.log"))) == 1
    assert validation_errors(out) == []


def test_lanes_as_threads_and_as_processes_write_the_same_files(bids, tmp_path, neurodl):
    """Up to LANES_PER_PROCESS lanes run as threads of one process, more as processes of
    several lanes each: every way gives the bytes of --nprocs 1."""
    from bidsapp_dl.extract.participant import LANES_PER_PROCESS

    files = {}
    for n in (1, 2, LANES_PER_PROCESS + 2):
        out = tmp_path / f"n{n}"
        code, err = neurodl(bids, out, "participant", *SMALL, "--skip-bids-validation",
                            "--nprocs", str(n))
        assert code == 0, err
        files[n] = {p.relative_to(out).as_posix(): p.read_bytes()
                    for p in out.rglob("*_desc-tensor_T1w.npy")}
        hashes = {p.name: json.loads(p.read_text())["DataSHA256"]
                  for p in out.rglob("*_desc-tensor_T1w.json")}
        assert len(hashes) == len(files[n]) > 8
    assert files[2] == files[1] and files[LANES_PER_PROCESS + 2] == files[1]


def test_world_coordinates_survive_extraction(bids, neurodl):
    """The stored affine maps a voxel to the same anatomy as in the (oblique, flipped) input."""
    out = bids / "derivatives" / "neurodl"
    assert neurodl(bids, out, "participant", "--voxel-size", "2", "--target-shape", "96", "112",
                   "96", "--normalization", "none", "--participant-label", "01", "02")[0] == 0
    for side in out.glob("sub-*/ses-M000/anat/*_ses-M000_desc-tensor_T1w.json"):
        meta = json.loads(side.read_text())
        src = nib.load(bids / meta["Sources"][0].split(":", 2)[2])
        data = np.load(side.with_suffix(".npy"))
        # the brightest region of the input, in world mm, must be bright in the output too
        src_data = src.get_fdata()
        peak = np.array(np.unravel_index(np.argmax(src_data), src_data.shape))
        world = src.affine @ [*peak, 1]
        vox = np.round(np.linalg.inv(np.array(meta["Affine"])) @ world)[:3].astype(int)
        window = data[tuple(slice(max(v - 2, 0), v + 3) for v in vox)]
        assert window.max() > np.percentile(data[data > 0], 90)


def test_labels_with_and_without_prefix_and_sessions(bids, neurodl):
    out = bids / "derivatives" / "neurodl"
    code, err = neurodl(bids, out, "participant", *SMALL, "--participant_label", "01", "sub-03",
                        "--session-label", "ses-M012")
    assert code == 0, err
    made = tensors(out)
    assert made and all(m.startswith(("sub-01/ses-M012/", "sub-03/ses-M012/")) for m in made)
    assert {m.split("/")[0] for m in made} == {"sub-01", "sub-03"}


def test_unknown_labels_exit_66_listing_existing(bids, neurodl):
    out = bids / "derivatives" / "neurodl"
    code, err = neurodl(bids, out, "participant", "--participant-label", "01", "99")
    assert code == 66
    assert "sub-99" in err and "sub-01, sub-02, sub-03, sub-04" in err
    code, err = neurodl(bids, out, "participant", "--participant-label", "01",
                        "--session-label", "M036")
    assert code == 66 and "ses-M000, ses-M012" in err


def test_filter_file_selects_images(bids, tmp_path, neurodl):
    out = bids / "derivatives" / "neurodl"
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t1w": {"acquisition": "lowres"}}))
    assert neurodl(bids, out, "participant", *SMALL, "--bids-filter-file", filters)[0] == 0
    made = tensors(out)
    assert made and all("_acq-lowres_" in m for m in made)
    # null = entity absent: no acq-, no run-
    filters.write_text(json.dumps({"t1w": {"acquisition": None, "run": None}}))
    out2 = bids / "derivatives" / "neurodl2"
    assert neurodl(bids, out2, "participant", *SMALL, "--bids-filter-file", filters)[0] == 0
    made = tensors(out2)
    plain = [p for p in bids.glob("sub-*/ses-*/anat/*_T1w.nii.gz")
             if "_acq-" not in p.name and "_run-" not in p.name]
    assert len(made) == len(plain) >= 6
    assert not any("_acq-" in m or "_run-" in m for m in made)


def test_no_image_selected_exit_18(bids, tmp_path, neurodl):
    filters = tmp_path / "f.json"
    filters.write_text(json.dumps({"t1w": {"suffix": "T2w"}}))
    code, err = neurodl(bids, bids / "derivatives" / "x", "participant", "--bids-filter-file",
                        filters)
    assert code == 18 and "suffix=T2w" in err


def test_rerun_skips_up_to_date_and_redoes_changed(bids, neurodl, dataset_template):
    out = bids / "derivatives" / "neurodl"
    assert neurodl(bids, out, "participant", *SMALL, "--participant-label", "01", "02")[0] == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*_desc-tensor_T1w.*")}
    code, err = neurodl(bids, out, "participant", *SMALL, "--participant-label", "01", "02")
    assert code == 0 and "0 extracted" in err
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # another participant's image under sub-01's name: only that one is redone
    changed = bids / "sub-01/ses-M000/anat/sub-01_ses-M000_T1w.nii.gz"
    changed.write_bytes((bids / "sub-02/ses-M012/anat/sub-02_ses-M012_T1w.nii.gz").read_bytes())
    code, err = neurodl(bids, out, "participant", *SMALL, "--participant-label", "01", "02")
    assert code == 0 and "1 extracted" in err
    redone = [p for p in stamps if p.stat().st_mtime_ns != stamps[p]]
    assert sorted(p.name for p in redone) == ["sub-01_ses-M000_desc-tensor_T1w.json",
                                              "sub-01_ses-M000_desc-tensor_T1w.npy",
                                              "sub-01_ses-M000_desc-tensor_T1w.png"]  # its QC
    # new parameters: everything is redone
    code, err = neurodl(bids, out, "participant", "--voxel-size", "4", "--target-shape", "40",
                        "40", "40", "--participant-label", "01", "02")
    assert code == 0 and "0 up to date" in err
    assert all(np.load(p).shape == (40, 40, 40) for p in out.rglob("*.npy"))


def test_float16_and_zscore(bids, neurodl):
    out = bids / "derivatives" / "neurodl"
    assert neurodl(bids, out, "participant", *SMALL, "--participant-label", "02",
                   "--dtype", "float16", "--normalization", "zscore")[0] == 0
    for p in out.rglob("*.npy"):
        data = np.load(p, mmap_mode="r")
        assert data.dtype == np.float16
        assert float(data.min()) < 0 < float(data.max())


def test_config_file_sets_parameters(bids, tmp_path, neurodl):
    cfg = tmp_path / "neurodl.toml"
    cfg.write_text('voxel_size = 4.0\ntarget-shape = [32, 36, 32]\nparticipant_label = ["sub-04"]\n')
    out = bids / "derivatives" / "neurodl"
    assert neurodl(bids, out, "participant", "--config", cfg)[0] == 0
    made = tensors(out)
    assert made and all(m.startswith("sub-04/") for m in made)
    assert np.load(out / made[0]).shape == (32, 36, 32)


def test_bids_database_dir_is_written_then_reused(bids, tmp_path, neurodl):
    db = tmp_path / "bidsdb"
    out = bids / "derivatives" / "neurodl"
    code, err = neurodl(bids, out, "participant", *SMALL, "--participant-label", "01",
                        "--bids-database-dir", db)
    assert code == 0 and "wrote the pybids index" in err and any(db.iterdir())
    code, err = neurodl(bids, out, "participant", *SMALL, "--participant-label", "02", "-v",
                        "--bids-database-dir", db)
    assert code == 0 and "reusing the pybids index" in err
    assert any(m.startswith("sub-02/") for m in tensors(out))


@pytest.mark.parametrize("name", ["missing_description", "bad_json"])
def test_invalid_dataset_exit_16_unless_skipped(bids, neurodl, name):
    desc = bids / "dataset_description.json"
    if name == "missing_description":
        desc.unlink()
    else:
        desc.write_text("{not json")
    out = bids / "derivatives" / "neurodl"
    code, err = neurodl(bids, out, "participant", *SMALL, "--participant-label", "01")
    assert code == 16 and "--skip-bids-validation" in err and "dataset_description" in err
    code, err = neurodl(bids, out, "participant", *SMALL, "--participant-label", "01",
                        "--skip-bids-validation")
    assert code == 0, err


def test_validator_errors_are_reported(bids, neurodl):
    # a participant folder without a valid name for its image
    bad = bids / "sub-01/ses-M000/anat/sub-01_ses-M000_T1w.nii.gz"
    bad.rename(bad.with_name("sub-01_ses-M000_T1.nii.gz"))
    code, err = neurodl(bids, bids / "derivatives" / "n", "participant", "--participant-label", "01")
    assert code == 16 and "sub-01_ses-M000_T1.nii.gz" in err
    # the problem is in sub-01 only: validating sub-02 alone passes
    assert neurodl(bids, bids / "derivatives" / "n", "participant", *SMALL,
                   "--participant-label", "02")[0] == 0


def test_output_that_cannot_be_created_exit_73(bids, tmp_path, neurodl):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = neurodl(bids, blocker / "out", "participant")
    assert code == 73 and "OUTPUT_DIR" in err


def test_leftovers_of_killed_runs_are_removed_once_stale(bids, neurodl):
    """Hidden temporaries older than any run are removed on the next run; fresh ones (another
    job may be writing them) and everything else stay."""
    import os
    import time

    out = bids / "derivatives" / "neurodl"
    assert neurodl(bids, out, "participant", *SMALL, "--participant-label", "01")[0] == 0
    anat = next(out.rglob("sub-01_*_desc-tensor_T1w.npy")).parent
    stale = anat / ".sub-01_ses-M000_desc-tensor_T1w.npy.k2j4x.tmp"
    fresh = anat / ".sub-01_ses-M000_desc-tensor_T1w.json.a8c1q.tmp"
    half_maps = out / "maps" / ".adcn.x7x7x7"
    for path in (stale, fresh):
        path.write_bytes(b"\x93NUMPY half")
    (half_maps / "groups").mkdir(parents=True)
    old = time.time() - 3 * 3600
    for path in (stale, half_maps):
        os.utime(path, (old, old))
    code, err = neurodl(bids, out, "participant", *SMALL, "--participant-label", "01")
    assert code == 0 and "removed 2 temporary file(s) or folder(s)" in err
    assert not stale.exists() and not half_maps.exists() and fresh.exists()
    assert next(out.rglob("sub-01_*_desc-tensor_T1w.npy")).is_file()
