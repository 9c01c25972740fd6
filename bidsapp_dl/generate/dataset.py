"""Write a synthetic BIDS dataset of T1w head phantoms in two diagnostic classes (CN, AD)."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import OutputError, UsageError
from . import phantoms

log = logging.getLogger(__name__)

KINDS = ("trivial", "random", "shepplogan")
DEFAULT_VOXEL_SIZE = 1.2
# Disease effects per kind: (hippocampus scale, ventricle scale, left-hemisphere intensity).
_EFFECTS = {
    "trivial": {"MCI": (1.0, 1.0, 0.8), "AD": (1.0, 1.0, 0.6)},
    "shepplogan": {"MCI": (0.82, 1.35, 1.0), "AD": (0.65, 1.8, 1.0)},
    "random": {},
}
_EXTRA_RUN_SUBJECTS = (1, 2)
_ACQ_SUBJECTS = (0, 3)


@dataclass(frozen=True)
class Participant:
    """One participant: baseline diagnosis, sex, age, and the diagnosis at each session."""

    label: str
    diagnosis: str
    sex: str
    age: float
    session_dx: tuple[str, ...]
    source: int  # index of the participant whose head (and images) this one has


def session_labels(sessions: int) -> list[str]:
    """ADNI-style visit labels (``M000``, ``M012``...); none for a single session."""
    return [f"M{12 * s:03d}" for s in range(sessions)] if sessions > 1 else []


def plan_participants(n_subjects: int, sessions: int, seed: int,
                      duplicates: int = 0) -> list[Participant]:
    """Draw balanced, shuffled diagnoses, ages, sexes and per-session conversions."""
    rng = np.random.default_rng([seed, 0])
    n_ad = n_subjects // 2
    dx = np.array(["CN"] * (n_subjects - n_ad) + ["AD"] * n_ad)
    rng.shuffle(dx)
    ages = np.round(rng.uniform(55.0, 90.0, n_subjects), 1)
    sexes = rng.choice(["F", "M"], n_subjects)
    per_session = [[str(d)] * sessions for d in dx]
    cn = np.flatnonzero(dx == "CN")
    if sessions > 1 and len(cn):
        # A few CN participants convert: MCI from a later visit, sometimes AD after that.
        for i in rng.choice(cn, max(1, round(0.3 * len(cn))), replace=False):
            start, to_ad = int(rng.integers(1, sessions)), rng.random() < 0.5
            for s in range(start, sessions):
                per_session[i][s] = "AD" if to_ad and s > start else "MCI"
    sources = list(range(n_subjects))
    sources += sorted(int(i) for i in rng.choice(n_subjects, duplicates, replace=False))
    width = max(2, len(str(len(sources))))
    return [Participant(f"{k + 1:0{width}d}", str(dx[i]), str(sexes[i]), float(ages[i]),
                        tuple(per_session[i]), i) for k, i in enumerate(sources)]


def _protocol(index: int, rng: np.random.Generator, voxel_size: float, ras_only: bool) -> dict:
    # Deterministic variety, so that every dataset of 4+ subjects mixes orders, obliquity and
    # anisotropy while the shuffled diagnoses keep them independent of the class.
    if ras_only:
        return {"voxel_size": voxel_size, "orientation": "RAS"}
    rotation = (0.0, 0.0, 0.0)
    if index % 3 == 1:
        # Mostly a pitch, as when slices follow the AC-PC line.
        rotation = (rng.choice([-1, 1]) * rng.uniform(4, 10), rng.uniform(-4, 4),
                    rng.uniform(-4, 4))
    sizes = (voxel_size, voxel_size, 1.2 * voxel_size) if index % 5 == 3 else voxel_size
    return {"voxel_size": sizes, "orientation": phantoms.ORIENTATIONS[index % 4],
            "rotation": rotation}


def _scan(kind, seed, part: Participant, session: int, tag: tuple[int, int], voxel_size, fov,
          ras_only):
    """Render one image of a participant at a session; ``tag`` = (run, acq) variant numbers."""
    i = part.source
    base = phantoms.random_phantom(np.random.default_rng([seed, 1, i]))
    proto = _protocol(i, np.random.default_rng([seed, 2, i]), voxel_size, ras_only)
    if tag[1]:
        proto["voxel_size"] = np.asarray(proto["voxel_size"]) * 1.5
    rng = np.random.default_rng([seed, 3, i, session, *tag])
    dx = part.session_dx[session]
    hippo, vent, left = _EFFECTS[kind].get(dx, (1.0, 1.0, 1.0))
    age = part.age + session  # one year between visits
    ph = replace(phantoms.rescan(base, rng), left_factor=left,
                 hippocampus=base.hippocampus * hippo * (1 - 0.003 * (age - 70)),
                 ventricles=base.ventricles * vent * (1 + 0.006 * (age - 70)))
    grid = phantoms.make_grid(fov=fov, **proto)
    return phantoms.render(ph, grid, rng), grid.affine


def _nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    # mtime=0 and no file name in the gzip header: the same seed gives the same bytes.
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _check(kind, n_subjects, sessions, seed, voxel_size, fov, duplicates) -> None:
    if kind not in KINDS:
        raise UsageError(f"--kind {kind!r} is unknown; choose one of {', '.join(KINDS)}")
    if int(n_subjects) != n_subjects or n_subjects < 2:
        raise UsageError(f"--n-subjects must be an integer of at least 2 (two classes), "
                         f"got {n_subjects}")
    if int(sessions) != sessions or not 1 <= sessions <= 20:
        raise UsageError(f"--sessions must be an integer from 1 to 20, got {sessions}")
    if int(seed) != seed or seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {seed}")
    if not 0.8 <= voxel_size <= 12:
        raise UsageError(f"--voxel-size must be between 0.8 and 12 mm, got {voxel_size}")
    if len(fov) != 3 or not all(40 <= f <= 400 for f in fov):
        raise UsageError(f"--fov needs three sizes between 40 and 400 mm, got {list(fov)}")
    if int(duplicates) != duplicates or not 0 <= duplicates <= n_subjects:
        raise UsageError(f"--duplicates must be an integer from 0 to --n-subjects "
                         f"({n_subjects}), got {duplicates}")


def _prepare(out: Path, overwrite: bool) -> Path:
    """Check the output folder and return an empty temporary folder next to it."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"output folder {out} is not empty; use --overwrite to replace it")
        if not (out / "dataset_description.json").is_file():
            raise UsageError(f"output folder {out} is not empty and is not a BIDS dataset; "
                             "refusing to replace it, choose another path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot write in {out.parent}: {exc.strerror}; "
                          "choose a writable output path") from exc
    tmp.chmod(0o755)
    return tmp


def generate_dataset(out_dir, kind: str = "shepplogan", n_subjects: int = 10, sessions: int = 1,
                     seed: int = 0, *, voxel_size: float = DEFAULT_VOXEL_SIZE,
                     fov=phantoms.DEFAULT_FOV, extra_runs: bool = False,
                     acq_variant: bool = False, duplicates: int = 0, ras_only: bool = False,
                     overwrite: bool = False) -> Path:
    """Generate a synthetic raw BIDS dataset of T1w head phantoms.

    Parameters
    ----------
    out_dir : path
        Folder to create; it must be absent or empty unless ``overwrite``.
    kind : {"trivial", "random", "shepplogan"}
        ``trivial``: AD has a darker left hemisphere; ``random``: labels unrelated to images;
        ``shepplogan``: AD has smaller hippocampi and larger ventricles.
    n_subjects, sessions, seed : int
        Participants (>= 2, half CN, half AD), visits per participant, master seed.
    voxel_size : float
        Voxel size in mm (3 or more for small, fast images).
    fov : 3 floats
        Field of view in mm along x, y, z.
    extra_runs, acq_variant : bool
        Add ``run-1``/``run-2`` scans for two subjects, and an ``acq-lowres`` scan for two.
    duplicates : int
        Extra participants whose images are byte copies of others' (leakage tests).
    ras_only : bool
        Plain RAS, axis-aligned, isotropic grids for every subject.

    Returns
    -------
    pathlib.Path
        The dataset folder.
    """
    _check(kind, n_subjects, sessions, seed, voxel_size, fov, duplicates)
    out = Path(out_dir).absolute()
    tmp = _prepare(out, overwrite)
    try:
        parts = plan_participants(n_subjects, sessions, seed, duplicates)
        visits = session_labels(sessions)
        options = {"kind": kind, "seed": seed, "voxel_size": voxel_size, "fov": list(fov),
                   "n_subjects": n_subjects, "sessions": sessions, "duplicates": duplicates}
        for part in parts:
            log.debug("sub-%s (%s)", part.label, part.diagnosis)
            for s in range(sessions):
                for tag in _variants(part.source, s, extra_runs, acq_variant):
                    data, affine = _scan(kind, seed, part, s, tag, voxel_size, fov, ras_only)
                    path = tmp / _image_name(part.label, visits[s] if visits else None, tag)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(_nifti_bytes(data, affine))
                    _write_json(path.with_name(path.name[:-7] + ".json"), _SIDECAR)
        write_metadata(tmp, parts, visits, options)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            shutil.rmtree(trash)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _variants(index: int, session: int, extra_runs: bool, acq_variant: bool):
    """(run, acq) numbers of the scans of one visit: run 0 means no run entity."""
    tags = [(1, 0), (2, 0)] if extra_runs and session == 0 and index in _EXTRA_RUN_SUBJECTS \
        else [(0, 0)]
    if acq_variant and session == 0 and index in _ACQ_SUBJECTS:
        tags.append((0, 1))
    return tags


def _image_name(label: str, visit: str | None, tag: tuple[int, int]) -> str:
    stem = f"sub-{label}" + (f"_ses-{visit}" if visit else "")
    stem += "_acq-lowres" if tag[1] else ""
    stem += f"_run-{tag[0]}" if tag[0] else ""
    folder = f"sub-{label}/" + (f"ses-{visit}/" if visit else "") + "anat"
    return f"{folder}/{stem}_T1w.nii.gz"


# Acquisition parameters of a typical 3 T MPRAGE (seconds and degrees, as BIDS wants).
_SIDECAR = {"Manufacturer": "neurodl", "ManufacturersModelName": "synthetic head phantom",
            "MagneticFieldStrength": 3, "MRAcquisitionType": "3D", "PulseSequenceType": "MPRAGE",
            "RepetitionTime": 2.3, "EchoTime": 0.00298, "InversionTime": 0.9, "FlipAngle": 9}
_COLUMNS = {
    "diagnosis": {"Description": "Clinical diagnosis",
                  "Levels": {"CN": "cognitively normal", "MCI": "mild cognitive impairment",
                             "AD": "Alzheimer's disease"}},
    "age": {"Description": "Age", "Units": "year"},
}


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _write_tsv(path: Path, header: list[str], rows) -> None:
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_metadata(root: Path, parts: list[Participant], visits: list[str], options: dict) -> None:
    """Write the dataset-level files and the per-subject ``sessions.tsv`` tables."""
    desc = ", ".join(f"{k}={v}" for k, v in options.items())
    _write_json(root / "dataset_description.json", {
        "Name": f"neurodl synthetic T1w phantoms ({options['kind']})",
        "BIDSVersion": "1.10.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["neurodl developers"],
        "GeneratedBy": [{"Name": "neurodl-generate", "Version": __version__,
                         "Description": desc}],
    })
    (root / "README").write_text(_README.format(desc=desc), encoding="utf-8")
    # A fixed date: the same options must give byte-identical datasets on any day.
    (root / "CHANGES").write_text(
        f"1.0.0 2025-01-01\n  - Generated by neurodl-generate {__version__} ({desc}).\n",
        encoding="utf-8")
    _write_tsv(root / "participants.tsv", ["participant_id", "diagnosis", "age", "sex"],
               [(f"sub-{p.label}", p.diagnosis, f"{p.age:.1f}", p.sex) for p in parts])
    _write_json(root / "participants.json", {
        "participant_id": {"Description": "Participant identifier"},
        "diagnosis": {**_COLUMNS["diagnosis"], "Description": "Diagnosis at the first visit"},
        "age": {**_COLUMNS["age"], "Description": "Age at the first visit"},
        "sex": {"Description": "Sex", "Levels": {"M": "male", "F": "female"}},
    })
    if not visits:
        return
    _write_json(root / "sessions.json", {
        "session_id": {"Description": "Visit: months since the baseline visit"},
        "age": {**_COLUMNS["age"], "Description": "Age at the visit"},
        "diagnosis": {**_COLUMNS["diagnosis"], "Description": "Diagnosis at the visit"},
    })
    for p in parts:
        rows = [(f"ses-{v}", f"{p.age + s:.1f}", p.session_dx[s]) for s, v in enumerate(visits)]
        _write_tsv(root / f"sub-{p.label}" / f"sub-{p.label}_sessions.tsv",
                   ["session_id", "age", "diagnosis"], rows)


_README = """# neurodl synthetic T1w head phantoms

Synthetic raw BIDS dataset made by `neurodl-generate` for demonstrations, tests and benchmarks.
It holds no data from real people.

Each image is a three-dimensional T1-weighted-like head phantom (scalp, fat, skull, CSF, grey
and white matter, ventricles, hippocampi, neck) with a smooth bias field and Rician noise,
sampled on voxel grids of varied axis order, obliquity and voxel size.

Classes (`diagnosis` in participants.tsv, per visit in `sub-*_sessions.tsv`):
CN and AD, balanced; with several visits a few CN participants convert to MCI or AD.

- trivial: the AD brain has a darker left hemisphere.
- random: labels are unrelated to the images (nothing can be learnt).
- shepplogan: AD brains have smaller hippocampi and larger ventricles.

Options: {desc}.
"""
