"""One Dataset for every mode: samples cut from memory-mapped ``.npy`` tensors.

The participant level stored each image once, uncompressed. Here a volume is opened with
``np.load(path, mmap_mode="r")`` the first time one of its samples is asked for, kept open by
the process that asked (each DataLoader worker maps its own), and an extractor cuts the sample
out of the map: serving a 50³ patch reads 50³ voxels, not the whole image. In image mode,
where the sample is the whole volume, the file is read straight into the sample's array
instead: the same single copy, and no map left behind to hold the file's pages.
"""

from __future__ import annotations

import os
import resource
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pandas as pd
import torch

from bidsapp_dl.errors import BadImageError, DataError, InputMissingError, UsageError

from .augment import Augment

TASKS = ("classification", "regression", "reconstruction")


MAPPED_BYTES = 64 * 2**20


def _max_open_maps(volume_bytes: int = 0) -> int:
    """How many volumes stay mapped at once.

    Each open map holds a file descriptor (stay well below the process limit), and the pages
    it has read count in the process's resident memory: keep about ``MAPPED_BYTES`` mapped,
    so memory does not grow with the number of images.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    by_files = 4096 if soft == resource.RLIM_INFINITY else max(16, min(4096, soft // 4))
    by_bytes = max(4, MAPPED_BYTES // max(int(volume_bytes), 1))
    return min(by_files, by_bytes)


def read_npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file, from its header only (no voxel is read)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:  # newer header versions: let numpy parse them, still without reading data
                mapped = np.load(path, mmap_mode="r", allow_pickle=False)
                shape, dtype = mapped.shape, mapped.dtype
                del mapped
    except FileNotFoundError:
        raise InputMissingError(f"tensor {path} does not exist: run the participant level") from None
    except (OSError, ValueError) as err:
        raise BadImageError(f"cannot read the .npy header of {path}: {err}") from err
    return tuple(int(d) for d in shape), np.dtype(dtype)


def _relative(value: Any, row: int, column: str) -> PurePath:
    path = PurePath(str(value))
    if not str(value) or path.is_absolute() or ".." in path.parts:
        raise DataError(
            f"row {row}, column {column!r}: expected a path relative to the output folder, "
            f"found {value!r}"
        )
    return path


class TensorDataset(torch.utils.data.Dataset):
    """Samples of stored tensors, numbered image by image.

    Parameters
    ----------
    root
        Folder the ``tensor`` paths of ``table`` are relative to (OUTPUT_DIR).
    table
        One row per image: ``tensor`` and, unless ``task`` is reconstruction, ``label``.
        A ``dseg`` column is ignored here (per-subject ROIs belong to the extractor).
    extractor
        A ``bidsapp_dl.extract`` extractor; every image must give the same sample shape.
    task
        "classification", "regression" or "reconstruction" (the target is the input).
    label_code
        Class name to index; by default the sorted labels of ``table``. Pass the training
        set's code to validation and test sets so that indices agree.
    augment
        Applied to each sample when given (training only).
    cache
        Load every volume into memory at construction instead of mapping it.

    Items are dicts: ``image`` (float32, channel-first), ``label`` (int64 class index, float32
    value, or the image itself), ``image_index`` (row of ``table``), ``sample_index``. An item
    may also be asked for as ``dataset[(i, seed)]``: the augmentation of that item then draws
    from a generator seeded with ``seed``, which makes it independent of worker processes.
    """

    def __init__(self, root: Path, table: pd.DataFrame, extractor, task: str,
                 label_code: Mapping[str, int] | None = None, augment: Augment | None = None,
                 cache: bool = False) -> None:
        if task not in TASKS:
            raise UsageError(f"unknown task {task!r}: choose one of {list(TASKS)}")
        if "tensor" not in table.columns:
            raise DataError(f"the image table has no 'tensor' column; columns: {list(table.columns)}")
        if len(table) == 0:
            raise DataError("the image table is empty: no image to train or evaluate on")
        self.root = Path(root)
        self.extractor = extractor
        self.task = task
        self.augment = augment
        self.cache = bool(cache)
        self.paths = [self.root / _relative(v, r, "tensor") for r, v in enumerate(table["tensor"])]
        self.shapes: list[tuple[int, ...]] = []
        self.dtypes: list[np.dtype] = []
        for path in self.paths:
            shape, dtype = read_npy_header(path)
            if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
                raise DataError(f"tensor {path} holds {dtype} values: expected float32 or float16")
            self.shapes.append(shape)
            self.dtypes.append(dtype)
        self._sample_shape, counts = self._check_shapes()
        self._counts = counts
        self._ends = np.cumsum(counts)
        self._starts = self._ends - counts
        self.label_code, self._labels = self._encode_labels(table, label_code)
        self._volumes: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # the maps are shared by the loader's threads
        self._pid = os.getpid()
        largest = max(int(np.prod(shape)) * dtype.itemsize
                      for shape, dtype in zip(self.shapes, self.dtypes))
        self._max_open = len(self.paths) if self.cache else _max_open_maps(largest)
        # a sample that is the whole volume is read, not mapped (nothing to keep open)
        self._whole = getattr(extractor, "mode", None) == "image" and not self.cache
        if self.cache:
            for k, path in enumerate(self.paths):
                self._volumes[k] = np.load(path, allow_pickle=False)

    # construction ------------------------------------------------------------------------------
    def _check_shapes(self) -> tuple[tuple[int, ...], np.ndarray]:
        per_shape: dict[tuple[int, ...], tuple[int, tuple[int, ...], int]] = {}
        counts = np.empty(len(self.paths), dtype=np.int64)
        for k, shape in enumerate(self.shapes):
            if shape not in per_shape:
                if len(shape) != 3:
                    raise DataError(f"tensor {self.paths[k]} has shape {shape}: expected (X, Y, Z)")
                n = int(self.extractor.n_samples(shape))
                per_shape[shape] = (n, tuple(self.extractor.sample_shape(shape)), k)
            counts[k] = per_shape[shape][0]
        samples = {entry[1]: entry[2] for entry in per_shape.values()}
        if len(samples) > 1:
            (first, a), (second, b) = list(samples.items())[:2]
            raise DataError(
                f"images give samples of different shapes: {self.paths[a]} (volume "
                f"{self.shapes[a]}) gives {first}, {self.paths[b]} (volume {self.shapes[b]}) gives "
                f"{second}; preprocess every image to one shape (or use a fixed ROI box_shape)"
            )
        return next(iter(samples)), counts

    def _encode_labels(self, table: pd.DataFrame, label_code: Mapping[str, int] | None
                       ) -> tuple[dict[str, int] | None, np.ndarray | None]:
        if self.task == "reconstruction":
            return None, None
        if "label" not in table.columns:
            raise DataError(f"{self.task} needs a 'label' column; columns: {list(table.columns)}")
        values = table["label"].to_numpy()
        missing = pd.isna(values)
        if missing.any():
            k = int(np.flatnonzero(missing)[0])
            raise DataError(f"image {self.paths[k]} (row {k}) has no label; "
                            f"{int(missing.sum())} image(s) lack one")
        if self.task == "regression":
            try:
                return None, values.astype(np.float32)
            except (TypeError, ValueError):
                bad = next(v for v in values if not _is_number(v))
                raise DataError(f"regression labels must be numbers, found {bad!r}") from None
        names = [str(v) for v in values]
        code = dict(label_code) if label_code is not None else {
            name: i for i, name in enumerate(sorted(set(names)))}
        unknown = [k for k, name in enumerate(names) if name not in code]
        if unknown:
            k = unknown[0]
            raise DataError(
                f"image {self.paths[k]} (row {k}) has label {names[k]!r}, which the label code "
                f"{code} does not know ({len(unknown)} image(s) with unknown labels)"
            )
        return code, np.array([code[name] for name in names], dtype=np.int64)

    # pickling: a DataLoader worker started by spawn maps the files again instead of
    # receiving a copy of every mapped volume
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        if not self.cache:
            state["_volumes"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # index mapping -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._ends[-1])

    @property
    def n_images(self) -> int:
        return len(self.paths)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Channel-first shape of every sample."""
        return self._sample_shape

    @property
    def samples_per_image(self) -> np.ndarray:
        """Number of samples of each image, in table order."""
        return self._counts.copy()

    def image_of(self, i):
        """Row of the table that sample(s) ``i`` come from (int or integer array)."""
        return self._locate(i)[0]

    def sample_of(self, i):
        """Index of sample(s) ``i`` within its image (int or integer array)."""
        return self._locate(i)[1]

    def _locate(self, i):
        n = len(self)
        if isinstance(i, (int, np.integer)):  # the per-sample path: no array round trip
            index = int(i) + n if i < 0 else int(i)
            if not 0 <= index < n:
                raise IndexError(f"sample index {i} out of range for a dataset of {n} samples")
            image = int(np.searchsorted(self._ends, index, side="right"))
            return image, index - int(self._starts[image])
        index = np.asarray(i, dtype=np.int64)
        index = np.where(index < 0, index + n, index)
        if np.any((index < 0) | (index >= n)):
            raise IndexError(f"sample index {i!r} out of range for a dataset of {n} samples")
        image = np.searchsorted(self._ends, index, side="right")
        sample = index - self._starts[image]
        if image.ndim == 0:
            return int(image), int(sample)
        return image, sample

    def sample_labels(self) -> np.ndarray:
        """Class index of every sample (classification only), without reading any image."""
        if self.task != "classification":
            raise UsageError(f"per-sample class labels exist for classification, not {self.task}")
        return np.repeat(self._labels, self._counts)

    # reading -----------------------------------------------------------------------------------
    def volume(self, k: int) -> np.ndarray:
        """Volume of image ``k``: a read-only memory map (or the cached array)."""
        if self._pid != os.getpid():  # a forked worker: its maps, and its lock, are its own
            self._lock = threading.Lock()
            self._pid = os.getpid()
            if not self.cache:
                self._volumes = OrderedDict()
        with self._lock:
            volume = self._volumes.get(k)
            if volume is None:
                try:
                    volume = np.load(self.paths[k], mmap_mode="r", allow_pickle=False)
                except FileNotFoundError:
                    raise InputMissingError(f"tensor {self.paths[k]} disappeared") from None
                if len(self._volumes) >= self._max_open:
                    self._volumes.popitem(last=False)
                self._volumes[k] = volume
            elif len(self._volumes) > 1 and not self.cache:
                self._volumes.move_to_end(k)
            return volume

    def _read(self, k: int) -> np.ndarray:
        """Volume of image ``k`` read from its file into a new array (image mode)."""
        try:
            return np.load(self.paths[k], allow_pickle=False)
        except FileNotFoundError:
            raise InputMissingError(f"tensor {self.paths[k]} disappeared") from None

    def __getitem__(self, key) -> dict[str, Any]:
        seed = None
        if isinstance(key, tuple):
            key, seed = key
        k, s = self._locate(key)
        if self._whole:  # read into an array of its own: no copy needed below
            sample = self.extractor.extract(self._read(k), s)
        else:
            sample = self.extractor.extract(self.volume(k), s)
        # one copy per sample, contiguous and writable; float16 is widened by torch, whose
        # vectorised conversion is several times faster than numpy's
        if self._whole and sample.dtype == np.float32 and sample.flags.c_contiguous:
            image = torch.from_numpy(sample)
        elif sample.dtype == np.float16:
            image = torch.from_numpy(np.array(sample, order="C")).float()
        else:
            image = torch.from_numpy(np.array(sample, dtype=np.float32, order="C"))
        if self.augment is not None:
            generator = None if seed is None else torch.Generator().manual_seed(int(seed))
            image = self.augment(image, generator=generator)
        if self.task == "classification":
            label = torch.tensor(self._labels[k], dtype=torch.int64)
        elif self.task == "regression":
            label = torch.tensor(self._labels[k], dtype=torch.float32)
        else:
            label = image
        return {"image": image, "label": label, "image_index": k, "sample_index": s}

    def __repr__(self) -> str:
        return (f"TensorDataset({self.n_images} images, {len(self)} samples of shape "
                f"{self.sample_shape}, task={self.task!r}, extractor={self.extractor!r})")


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
