"""A catalogue of bad inputs: each one gives its exit code and a one-line message that says what.

Each case copies a small generated dataset, damages it, runs the command line once and checks
the exit code, the words the message must contain, and that nothing went unexpected (no
traceback, no exit 1). Inputs that are odd but valid (LPS or oblique grids, a symlinked subject,
BOM and CRLF in tables...) must work: exit 0, and the output passes the BIDS validator.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsapp_dl.generate import generate_dataset

from ..conftest import ROOT, run_script, validation_errors

TINY = ["--voxel-size", "8", "--target-shape", "24", "28", "24"]
PARTICIPANT = ["participant", *TINY, "--nprocs", "1"]
SPLIT = ["group", "--stages", "split", "--n-splits", "2", "--test-size", "0", "--seed", "1"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Two participants, one session, coarse images: the input of the participant-level cases."""
    root = tmp_path_factory.mktemp("raw") / "bids"
    generate_dataset(root, kind="trivial", n_subjects=2, sessions=1, seed=1, voxel_size=8.0)
    return root


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Path:
    """Eight participants (4 CN, 4 AD), two sessions, tensors extracted; labels only in participants.tsv.

    The input of the group-level cases (split stage only: labels and splits, no training).
    """
    root = tmp_path_factory.mktemp("extracted") / "bids"
    generate_dataset(root, kind="trivial", n_subjects=8, sessions=2, seed=2, voxel_size=8.0)
    for table in root.glob("sub-*/sub-*_sessions.tsv"):  # the per-session diagnosis goes
        rows = [line.split("\t") for line in table.read_text().splitlines()]
        table.write_text("".join("\t".join(r[:2]) + "\n" for r in rows))
    run = run_script(root, root / "derivatives" / "neurodl", *PARTICIPANT, "--skip-bids-validation")
    assert run.returncode == 0, run.stderr
    return root


@dataclass
class Ctx:
    """What a case may change before the run: the paths and the extra arguments."""

    bids: Path
    out: Path
    tmp: Path
    args: list[str] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)   # run in a subprocess under this command
    cleanup: list[Callable[[], object]] = field(default_factory=list)

    def image(self, sub: str = "01") -> Path:
        return next((self.bids / f"sub-{sub}").rglob("*_T1w.nii*"))

    def table(self) -> Path:
        return self.bids / "participants.tsv"


@dataclass(frozen=True)
class Case:
    id: str
    base: str                       # "raw": participant level; "extracted": group level (split)
    damage: Callable[[Ctx], object]
    code: int
    words: tuple[str, ...] = ()     # all must appear in standard error
    validate: bool = False          # run the BIDS validator on BIDS_DIR (else --skip-bids-validation)
    check: Callable[[Ctx], object] | None = None   # more checks after a successful run


# --- damage: images ----------------------------------------------------------------------


def _replace_image(ctx: Ctx, data: np.ndarray, affine: np.ndarray | None = None,
                   name: str | None = None) -> Path:
    old = ctx.image()
    affine = nib.load(old).affine if affine is None else affine
    new = old.with_name(name) if name else old
    old.unlink()
    nib.save(nib.Nifti1Image(data, affine), new)
    return new


def _volume(ctx: Ctx) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(ctx.image())
    return img.get_fdata(dtype=np.float32), img.affine


def html_as_nii(ctx: Ctx) -> None:
    img = ctx.image()
    img.unlink()
    img.with_name("sub-01_T1w.nii").write_text(
        "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>\n")


def truncated(ctx: Ctx) -> None:
    img = ctx.image()
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])


def empty_file(ctx: Ctx) -> None:
    ctx.image().write_bytes(b"")


def gzip_named_nii(ctx: Ctx) -> None:
    img = ctx.image()
    data = img.read_bytes()  # .nii.gz bytes, now under a .nii name
    img.unlink()
    img.with_name("sub-01_T1w.nii").write_bytes(data)


def plain_nii(ctx: Ctx) -> None:
    img = ctx.image()
    data = gzip.decompress(img.read_bytes())
    img.unlink()
    img.with_name("sub-01_T1w.nii").write_bytes(data)


def four_d(ctx: Ctx) -> None:
    data, affine = _volume(ctx)
    _replace_image(ctx, np.stack([data] * 3, axis=-1), affine)


def two_d(ctx: Ctx) -> None:
    data, affine = _volume(ctx)
    _replace_image(ctx, np.ascontiguousarray(data[:, :, data.shape[2] // 2]), affine)


def all_zero(ctx: Ctx) -> None:
    data, affine = _volume(ctx)
    _replace_image(ctx, np.zeros_like(data), affine)


def all_nan(ctx: Ctx) -> None:
    data, affine = _volume(ctx)
    _replace_image(ctx, np.full_like(data, np.nan), affine)


def some_nan_inf(ctx: Ctx) -> None:
    data, affine = _volume(ctx)
    data[:2] = np.nan
    data[-2:] = np.inf
    data[:, :1] = -np.inf
    _replace_image(ctx, data, affine)


def constant(ctx: Ctx) -> None:
    data, affine = _volume(ctx)
    _replace_image(ctx, np.full_like(data, 7.0), affine)


def tiny_5x5x5(ctx: Ctx) -> None:
    rng = np.random.default_rng(0)
    _replace_image(ctx, rng.uniform(0, 100, (5, 5, 5)).astype(np.float32), np.diag([1.0, 1, 1, 1]))


def complex_data(ctx: Ctx) -> None:
    data, affine = _volume(ctx)
    _replace_image(ctx, data.astype(np.complex64), affine)


def singular_affine(ctx: Ctx) -> None:
    data, affine = _volume(ctx)
    flat = affine.copy()
    flat[:3, 0] = 0  # every voxel of an x row at the same place
    img = nib.Nifti1Image(data, None)
    img.set_sform(flat, code=1)
    img.set_qform(None, code=0)
    path = ctx.image()
    path.unlink()
    nib.save(img, path)


def lps(ctx: Ctx) -> None:
    img = nib.load(ctx.image())
    ornt = nib.orientations.axcodes2ornt(("L", "P", "S"))
    now = nib.orientations.io_orientation(img.affine)
    flipped = img.as_reoriented(nib.orientations.ornt_transform(now, ornt))
    assert nib.aff2axcodes(flipped.affine) == ("L", "P", "S")
    path = ctx.image()
    path.unlink()
    nib.save(nib.Nifti1Image(np.asarray(flipped.dataobj), flipped.affine), path)


def oblique(ctx: Ctx) -> None:
    data, affine = _volume(ctx)
    a, b = np.radians(25), np.radians(-15)
    rz = np.array([[np.cos(a), -np.sin(a), 0, 0], [np.sin(a), np.cos(a), 0, 0], [0, 0, 1, 0],
                   [0, 0, 0, 1]])
    rx = np.array([[1, 0, 0, 0], [0, np.cos(b), -np.sin(b), 0], [0, np.sin(b), np.cos(b), 0],
                   [0, 0, 0, 1]])
    _replace_image(ctx, data, rz @ rx @ affine)


def one_tensor(ctx: Ctx) -> None:
    tensors = sorted(ctx.out.rglob("sub-01*_desc-tensor_T1w.npy"))
    assert len(tensors) == 1, tensors
    assert np.isfinite(np.load(tensors[0])).all()


def long_name(ctx: Ctx) -> None:
    img = ctx.image()
    acq = "x" * (255 - len("sub-01_acq-_T1w.nii.gz"))
    img.rename(img.with_name(f"sub-01_acq-{acq}_T1w.nii.gz"))
    assert len(ctx.image().name) == 255


def symlinked_subject(ctx: Ctx) -> None:
    elsewhere = ctx.tmp / "elsewhere"
    elsewhere.mkdir()
    shutil.move(ctx.bids / "sub-01", elsewhere / "sub-01")
    (ctx.bids / "sub-01").symlink_to(elsewhere / "sub-01", target_is_directory=True)


# --- damage: dataset layout, paths, options ----------------------------------------------


def no_description(ctx: Ctx) -> None:
    (ctx.bids / "dataset_description.json").unlink()


def no_bids_dir(ctx: Ctx) -> None:
    ctx.bids = ctx.tmp / "not-there"
    ctx.out = ctx.tmp / "out"


def output_inside_input(ctx: Ctx) -> None:
    ctx.out = ctx.bids / "neurodl"


def output_is_input(ctx: Ctx) -> None:
    ctx.out = ctx.bids


def output_under_a_file(ctx: Ctx) -> None:
    blocker = ctx.tmp / "a-file"
    blocker.write_text("not a folder\n")
    ctx.out = blocker / "out"


def output_read_only(ctx: Ctx) -> None:
    """An existing OUTPUT_DIR that cannot be written, even by root."""
    ro = ctx.tmp / "read-only"
    ro.mkdir()
    ctx.out = ro / "out"
    ro.chmod(0o555)
    ctx.cleanup.append(lambda: ro.chmod(0o755))
    if os.geteuid() != 0:
        return
    if subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode == 0:
        ctx.cleanup.insert(0, lambda: subprocess.run(["chattr", "-i", str(ro)]))
    else:  # no immutable flag here: a read-only bind mount in a private mount namespace
        ctx.prefix = ["unshare", "--mount", "sh", "-c",
                      f'mount --bind -o ro "{ro}" "{ro}" && exec "$@"', "sh"]
        return
    probe = ro / "probe"
    with pytest.raises(OSError):
        probe.mkdir()


def derivative_without_description(ctx: Ctx) -> None:
    deriv = ctx.tmp / "preproc"
    shutil.copytree(ctx.bids / "sub-01", deriv / "sub-01")
    ctx.args += ["--derivatives", str(deriv)]


def filter_file(query: dict) -> Callable[[Ctx], None]:
    def damage(ctx: Ctx) -> None:
        path = ctx.tmp / "filter.json"
        path.write_text(json.dumps(query))
        ctx.args += ["--bids-filter-file", str(path)]
    return damage


def bad_filter_json(ctx: Ctx) -> None:
    path = ctx.tmp / "filter.json"
    path.write_text('{"t1w": {"suffix": "T1w",}')
    ctx.args += ["--bids-filter-file", str(path)]


def args(*extra: str) -> Callable[[Ctx], None]:
    def damage(ctx: Ctx) -> None:
        ctx.args += list(extra)
    return damage


# --- damage: tables (group level) --------------------------------------------------------


def _rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def _write_rows(path: Path, rows: list[list[str]], end: str = "\n", encoding: str = "utf-8") -> None:
    path.write_bytes("".join("\t".join(r) + end for r in rows).encode(encoding))


def _edit(cell: Callable[[int, str, str], str]) -> Callable[[Ctx], None]:
    """Change participants.tsv cell by cell: cell(row number from 1, column name, value)."""
    def damage(ctx: Ctx) -> None:
        rows = _rows(ctx.table())
        header = rows[0]
        _write_rows(ctx.table(), [header] + [[cell(i, h, v) for h, v in zip(header, row)]
                                             for i, row in enumerate(rows[1:], start=1)])
    return damage


def _participants_of(ctx: Ctx, diagnosis: str) -> list[str]:
    return [r[0] for r in _rows(ctx.table())[1:] if r[1] == diagnosis]


def no_participants_tsv(ctx: Ctx) -> None:
    ctx.table().unlink()


def drop_column(name: str) -> Callable[[Ctx], None]:
    def damage(ctx: Ctx) -> None:
        rows = _rows(ctx.table())
        k = rows[0].index(name)
        _write_rows(ctx.table(), [r[:k] + r[k + 1:] for r in rows])
    return damage


def one_class(ctx: Ctx) -> None:
    ctx.args += ["--participant-label", *_participants_of(ctx, "CN")]


def bom_and_crlf(ctx: Ctx) -> None:
    rows = _rows(ctx.table())
    data = "".join("\t".join(r) + "\r\n" for r in rows)
    ctx.table().write_bytes(b"\xef\xbb\xbf" + data.encode())
    for table in ctx.bids.glob("sub-*/sub-*_sessions.tsv"):
        table.write_bytes(b"\xef\xbb\xbf" + table.read_bytes().replace(b"\n", b"\r\n"))


def duplicate_rows(ctx: Ctx, change: bool = False) -> None:
    rows = _rows(ctx.table())
    copy = list(rows[1])
    if change:
        copy[1] = "AD" if copy[1] == "CN" else "CN"
    _write_rows(ctx.table(), [*rows, copy])


def non_ascii(ctx: Ctx) -> None:
    names = {"CN": "Contrôle", "AD": "Démence_阿尔茨海默"}
    _edit(lambda i, h, v: names.get(v, v) if h == "diagnosis" else v)(ctx)


def non_utf8(ctx: Ctx) -> None:
    rows = _rows(ctx.table())
    rows = [[{"CN": "Contrôle"}.get(v, v) for v in r] for r in rows]
    _write_rows(ctx.table(), rows, encoding="latin-1")


def ragged_row(ctx: Ctx) -> None:
    rows = _rows(ctx.table())
    rows[3] = rows[3][:2]
    _write_rows(ctx.table(), rows)


def labels_only_in_sessions(ctx: Ctx) -> None:
    dx = {r[0]: r[1] for r in _rows(ctx.table())[1:]}
    drop_column("diagnosis")(ctx)
    for table in ctx.bids.glob("sub-*/sub-*_sessions.tsv"):
        rows = _rows(table)
        sub = table.name.split("_")[0]
        _write_rows(table, [rows[0] + ["diagnosis"]] + [r + [dx[sub]] for r in rows[1:]])


def age_89_plus(ctx: Ctx) -> None:
    table = ctx.bids / "sub-02" / "sub-02_sessions.tsv"
    rows = _rows(table)
    rows[2][1] = "89+"
    _write_rows(table, rows)
    ctx.args += ["--task", "regression", "--label", "age"]


def no_tensors(ctx: Ctx) -> None:
    ctx.out = ctx.bids / "derivatives" / "empty"


def labelled_from_sessions(ctx: Ctx) -> None:
    maps = json.loads((ctx.out / "maps" / "classification-diagnosis" / "maps.json").read_text())
    assert maps["label"]["source"] == "sessions.tsv"


def classes_kept(*classes: str) -> Callable[[Ctx], None]:
    def check(ctx: Ctx) -> None:
        maps = json.loads((ctx.out / "maps" / "classification-diagnosis" / "maps.json")
                          .read_text(encoding="utf-8"))
        assert sorted(maps["label"]["classes"]) == sorted(classes)
        assert maps["data"]["n_participants"] == 8
    return check


def images_kept(n: int) -> Callable[[Ctx], None]:
    def check(ctx: Ctx) -> None:
        maps = json.loads((ctx.out / "maps" / "classification-diagnosis" / "maps.json").read_text())
        assert maps["data"]["n_images"] == n
    return check


def _without_prefix(i: int, h: str, v: str) -> str:
    return v[len("sub-"):] if h == "participant_id" and i % 2 else v


P, G = "raw", "extracted"
SKIP = "--skip-bad-images"
CASES = [
    # --- the dataset and the command line --------------------------------------------------
    Case("no-dataset_description", P, no_description, 16,
         ("dataset_description.json", "--skip-bids-validation"), validate=True),
    Case("bids-dir-missing", P, no_bids_dir, 66, ("not-there", "does not exist", "mounted")),
    Case("unknown-analysis-level", P, args(), 17, ("participants", "did you mean 'participant'")),
    Case("participant-label-unknown", P, args("--participant-label", "99"), 66,
         ("sub-99", "not found", "sub-01, sub-02")),
    Case("participant-label-dotdot", P, args("--participant-label", "../01"), 64,
         ("'../01'", "letters and digits")),
    Case("participant-label-slash", P, args("--participant-label", "sub-01/anat"), 64,
         ("'sub-01/anat'", "letters and digits")),
    Case("session-label-unknown", P, args("--session-label", "M099"), 66,
         ("ses-M099", "not found", "--session-label")),
    Case("filters-select-nothing", P, filter_file({"t1w": {"acquisition": "nope"}}), 18,
         ("acquisition=nope", "--bids-filter-file")),
    Case("filter-file-bad-json", P, bad_filter_json, 64, ("filter.json", "not valid JSON")),
    Case("derivatives-without-description", P, derivative_without_description, 66,
         ("preproc", "no dataset_description.json", "GeneratedBy")),
    Case("output-inside-input", P, output_inside_input, 64, ("inside BIDS_DIR", "derivatives")),
    Case("output-is-input", P, output_is_input, 64, ("must not be BIDS_DIR", "derivatives")),
    Case("output-under-a-file", P, output_under_a_file, 73, ("a-file", "OUTPUT_DIR", "writable")),
    Case("output-read-only", P, output_read_only, 73, ("read-only", "OUTPUT_DIR", "writable")),
    # --- images --------------------------------------------------------------------------
    Case("html-saved-as-nii", P, html_as_nii, 65, ("sub-01_T1w.nii", "HTML", SKIP)),
    Case("truncated-nii-gz", P, truncated, 65, ("sub-01_T1w.nii.gz", "truncated", SKIP)),
    Case("empty-file", P, empty_file, 65, ("sub-01_T1w.nii.gz", "empty", SKIP)),
    Case("gzip-data-in-nii", P, gzip_named_nii, 0, check=one_tensor),
    Case("plain-nii", P, plain_nii, 0, check=one_tensor),
    Case("4d-image", P, four_d, 65, ("sub-01_T1w.nii.gz", "4-D", "3 volumes", SKIP)),
    Case("2d-image", P, two_d, 65, ("sub-01_T1w.nii.gz", "2-D", SKIP)),
    Case("all-zero-image", P, all_zero, 65, ("sub-01_T1w.nii.gz", "zero", SKIP)),
    Case("all-nan-image", P, all_nan, 65, ("sub-01_T1w.nii.gz", "no finite voxel", SKIP)),
    Case("some-nan-inf-voxels", P, some_nan_inf, 0, check=one_tensor),
    Case("constant-image", P, constant, 65, ("sub-01_T1w.nii.gz", "constant", SKIP)),
    Case("5x5x5-image", P, tiny_5x5x5, 65, ("sub-01_T1w.nii.gz", "covers only 5 x 5 x 5 mm", SKIP)),
    Case("complex-data", P, complex_data, 65, ("sub-01_T1w.nii.gz", "complex", SKIP)),
    Case("singular-affine", P, singular_affine, 65, ("sub-01_T1w.nii.gz", "affine", SKIP)),
    Case("lps-orientation", P, lps, 0, check=one_tensor),
    Case("oblique-orientation", P, oblique, 0, check=one_tensor),
    Case("very-long-file-name", P, long_name, 73, ("acq-xxx", "264 characters", "shorten")),
    Case("symlinked-subject", P, symlinked_subject, 0, validate=True, check=one_tensor),
    # --- labels and tables (group level) ------------------------------------------------
    Case("no-participants_tsv", G, no_participants_tsv, 66,
         ("'diagnosis'", "no participants.tsv", "sessions.tsv files have age")),
    Case("no-participants_tsv-participant-level", P, no_participants_tsv, 0, check=one_tensor),
    Case("label-column-misspelt", G, args("--label", "diagnosys"), 65,
         ("'diagnosys'", "did you mean 'diagnosis'", "--label")),
    Case("label-column-missing", G, drop_column("diagnosis"), 65,
         ("'diagnosis'", "participants.tsv has age, sex", "--label")),
    Case("participant_id-column-missing", G, drop_column("participant_id"), 65,
         ("participants.tsv", "'participant_id'")),
    Case("label-empty-for-some", G, _edit(lambda i, h, v: "n/a" if h == "diagnosis" and i < 3 else v),
         0, ("no value in column 'diagnosis'", "left out"), check=images_kept(12)),
    Case("label-empty-for-all", G, _edit(lambda i, h, v: "" if h == "diagnosis" else v), 65,
         ("no image has a usable value", "'diagnosis'")),
    Case("one-class-only", G, one_class, 65, ("single class 'CN'", "--label")),
    Case("more-folds-than-participants-per-class", G, args("--n-splits", "5"), 65,
         ("--n-splits",)),
    Case("participant-label-not-extracted", G, args("--participant-label", "99"), 66,
         ("sub-99", "participant level")),
    Case("no-tensors-extracted", G, no_tensors, 66, ("empty", "participant level first")),
    Case("bom-and-crlf", G, bom_and_crlf, 0, check=classes_kept("AD", "CN")),
    Case("ids-with-and-without-sub", G, _edit(_without_prefix), 0, check=classes_kept("AD", "CN")),
    Case("duplicate-rows-identical", G, duplicate_rows, 0, ("identical row",),
         check=classes_kept("AD", "CN")),
    Case("duplicate-rows-disagreeing", G, lambda ctx: duplicate_rows(ctx, change=True), 65,
         ("participants.tsv", "disagree", "diagnosis")),
    Case("89+-in-numeric-column", G, age_89_plus, 65,
         ("sub-02/ses-M012 '89+'", "sessions.tsv", "--drop-invalid-labels")),
    Case("non-ascii-values", G, non_ascii, 0, check=classes_kept("Contrôle", "Démence_阿尔茨海默")),
    Case("participants_tsv-not-utf8", G, non_utf8, 65, ("participants.tsv", "UTF-8")),
    Case("participants_tsv-ragged-row", G, ragged_row, 65, ("participants.tsv", "line 4", "cells")),
    Case("labels-only-in-sessions_tsv", G, labels_only_in_sessions, 0, check=labelled_from_sessions),
    Case("maps-name-with-dotdot", G, args("--maps-name", "../x"), 64, ("--maps-name", "../x")),
]


def _run(ctx: Ctx, argv: list[str], neurodl) -> tuple[int, str]:
    if not ctx.prefix:
        return neurodl(*argv)
    run = subprocess.run([*ctx.prefix, sys.executable, str(ROOT / "run.py"), *argv],
                         capture_output=True, text=True, timeout=300)
    if run.returncode == 0:
        assert validation_errors(Path(argv[1])) == []
    return run.returncode, run.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, request, tmp_path, neurodl):
    template = request.getfixturevalue(case.base)
    bids = tmp_path / "bids"
    shutil.copytree(template, bids, symlinks=True)
    ctx = Ctx(bids, bids / "derivatives" / "neurodl", tmp_path)
    try:
        case.damage(ctx)
        level = PARTICIPANT if case.base == P else SPLIT
        if case.id == "unknown-analysis-level":
            level = ["participants", *level[1:]]
        argv = [str(ctx.bids), str(ctx.out), *level, *ctx.args]
        if not case.validate:
            argv.append("--skip-bids-validation")
        code, err = _run(ctx, argv, neurodl)
    finally:
        for undo in ctx.cleanup:
            undo()
    assert "Traceback" not in err and "unexpected" not in err, err
    assert code == case.code, err
    for word in case.words:
        assert word in err, f"{word!r} not in:\n{err}"
    if ctx.out.is_dir():  # nothing left half-written
        assert not [p for p in ctx.out.rglob("*") if p.name.endswith(".tmp")]
    errors = [line for line in err.splitlines() if line.startswith("neurodl: error:")]
    if code:
        # one line that says what was wrong, and it is the last thing printed
        assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
        assert "; " in errors[0], f"no advice in: {errors[0]}"
    else:
        assert errors == [], err
        if case.check:
            case.check(ctx)
