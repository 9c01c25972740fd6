"""The tensor store: one uncompressed ``.npy`` per image and its JSON sidecar, in a derivative.

The ``.npy`` format needs nothing but numpy to read (``np.load(path, mmap_mode="r")``) and is
memory-mapped at training time. The sidecar says where the tensor came from and how it was made.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..bids.index import ImageRecord
from ..maps.io import atomic_path, folder_lock, read_json, write_json, write_text

DESC = "tensor"
TENSOR_EXT = ".npy"
# tensors and their sidecars are not BIDS data files: the validator must not judge them
BIDSIGNORE = [f"*_desc-{DESC}_*", "*.npy", "logs", "maps", "*.html", "qc"]
README = """# neurodl derivative

Written by neurodl. Each selected input image was converted once into an uncompressed numpy
array (`*_desc-tensor_<suffix>.npy`, axes X Y Z) with a JSON sidecar giving its source (BIDS URI
and SHA-256), shape, affine, voxel size and every preprocessing parameter. Read a tensor with
`numpy.load(path, mmap_mode="r")`. Trained models are under `maps/`, run logs under `logs/`.
"""


def output_stem(record: ImageRecord) -> tuple[Path, str]:
    """Relative folder and file stem: the source entities, ``desc-tensor``, the source suffix."""
    name = record.path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    *entities, suffix = name.split("_")
    kept = [e for e in entities if not e.startswith("desc-")]
    folder = Path(f"sub-{record.subject}")
    if record.session is not None:
        folder /= f"ses-{record.session}"
    folder /= record.entities.get("datatype", "anat")
    return folder, "_".join([*kept, f"desc-{DESC}", suffix])


def tensor_paths(output_dir: Path, record: ImageRecord) -> tuple[Path, Path]:
    """(tensor, sidecar) paths of one image."""
    folder, stem = output_stem(record)
    base = output_dir / folder / stem
    return base.with_name(stem + TENSOR_EXT), base.with_name(stem + ".json")


def dseg_paths(output_dir: Path, record: ImageRecord) -> tuple[Path, Path]:
    """(tensor, sidecar) paths of an image's segmentation on the image tensor's grid."""
    return dseg_beside(tensor_paths(output_dir, record)[0])


def dseg_beside(tensor: Path) -> tuple[Path, Path]:
    """(tensor, sidecar) of the segmentation that goes with the image tensor ``tensor``."""
    stem = tensor.name[: -len(TENSOR_EXT)].rsplit("_", 1)[0] + "_dseg"
    return tensor.with_name(stem + TENSOR_EXT), tensor.with_name(stem + ".json")


def data_sha256(array: np.ndarray) -> str:
    """Hash of the stored voxels (dtype and shape included): same content, same hash."""
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def is_up_to_date(tensor: Path, sidecar: Path, source_sha256: str | None, params: dict) -> bool:
    """True when both files exist and were made from the same source with the same parameters
    (``source_sha256=None``: from any source)."""
    meta = read_json(sidecar)
    if not meta or not tensor.is_file():
        return False
    if source_sha256 is not None and meta.get("SourceSHA256") != source_sha256:
        return False
    if meta.get("Preprocessing") != params:
        return False
    # a tensor of the wrong size cannot be the one the sidecar describes
    shape, dtype = meta.get("Shape"), meta.get("DataType")
    try:
        expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    except TypeError:
        return False
    return tensor.stat().st_size >= expected


# the .npy header is padded to this size, so that the voxels start on a disk block and a page
ALIGN = 4096


def empty_aligned(shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts on an ``ALIGN`` boundary, which
    :func:`write_tensor` can send to the disk without a copy (direct I/O)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = -raw.__array_interface__["data"][0] % ALIGN  # (.ctypes builds ctypes objects)
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def npy_header(array: np.ndarray) -> bytes:
    """A ``.npy`` (version 1.0) header for ``array``, padded with spaces to ``ALIGN`` bytes."""
    fields = np.lib.format.header_data_from_array_1_0(array)
    text = "{" + "".join(f"{key!r}: {fields[key]!r}, " for key in sorted(fields)) + "}"
    magic = np.lib.format.magic(1, 0)
    room = ALIGN - len(magic) - 2 - 1  # the length field and the final newline
    if len(text) > room:  # pragma: no cover - a shape of hundreds of axes
        raise ValueError(f"a .npy header for shape {array.shape} does not fit in {ALIGN} bytes")
    text = text.ljust(room) + "\n"
    return magic + len(text).to_bytes(2, "little") + text.encode("latin1")


def write_tensor(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as ``.npy`` through to the disk; return its :func:`data_sha256`.

    The header is padded to ``ALIGN`` bytes (any ``.npy`` reader takes it), so the voxels of an
    array from :func:`empty_aligned` go to the disk by direct I/O: no copy into the page cache,
    whose pages a job writing thousands of tensors would otherwise have to allocate, fill and
    evict (the participant level does not read its tensors again). Where the file system
    refuses direct I/O, or the array is not aligned, the bytes are written the usual way and
    their cached pages dropped once on the disk. Written by Python either way: a full disk
    raises an OSError that says so (``ndarray.tofile``, which ``np.save`` uses, drops it).
    """
    array = np.ascontiguousarray(array)
    header = npy_header(array)
    body = memoryview(array.reshape(-1)).cast("B")
    # the bytes go to the disk (with direct I/O, mostly a wait on the device) while they are
    # hashed: the two take about as long, and both run outside the GIL
    writing = _writers().submit(_write_npy, path, header, body)
    try:
        digest = data_sha256(array)
    finally:
        writing.result()
    return digest


_WRITERS: tuple[int, ThreadPoolExecutor] | None = None
_WRITERS_LOCK = threading.Lock()


def _writers() -> ThreadPoolExecutor:
    """This process's threads for tensor writes (made again after a fork)."""
    global _WRITERS
    with _WRITERS_LOCK:
        if _WRITERS is None or _WRITERS[0] != os.getpid():
            _WRITERS = (os.getpid(), ThreadPoolExecutor(max_workers=4,
                                                        thread_name_prefix="neurodl-io"))
        return _WRITERS[1]


def _write_npy(path: Path, header: bytes, body: memoryview) -> None:
    with atomic_path(path) as tmp:
        if not _write_direct(tmp, header, body):
            with open(tmp, "wb") as fh:
                fh.write(header)
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
                drop_cached(fh.fileno())


def _write_direct(path: Path, header: bytes, body: memoryview) -> bool:
    """Write ``header`` and ``body`` to ``path`` with ``O_DIRECT`` and sync; False (nothing
    lost, the caller writes the usual way) where direct I/O is not possible here."""
    address = np.frombuffer(body, dtype=np.uint8).__array_interface__["data"][0] if len(body) else 0
    if not hasattr(os, "O_DIRECT") or address % ALIGN or len(header) % ALIGN:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # a file system without direct I/O (tmpfs, some FUSE)
            return False
        raise
    try:
        whole = len(body) - len(body) % ALIGN
        # the header and the last partial block go through aligned buffers of their own
        head, tail = empty_aligned((ALIGN,), np.uint8), empty_aligned((ALIGN,), np.uint8)
        head[:] = np.frombuffer(header, dtype=np.uint8)
        tail[:] = 0
        tail[: len(body) - whole] = np.frombuffer(body[whole:], dtype=np.uint8)
        for piece in [head.data, body[:whole]] + ([tail.data] if whole < len(body) else []):
            done = 0
            while done < len(piece):
                done += os.write(fd, piece[done:])
                if done % ALIGN and done < len(piece):  # pragma: no cover - a short write
                    return False
        os.ftruncate(fd, len(header) + len(body))
        os.fsync(fd)
        return True
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # direct I/O refused at the first write: no harm done
            return False
        raise
    finally:
        os.close(fd)


def drop_cached(fd: int) -> None:
    """Ask the kernel to forget the (clean) cached pages of ``fd``; a no-op where it cannot."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (AttributeError, OSError):  # pragma: no cover - not Linux, or a file system without
        pass


def sidecar(record: ImageRecord, source_sha256: str, array: np.ndarray, affine: np.ndarray,
            params: dict, info: dict, seconds: float,
            digest: str | None = None) -> dict[str, Any]:
    """The JSON sidecar of a tensor (``digest``: its :func:`data_sha256`, when known)."""
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return {
        "Description": "Preprocessed image stored as an uncompressed numpy array (.npy, C order, "
                       "axes X Y Z) for memory-mapped deep learning; Affine maps voxel "
                       "indices to world millimetres",
        "Sources": [record.uri],
        "SourceSHA256": source_sha256,
        "DataSHA256": digest or data_sha256(array),
        "Shape": list(array.shape),
        "DataType": array.dtype.name,
        "Affine": np.asarray(affine, dtype=float).round(6).tolist(),
        "VoxelSize": [round(float(z), 6) for z in zooms],
        "SkullStripped": False,
        "SpatialReference": "orig" if "space" not in record.entities else record.entities["space"],
        "Preprocessing": params,
        "PreprocessingInfo": info,
        "Entities": {k: v for k, v in record.entities.items() if k not in ("extension",)},
        "ExtractionSeconds": round(seconds, 3),
        "NeurodlVersion": __version__,
    }


def _dataset_links(bids_dir: Path, output_dir: Path, derivatives: list[Path]) -> dict[str, str]:
    def uri(target: Path) -> str:
        try:  # relative when the derivative lives inside the dataset: it moves with it
            return Path(os.path.relpath(target.resolve(), output_dir.resolve())).as_posix()
        except ValueError:
            return target.resolve().as_uri()

    from ..bids.index import _dataset_name

    links = {"raw": uri(bids_dir)}
    links.update({_dataset_name(d): uri(d) for d in derivatives})
    return links


def prepare_output(output_dir: Path, bids_dir: Path, derivatives: list[Path]) -> None:
    """Write dataset_description.json and .bidsignore; safe with many jobs at once."""
    output_dir.mkdir(parents=True, exist_ok=True)
    raw = read_json(bids_dir / "dataset_description.json") or {}
    generated = {"Name": "neurodl", "Version": __version__}
    container = os.environ.get("NEURODL_CONTAINER_TAG")
    if container:
        generated["Container"] = {"Type": "docker", "Tag": container}
    source = {"URL": _dataset_links(bids_dir, output_dir, [])["raw"]}
    if raw.get("DatasetDOI"):
        source["DOI"] = raw["DatasetDOI"]
    description = {
        "Name": f"neurodl - {raw.get('Name', bids_dir.name)}",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [source],
        "DatasetLinks": _dataset_links(bids_dir, output_dir, derivatives),
    }
    with folder_lock(output_dir):
        path = output_dir / "dataset_description.json"
        current = read_json(path)
        if current != description:
            if current and current.get("GeneratedBy"):
                # keep the history of versions that wrote into this derivative
                older = [g for g in current["GeneratedBy"] if g != generated]
                description["GeneratedBy"] = [generated, *older]
                description["DatasetLinks"] = {**current.get("DatasetLinks", {}),
                                               **description["DatasetLinks"]}
            if current != description:
                write_json(path, description)
        if not (output_dir / "README.md").exists():
            write_text(output_dir / "README.md", README)
        ignore = output_dir / ".bidsignore"
        lines = ignore.read_text().splitlines() if ignore.is_file() else []
        wanted = lines + [x for x in BIDSIGNORE if x not in lines]
        if wanted != lines:
            write_text(ignore, "\n".join(wanted) + "\n")
