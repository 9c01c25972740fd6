"""The participant level on derivatives, bad images, many jobs at once, and a larger dataset."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp_dl.generate import generate_dataset

from ..conftest import SMALL, run_script, validation_errors

MNI = "MNI152NLin2009cAsym"


def make_fmriprep(bids: Path) -> Path:
    """A derivative like fMRIPrep's: native and template-space images per participant."""
    deriv = bids / "derivatives" / "fmriprep"
    deriv.mkdir(parents=True)
    (deriv / "dataset_description.json").write_text(json.dumps({
        "Name": "fMRIPrep output", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": "25.0.0"}]}))
    for sub in ("01", "02"):
        anat = deriv / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True)
        src = sorted(bids.glob(f"sub-{sub}/ses-M000/anat/*_T1w.nii.gz"))[0]
        img = nib.load(src)
        nib.save(img, anat / f"sub-{sub}_desc-preproc_T1w.nii.gz")
        # a segmentation in the same native space: 0 background, 1 bright tissue, 2 the rest
        vol = img.get_fdata()
        head = vol > np.percentile(vol, 60)
        seg = np.where(head, np.where(vol > np.median(vol[head]), 1, 2), 0).astype(np.int16)
        nib.save(nib.Nifti1Image(seg, img.affine), anat / f"sub-{sub}_desc-aseg_dseg.nii.gz")
        # a template-space image: 2 mm grid, LAS like FSL's MNI template
        data = np.random.default_rng(int(sub)).random((40, 48, 40)).astype(np.float32) * 500
        affine = np.array([[-2.0, 0, 0, 78], [0, 2, 0, -112], [0, 0, 2, -70], [0, 0, 0, 1]])
        nib.save(nib.Nifti1Image(data, affine), anat / f"sub-{sub}_space-{MNI}_desc-preproc_T1w.nii.gz")
        nib.save(nib.Nifti1Image((data > 250).astype(np.uint8), affine),
                 anat / f"sub-{sub}_space-{MNI}_desc-brain_mask.nii.gz")
        nib.save(nib.Nifti1Image((data // 100).astype(np.int16), affine),
                 anat / f"sub-{sub}_space-{MNI}_desc-aseg_dseg.nii.gz")
    return deriv


def test_derivatives_taken_as_they_are(bids, neurodl):
    deriv = make_fmriprep(bids)
    out = bids / "derivatives" / "neurodl"
    code, err = neurodl(bids, out, "participant", "--derivatives", deriv, "--space", MNI,
                        "--desc", "preproc", "--preprocessing", "none", "--nprocs", "2",
                        "--with-dseg")
    assert code == 0, err
    # grid kept: the segmentation is the input's, voxel for voxel
    src = nib.load(deriv / f"sub-01/anat/sub-01_space-{MNI}_desc-aseg_dseg.nii.gz")
    labels = np.load(out / f"sub-01/anat/sub-01_space-{MNI}_desc-tensor_dseg.npy")
    np.testing.assert_array_equal(labels, np.asanyarray(src.dataobj))
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_T1w.npy"))
    assert made == [f"sub-0{i}/anat/sub-0{i}_space-{MNI}_desc-tensor_T1w.npy" for i in (1, 2)]
    meta = json.loads((out / made[0]).with_suffix(".json").read_text())
    assert meta["Sources"] == [f"bids:fmriprep:sub-01/anat/sub-01_space-{MNI}_desc-preproc_T1w.nii.gz"]
    assert meta["SpatialReference"] == MNI
    assert meta["Shape"] == [40, 48, 40]  # the grid is kept
    assert nib.aff2axcodes(np.array(meta["Affine"])) == ("L", "A", "S")
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetLinks"]["fmriprep"] == "../fmriprep"
    assert validation_errors(out) == []


def test_segmentations_follow_their_images(bids, neurodl):
    deriv = make_fmriprep(bids)
    out = bids / "derivatives" / "neurodl"
    code, err = neurodl(bids, out, "participant", "--derivatives", deriv, "--desc", "preproc",
                        "--with-dseg", *SMALL)
    assert code == 0, err
    # each image gets the segmentation of its own space
    mni = out / f"sub-01/anat/sub-01_space-{MNI}_desc-tensor_dseg.npy"
    assert json.loads(mni.with_suffix(".json").read_text())["Sources"] == [
        f"bids:fmriprep:sub-01/anat/sub-01_space-{MNI}_desc-aseg_dseg.nii.gz"]
    assert np.load(mni).dtype == np.int16
    # native space, resampled with the image: bright-tissue labels sit on bright voxels
    image = np.load(out / "sub-02/anat/sub-02_desc-tensor_T1w.npy")
    labels = np.load(out / "sub-02/anat/sub-02_desc-tensor_dseg.npy")
    meta = json.loads((out / "sub-02/anat/sub-02_desc-tensor_dseg.json").read_text())
    assert labels.shape == image.shape == (48, 56, 48)
    assert set(meta["PreprocessingInfo"]["labels"]) == {0, 1, 2}
    assert meta["Sources"] == ["bids:fmriprep:sub-02/anat/sub-02_desc-aseg_dseg.nii.gz"]
    assert image[labels == 1].mean() > image[labels == 2].mean() > image[labels == 0].mean()
    # a second run changes nothing; a new segmentation is carried over again
    code, err = neurodl(bids, out, "participant", "--derivatives", deriv, "--desc", "preproc",
                        "--with-dseg", *SMALL)
    assert code == 0 and "0 extracted" in err
    seg = deriv / f"sub-01/anat/sub-01_space-{MNI}_desc-aseg_dseg.nii.gz"
    nib.save(nib.Nifti1Image(np.full((40, 48, 40), 7, np.int16), nib.load(seg).affine), seg)
    code, err = neurodl(bids, out, "participant", "--derivatives", deriv, "--desc", "preproc",
                        "--with-dseg", *SMALL)
    assert code == 0 and "1 extracted" in err
    assert set(np.unique(np.load(mni))) == {0, 7}  # 0 where the grid leaves the input field


def test_missing_segmentation_is_a_bad_image(bids, neurodl):
    deriv = make_fmriprep(bids)
    (deriv / "sub-02/anat/sub-02_desc-aseg_dseg.nii.gz").unlink()
    out = bids / "derivatives" / "neurodl"
    args = [bids, out, "participant", "--derivatives", deriv, "--desc", "preproc", "--with-dseg",
            *SMALL]
    code, err = neurodl(*args)
    assert code == 65 and "sub-02_desc-preproc_T1w.nii.gz: no segmentation" in err
    code, err = neurodl(*args, "--skip-bad-images")
    assert code == 0, err
    assert (out / "sub-01/anat/sub-01_desc-tensor_dseg.npy").is_file()


def test_derivative_without_description_exit_66(bids, neurodl):
    deriv = make_fmriprep(bids)
    (deriv / "dataset_description.json").unlink()
    code, err = neurodl(bids, bids / "derivatives" / "n", "participant", "--derivatives", deriv)
    assert code == 66 and "dataset_description.json" in err and str(deriv) in err


def test_space_without_derivatives_is_a_usage_error(bids, neurodl):
    code, err = neurodl(bids, bids / "derivatives" / "n", "participant", "--space", MNI)
    assert code == 64 and "--derivatives" in err


def _break(path: Path, how: str) -> None:
    if how == "html":
        path.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "4d":
        nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.int16), np.eye(4)), path)
    elif how == "2d":
        nib.save(nib.Nifti1Image(np.ones((16, 16), np.int16), np.eye(4)), path)
    elif how == "zeros":
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.int16), np.eye(4)), path)
    elif how == "nan":
        nib.save(nib.Nifti1Image(np.full((16, 16, 16), np.nan, np.float32), np.eye(4)), path)


@pytest.mark.parametrize("how", ["html", "truncated", "4d", "2d", "zeros", "nan"])
def test_bad_image_exit_65_naming_it_nothing_half_written(bids, neurodl, how):
    bad = bids / "sub-02/ses-M012/anat/sub-02_ses-M012_T1w.nii.gz"
    _break(bad, how)
    out = bids / "derivatives" / "neurodl"
    args = [bids, out, "participant", *SMALL, "--participant-label", "02", "03",
            "--skip-bids-validation"]
    code, err = neurodl(*args)
    assert code == 65, err
    assert bad.name in err and "--skip-bad-images" in err
    assert len(err.strip().splitlines()[-1]) > 0 and "Traceback" not in err
    assert not list(out.rglob("sub-02_ses-M012_desc-tensor*"))
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    # the good images of the same run were extracted
    assert list(out.rglob("sub-03_*_desc-tensor_T1w.npy"))
    code, err = neurodl(*args, "--skip-bad-images")
    assert code == 0, err
    listing = sorted((out / "logs").glob("bad_images-*.tsv"))[-1].read_text()
    assert bad.name in listing


def test_gzip_data_named_nii_and_nonfinite_voxels_are_handled(bids, neurodl):
    src = bids / "sub-01/ses-M000/anat/sub-01_ses-M000_T1w.nii.gz"
    img = nib.load(src)
    data = img.get_fdata(dtype=np.float32)
    data[:3] = np.nan
    data[-2:] = np.inf
    nib.save(nib.Nifti1Image(data, img.affine), src)
    plain = src.with_name("sub-01_ses-M000_acq-gz_T1w.nii")
    plain.write_bytes(gzip.compress(nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
                                    .to_bytes()))
    out = bids / "derivatives" / "neurodl"
    code, err = neurodl(bids, out, "participant", *SMALL, "--participant-label", "01",
                        "--session-label", "M000", "--skip-bids-validation")
    assert code == 0, err
    meta = json.loads(next(out.rglob("sub-01_ses-M000_desc-tensor_T1w.json")).read_text())
    assert meta["PreprocessingInfo"]["n_nonfinite"] > 0
    tensor = np.load(next(out.rglob("sub-01_ses-M000_desc-tensor_T1w.npy")))
    assert np.isfinite(tensor).all()
    assert list(out.rglob("sub-01_ses-M000_acq-gz_desc-tensor_T1w.npy"))


def test_six_participant_jobs_at_once_on_one_output(tmp_path):
    bids = tmp_path / "bids"
    generate_dataset(bids, kind="trivial", n_subjects=6, sessions=1, seed=5, voxel_size=4.0)
    out = bids / "derivatives" / "neurodl"
    import subprocess
    import sys

    from ..conftest import ROOT

    procs = [subprocess.Popen([sys.executable, str(ROOT / "run.py"), str(bids), str(out),
                               "participant", *SMALL, "--participant-label", f"0{i}",
                               "--nprocs", "1"], stderr=subprocess.PIPE, text=True)
             for i in range(1, 7)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), results
    assert len(list(out.rglob("*_desc-tensor_T1w.npy"))) == 6
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Name"] == "neurodl"
    ignore = (out / ".bidsignore").read_text().splitlines()
    assert len(ignore) == len(set(ignore))
    assert len(list((out / "logs").glob("participant-*.log"))) == 6
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    # each job rebuilt the QC page under the folder lock: the last one lists every image
    assert (out / "qc.html").read_text().count("data-tensor=") == 6
    assert validation_errors(out) == []


def test_twenty_participants_two_sessions(tmp_path):
    bids = tmp_path / "bids"
    generate_dataset(bids, kind="shepplogan", n_subjects=20, sessions=2, seed=11, voxel_size=3.0)
    assert validation_errors(bids) == []
    out = bids / "derivatives" / "neurodl"
    run = run_script(bids, out, "participant", "--voxel-size", "2", "--target-shape", "84", "104",
                     "90", "--nprocs", "2")
    assert run.returncode == 0, run.stderr
    assert len(list(out.rglob("*_desc-tensor_T1w.npy"))) == 40
    assert "40 extracted" in run.stderr
    assert validation_errors(out) == []
