"""Tests of the synthetic BIDS dataset generator (bidsapp_dl.generate)."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from bidsapp_dl.bids.validate import validator_command
from bidsapp_dl.errors import UsageError
from bidsapp_dl.generate import generate_dataset, phantoms
from bidsapp_dl.generate.cli import main
from bidsapp_dl.generate.dataset import Participant, _scan


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def world_sample(img: nib.Nifti1Image, points: np.ndarray) -> np.ndarray:
    """Intensity at world (RAS mm) points, by linear interpolation through the affine."""
    ijk = np.linalg.inv(img.affine) @ np.c_[points, np.ones(len(points))].T
    return map_coordinates(np.asarray(img.dataobj, dtype=np.float32), ijk[:3], order=1, cval=0)


def world_box(lo, hi, step=3.0) -> np.ndarray:
    axes = [np.arange(a, b + 1e-6, step) for a, b in zip(lo, hi, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def is_oblique(affine: np.ndarray) -> bool:
    cosines = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.abs(cosines).max(axis=0).min() < np.cos(np.deg2rad(2)))


def baseline_images(root: Path) -> dict[str, Path]:
    """participant_id -> its first plain T1w image (no run or acq entity)."""
    out = {}
    for path in sorted(root.glob("sub-*/**/anat/*_T1w.nii.gz")):
        if "_run-" not in path.name and "_acq-" not in path.name:
            out.setdefault(path.name.split("_")[0], path)
    return out


@pytest.fixture(scope="module")
def trivial(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("g") / "trivial", kind="trivial",
                            n_subjects=9, sessions=3, seed=0, voxel_size=4, extra_runs=True,
                            acq_variant=True, duplicates=1)


@pytest.fixture(scope="module")
def shepp(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("g") / "shepp", kind="shepplogan",
                            n_subjects=10, seed=5, voxel_size=3)


def test_layout_and_metadata(trivial):
    desc = json.loads((trivial / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.10.0" and desc["DatasetType"] == "raw"
    assert {"Name", "License", "Authors"} <= desc.keys()
    assert len((trivial / "README").read_text()) > 150 and (trivial / "CHANGES").is_file()
    rows = read_tsv(trivial / "participants.tsv")
    assert list(rows[0]) == ["participant_id", "diagnosis", "age", "sex"]
    assert [r["participant_id"] for r in rows] == [f"sub-{i:02d}" for i in range(1, 11)]
    assert all(55 <= float(r["age"]) <= 93 and len(r["age"].split(".")[1]) == 1 for r in rows)
    assert {r["sex"] for r in rows} <= {"M", "F"}
    assert set(json.loads((trivial / "participants.json").read_text())) == set(rows[0])
    for r in rows:
        sub = r["participant_id"]
        for ses in ("M000", "M012", "M024"):
            anat = trivial / sub / f"ses-{ses}" / "anat"
            assert list(anat.glob("*_T1w.nii.gz")), anat
            assert all(p.with_name(p.name[:-7] + ".json").is_file()
                       for p in anat.glob("*.nii.gz"))
    assert {p.name for p in (trivial / "sub-02/ses-M000/anat").glob("*.nii.gz")} == {
        "sub-02_ses-M000_run-1_T1w.nii.gz", "sub-02_ses-M000_run-2_T1w.nii.gz"}
    assert (trivial / "sub-01/ses-M000/anat/sub-01_ses-M000_acq-lowres_T1w.nii.gz").is_file()


@pytest.mark.parametrize("n", [2, 7, 10, 21])
def test_classes_balanced_and_shuffled(tmp_path, n):
    from bidsapp_dl.generate.dataset import plan_participants

    orders = {tuple(p.diagnosis for p in plan_participants(n, 1, seed)) for seed in range(6)}
    for order in orders:
        assert abs(order.count("CN") - order.count("AD")) <= 1 and len(order) == n
    assert len(orders) > 1  # seeded shuffles differ, so the order is not fixed
    assert all(len(p.label) == max(2, len(str(n))) for p in plan_participants(n, 1, 0))


def test_sessions_tsv(trivial):
    participants = {r["participant_id"]: r for r in read_tsv(trivial / "participants.tsv")}
    converted = 0
    for sub, row in participants.items():
        rows = read_tsv(trivial / sub / f"{sub}_sessions.tsv")
        assert [r["session_id"] for r in rows] == ["ses-M000", "ses-M012", "ses-M024"]
        ages = [float(r["age"]) for r in rows]
        assert ages[0] == float(row["age"]) and np.allclose(np.diff(ages), 1.0)
        dx = [r["diagnosis"] for r in rows]
        assert dx[0] == row["diagnosis"]
        if row["diagnosis"] == "AD":
            assert set(dx) == {"AD"}
        converted += dx[-1] != dx[0]
        assert all(b != "CN" for a, b in pairwise(dx) if a != "CN")  # no reversion
    assert converted >= 1
    assert "session_id" in json.loads((trivial / "sessions.json").read_text())


def test_orientation_and_headers(trivial):
    codes, oblique, anisotropic = set(), 0, 0
    for path in trivial.glob("sub-*/ses-*/anat/*_T1w.nii.gz"):
        img = nib.load(path)
        assert img.get_data_dtype() == np.int16
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert np.allclose(img.get_qform(), img.get_sform(), atol=1e-3)
        codes.add("".join(nib.aff2axcodes(img.affine)))
        oblique += is_oblique(img.affine)
        zooms = img.header.get_zooms()
        anisotropic += max(zooms) > 1.1 * min(zooms)
        data = np.asarray(img.dataobj)
        assert 1000 < data.max() < 6000 and np.median(data[:4, :4, :4]) < 300
    assert {"RAS", "LAS", "PIR", "LPS"} <= codes
    assert oblique and anisotropic


def test_anatomy_agrees_in_world_space(trivial):
    # Every image resampled on one world grid must show the same head, whatever its voxel order.
    grid = world_box((-80, -100, -110), (80, 100, 100), step=5.0)
    images = [nib.load(p) for p in baseline_images(trivial).values()]
    samples = [world_sample(img, grid) for img in images]
    reference = np.mean(samples, axis=0)
    assert min(np.corrcoef(s, reference)[0, 1] for s in samples) > 0.85
    # A mislabelled voxel order (one axis flipped) would not agree.
    img = images[2]
    flipped = img.affine @ np.diag([1, -1, 1, 1])
    flipped[:3, 3] = img.affine[:3, 3] + img.affine[:3, 1] * (img.shape[1] - 1)
    bad = world_sample(nib.Nifti1Image(np.asarray(img.dataobj), flipped), grid)
    assert np.corrcoef(bad, reference)[0, 1] < 0.7


def test_trivial_darkens_left_hemisphere(trivial):
    dx = {r["participant_id"]: r["diagnosis"] for r in read_tsv(trivial / "participants.tsv")}
    left = world_box((-42, -30, 25), (-15, 30, 50))
    right = left * np.array([-1, 1, 1])
    ad_codes, ad_oblique = set(), 0
    for sub, path in baseline_images(trivial).items():
        img = nib.load(path)
        ratio = world_sample(img, left).mean() / world_sample(img, right).mean()
        if dx[sub] == "AD":
            assert ratio < 0.75, (sub, ratio)
            ad_codes.add("".join(nib.aff2axcodes(img.affine)))
            ad_oblique += is_oblique(img.affine)
        else:
            assert 0.8 < ratio < 1.25, (sub, ratio)
    # The check means something only if AD images with other voxel orders were among them.
    assert ad_oblique and ad_codes - {"RAS"}


def measures(img: nib.Nifti1Image) -> tuple[int, int]:
    """Ventricle and hippocampus volumes (mm3) from intensities relative to white matter."""
    box = world_box((-25, -30, 20), (25, 30, 58), 1.0)
    box = box[np.abs(box[:, 0]) > 3]  # leave out the interhemispheric fissure
    level = world_sample(img, box)
    ventricles = np.count_nonzero(level < 0.4 * np.percentile(level, 90))
    hip = world_box((14, -41, 2), (34, 5, 22), 1.0)
    hip = hip[((hip - (24, -18, 12)) ** 2 / np.square([10, 23, 10])).sum(axis=1) < 1]
    hippocampi = 0
    for side in (1, -1):
        # White matter surrounds each hippocampus: the local reference cancels the bias field.
        level = world_sample(img, hip * (side, 1, 1))
        level /= np.percentile(level, 90)
        hippocampi += np.count_nonzero((level > 0.4) & (level < 0.8))
    return ventricles, hippocampi


def test_shepplogan_classes_differ(shepp):
    dx = {r["participant_id"]: r["diagnosis"] for r in read_tsv(shepp / "participants.tsv")}
    vols = {sub: measures(nib.load(p)) for sub, p in baseline_images(shepp).items()}
    vent = {d: [vols[s][0] for s in vols if dx[s] == d] for d in ("CN", "AD")}
    hip = {d: [vols[s][1] for s in vols if dx[s] == d] for d in ("CN", "AD")}
    assert len(vent["AD"]) == len(vent["CN"]) == 5
    assert min(vent["AD"]) > max(vent["CN"]) and np.mean(vent["AD"]) > 2 * np.mean(vent["CN"])
    assert np.mean(hip["AD"]) < 0.6 * np.mean(hip["CN"])


def test_random_kind_images_ignore_labels():
    cn = Participant("01", "CN", "F", 70.0, ("CN",), 0)
    ad = Participant("01", "AD", "F", 70.0, ("AD",), 0)
    kw = {"seed": 1, "session": 0, "tag": (0, 0), "voxel_size": 8, "fov": phantoms.DEFAULT_FOV,
          "ras_only": False}
    assert np.array_equal(_scan("random", part=cn, **kw)[0], _scan("random", part=ad, **kw)[0])
    assert not np.array_equal(_scan("shepplogan", part=cn, **kw)[0],
                              _scan("shepplogan", part=ad, **kw)[0])


def test_seed_reproducibility(tmp_path):
    opts = {"kind": "shepplogan", "n_subjects": 3, "sessions": 2, "voxel_size": 6}
    a = hashes(generate_dataset(tmp_path / "a", seed=7, **opts))
    b = hashes(generate_dataset(tmp_path / "b", seed=7, **opts))
    c = hashes(generate_dataset(tmp_path / "c", seed=8, **opts))
    assert a == b
    # gzip headers carry no time stamp (bytes 4-8), else runs a second apart would differ.
    assert all((tmp_path / "a" / k).read_bytes()[4:8] == bytes(4) for k in a if k.endswith(".gz"))
    images = [k for k in a if k.endswith(".nii.gz")]
    assert len(images) == 6 and all(a[k] != c[k] for k in images)


def test_duplicates_copy_images(trivial):
    rows = read_tsv(trivial / "participants.tsv")
    extra = hashes(trivial / "sub-10")
    images = {h for k, h in extra.items() if k.endswith(".nii.gz")}
    others = {h for k, h in hashes(trivial).items() if not k.startswith("sub-10")}
    assert images and images <= others
    assert any(r["diagnosis"] == rows[-1]["diagnosis"] for r in rows[:-1])


def test_validator_reports_no_error(trivial):
    # a test dependency: a missing validator must fail here, not pass silently
    run = subprocess.run([validator_command(), str(trivial), "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    report = json.loads(run.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == []
    assert len(report["summary"]["subjects"]) == 10


def test_api_rejects_bad_options(tmp_path):
    with pytest.raises(UsageError):
        generate_dataset(tmp_path / "x", n_subjects=1)
    with pytest.raises(ValueError):
        generate_dataset(tmp_path / "x", kind="nope")
    assert not (tmp_path / "x").exists()


def test_cli_exit_codes(tmp_path, capsys):
    assert main(["--help"]) == 0
    out = tmp_path / "out"
    assert main([str(out), "--n-subjects", "1"]) == 64
    assert main([str(out), "--kind", "nope"]) == 64
    assert main([str(out), "--n-subjects", "x"]) == 64
    capsys.readouterr()
    args = [str(out), "--n-subjects", "2", "--voxel-size", "8", "-q"]
    assert main(args) == 0 and len(baseline_images(out)) == 2
    before = hashes(out)
    assert main(args) == 64
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert main([*args, "--seed", "2", "--overwrite"]) == 0 and hashes(out) != before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main([str(other), "--overwrite", "--voxel-size", "8"]) == 64
    assert (other / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_help_imports_nothing_heavy():
    code = ("import sys; from bidsapp_dl.generate.cli import build_parser; build_parser(); "
            "print(sorted({'numpy', 'nibabel'} & set(sys.modules)))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
