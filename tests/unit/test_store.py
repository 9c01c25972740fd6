"""The tensor store: names, sidecars, up-to-date checks, the derivative's description files."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from bidsapp_dl.bids.index import ImageRecord
from bidsapp_dl.extract import store
from bidsapp_dl.maps.io import atomic_path, write_json


def record(root: Path, rel: str, **entities) -> ImageRecord:
    return ImageRecord(root / rel, "raw", root, entities)


def test_output_name_keeps_source_entities_and_replaces_desc(tmp_path):
    r = record(tmp_path, "sub-01/ses-M000/anat/sub-01_ses-M000_acq-mprage_run-2_T1w.nii.gz",
               subject="01", session="M000", datatype="anat", suffix="T1w")
    tensor, side = store.tensor_paths(tmp_path / "out", r)
    assert tensor == (tmp_path / "out/sub-01/ses-M000/anat/"
                      "sub-01_ses-M000_acq-mprage_run-2_desc-tensor_T1w.npy")
    assert side == tensor.with_suffix(".json")
    d = ImageRecord(tmp_path / "fmriprep/sub-02/anat/sub-02_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii",
                    "fmriprep", tmp_path / "fmriprep",
                    {"subject": "02", "datatype": "anat", "space": "MNI152NLin2009cAsym"})
    tensor, _ = store.tensor_paths(tmp_path / "out", d)
    assert tensor.relative_to(tmp_path / "out").as_posix() == (
        "sub-02/anat/sub-02_space-MNI152NLin2009cAsym_desc-tensor_T1w.npy")
    assert d.uri == "bids:fmriprep:sub-02/anat/sub-02_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii"


def test_tensor_round_trip_with_numpy_alone(tmp_path):
    data = np.random.default_rng(0).random((5, 6, 7), dtype=np.float32).astype(np.float16)
    path = tmp_path / "a" / "x.npy"
    store.write_tensor(path, data)
    mapped = np.load(path, mmap_mode="r")
    assert isinstance(mapped, np.memmap) and mapped.dtype == np.float16
    np.testing.assert_array_equal(mapped, data)
    assert list(path.parent.iterdir()) == [path]  # no temporary file left


def _direct_io_works(folder: Path) -> bool:
    try:
        fd = os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    except (AttributeError, OSError):
        return False
    os.close(fd)
    (folder / "probe").unlink()
    return True


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int16])
def test_aligned_tensors_go_by_direct_io_and_read_back_as_any_npy(tmp_path, monkeypatch, dtype):
    """An array from empty_aligned is written by direct I/O where the file system allows it:
    the same file, byte for byte, as the usual write of the same voxels from memory that is not
    aligned, readable by np.load (mapped too), its voxels one page into the file. A file
    system that refuses direct I/O gets the usual write."""
    rng = np.random.default_rng(1)
    aligned = store.empty_aligned((37, 41, 29), dtype)  # not a whole number of blocks
    aligned[...] = rng.normal(0, 100, aligned.shape).astype(dtype)
    assert aligned.ctypes.data % store.ALIGN == 0 and aligned.flags.c_contiguous
    buffer = np.empty(aligned.nbytes + store.ALIGN, np.uint8)
    skew = next(k for k in (8, 16, 24) if (buffer.ctypes.data + k) % store.ALIGN)
    unaligned = buffer[skew:skew + aligned.nbytes].view(dtype).reshape(aligned.shape)
    unaligned[...] = aligned
    taken = []
    original = store._write_direct
    monkeypatch.setattr(store, "_write_direct", lambda *a: taken.append(original(*a)) or taken[-1])
    digest = store.write_tensor(tmp_path / "a.npy", aligned)
    assert store.write_tensor(tmp_path / "b.npy", unaligned) == digest
    assert taken == [_direct_io_works(tmp_path), False]
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert mapped.offset == store.ALIGN and mapped.dtype == dtype
    np.testing.assert_array_equal(mapped, aligned)
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    store.write_tensor(tmp_path / "c.npy", aligned)
    assert taken[-1] is False
    assert (tmp_path / "c.npy").read_bytes() == (tmp_path / "a.npy").read_bytes()


def test_data_hash_depends_on_content_dtype_and_shape():
    a = np.zeros((4, 4, 4), np.float32)
    assert store.data_sha256(a) == store.data_sha256(a.copy())
    assert store.data_sha256(a) != store.data_sha256(a.astype(np.float16))
    assert store.data_sha256(a) != store.data_sha256(a.reshape(8, 2, 4))
    b = a.copy()
    b[1, 2, 3] = 1
    assert store.data_sha256(a) != store.data_sha256(b)


def test_up_to_date_needs_same_source_same_params_and_a_whole_tensor(tmp_path):
    r = record(tmp_path, "sub-01/anat/sub-01_T1w.nii.gz", subject="01", datatype="anat")
    tensor, side = store.tensor_paths(tmp_path, r)
    data = np.ones((4, 5, 6), np.float32)
    params = {"voxel_size": 1.0}
    store.write_tensor(tensor, data)
    write_json(side, store.sidecar(r, "abc", data, np.eye(4), params, {}, 0.1))
    assert store.is_up_to_date(tensor, side, "abc", params)
    assert not store.is_up_to_date(tensor, side, "abd", params)
    assert not store.is_up_to_date(tensor, side, "abc", {"voxel_size": 2.0})
    tensor.write_bytes(tensor.read_bytes()[:50])  # a truncated tensor
    assert not store.is_up_to_date(tensor, side, "abc", params)
    tensor.unlink()
    assert not store.is_up_to_date(tensor, side, "abc", params)


def test_sidecar_records_provenance(tmp_path):
    r = record(tmp_path, "sub-01/anat/sub-01_T1w.nii.gz", subject="01", datatype="anat",
               extension=".nii.gz")
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    meta = store.sidecar(r, "f" * 64, np.zeros((2, 3, 4), np.float32), aff, {"p": 1}, {"i": 2}, 1)
    assert meta["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]
    assert meta["Shape"] == [2, 3, 4] and meta["DataType"] == "float32"
    assert meta["VoxelSize"] == [2.0, 2.0, 2.0]
    assert meta["Affine"][0][0] == 2.0
    assert meta["Preprocessing"] == {"p": 1} and meta["SourceSHA256"] == "f" * 64
    assert "extension" not in meta["Entities"]
    json.dumps(meta)


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def _prepare(args):
    out, bids = args
    store.prepare_output(Path(out), Path(bids), [])
    return True


def test_description_files_written_safely_by_six_processes(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "Study",
                                                               "BIDSVersion": "1.10.0"}))
    out = bids / "derivatives" / "neurodl"
    (out).mkdir(parents=True)
    (out / ".bidsignore").write_text("extra/\n")
    with mp.get_context("fork").Pool(6) as pool:
        assert all(pool.map(_prepare, [(str(out), str(bids))] * 12))
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "neurodl"
    assert len(desc["GeneratedBy"]) == 1
    assert desc["Name"] == "neurodl - Study"
    assert desc["DatasetLinks"]["raw"] == "../.."
    lines = (out / ".bidsignore").read_text().splitlines()
    assert lines[0] == "extra/" and sorted(lines[1:]) == sorted(store.BIDSIGNORE)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
