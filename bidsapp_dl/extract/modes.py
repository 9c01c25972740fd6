"""Extractors: how one stored volume becomes training samples (image, patch, slice, roi).

A stored volume is a 3-D array of shape (X, Y, Z), usually a read-only memory map. Extractors
return channel-first samples that are views of it wherever the mode allows (image, patch, slice),
so that serving one sample never copies a whole image. ``extract`` runs once per sample per
epoch, so index tables are computed once per volume shape and cached.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import operator
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np

from bidsapp_dl.errors import DataError, UsageError

AXIS_NAMES = ("sagittal", "coronal", "axial")


def _volume_shape(shape: Iterable[int]) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"expected a 3-D volume of shape (X, Y, Z), found shape {shape}")
    return shape


def _integer(value: Any, name: str, minimum: int) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        raise UsageError(f"{name} must be an integer, found {value!r}") from None
    if number < minimum:
        raise UsageError(f"{name} must be at least {minimum}, found {number}")
    return number


def _out_of_range(i: Any, n: int, what: str) -> IndexError:
    return IndexError(f"{what} index {i!r} out of range: this volume has {n} (0 to {n - 1})")


class Extractor(ABC):
    """Turns one (X, Y, Z) volume into ``n_samples`` channel-first samples."""

    mode: str

    @abstractmethod
    def n_samples(self, shape: tuple[int, int, int]) -> int:
        """Number of samples a volume of this shape gives."""

    @abstractmethod
    def sample_shape(self, shape: tuple[int, int, int]) -> tuple[int, ...]:
        """Channel-first shape of one sample of a volume of this shape."""

    @abstractmethod
    def extract(self, volume: np.ndarray, i: int) -> np.ndarray:
        """Sample ``i`` (0-based) of ``volume``; IndexError when out of range."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-ready description of the extractor, recorded in the MAPS."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "mode")
        return f"{type(self).__name__}({args})"


class ImageExtractor(Extractor):
    """The whole volume as one sample of shape (1, X, Y, Z), a view."""

    mode = "image"

    def n_samples(self, shape: tuple[int, int, int]) -> int:
        _volume_shape(shape)
        return 1

    def sample_shape(self, shape: tuple[int, int, int]) -> tuple[int, ...]:
        return (1, *_volume_shape(shape))

    def extract(self, volume: np.ndarray, i: int) -> np.ndarray:
        if i != 0:
            raise _out_of_range(i, 1, "image")
        return volume[None]

    def params(self) -> dict[str, Any]:
        return {"mode": "image"}


class PatchExtractor(Extractor):
    """Cubic patches of side ``patch_size`` every ``stride`` voxels on each axis.

    Per axis ``(dim - patch_size) // stride + 1`` patches, voxels past the last one dropped;
    patch ``i`` is numbered in C order over the (x, y, z) grid, as ClinicaDL's ``unfold``.
    """

    mode = "patch"

    def __init__(self, patch_size: int = 50, stride: int = 50) -> None:
        self.patch_size = _integer(patch_size, "patch_size", 1)
        self.stride = _integer(stride, "stride", 1)
        self._origins: dict[tuple[int, ...], list[tuple[int, int, int]]] = {}
        self._indexes: dict[tuple[int, ...], list[tuple]] = {}

    def _table(self, shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
        origins = self._origins.get(shape)
        if origins is None:
            dims = _volume_shape(shape)
            size = self.patch_size
            if size > min(dims):
                raise UsageError(
                    f"patch_size {size} is larger than the volume {dims}: "
                    f"choose a patch_size of at most {min(dims)}"
                )
            starts = [range(0, dim - size + 1, self.stride) for dim in dims]
            origins = list(itertools.product(*starts))
            self._indexes[shape] = [
                (None, *(slice(o, o + size) for o in origin)) for origin in origins
            ]
            self._origins[shape] = origins
        return origins

    def grid_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Number of patches along x, y and z."""
        dims = _volume_shape(shape)
        self._table(dims)
        return tuple((dim - self.patch_size) // self.stride + 1 for dim in dims)

    def patch_origin(self, shape: tuple[int, int, int], i: int) -> tuple[int, int, int]:
        """Voxel (x, y, z) where patch ``i`` starts, to place it back in the volume."""
        origins = self._table(tuple(shape))
        if not 0 <= i < len(origins):
            raise _out_of_range(i, len(origins), "patch")
        return origins[i]

    def n_samples(self, shape: tuple[int, int, int]) -> int:
        return len(self._table(tuple(shape)))

    def sample_shape(self, shape: tuple[int, int, int]) -> tuple[int, ...]:
        self._table(tuple(shape))
        return (1, self.patch_size, self.patch_size, self.patch_size)

    def extract(self, volume: np.ndarray, i: int) -> np.ndarray:
        indexes = self._indexes.get(volume.shape)
        if indexes is None:
            self._table(volume.shape)
            indexes = self._indexes[volume.shape]
        if not 0 <= i < len(indexes):
            raise _out_of_range(i, len(indexes), "patch")
        return volume[indexes[i]]

    def params(self) -> dict[str, Any]:
        return {"mode": "patch", "patch_size": self.patch_size, "stride": self.stride}


class SliceExtractor(Extractor):
    """2-D slices along ``axis`` (0 sagittal, 1 coronal, 2 axial), some discarded at each end.

    ``channels="single"`` gives (1, H, W) views. ``channels="rgb"`` gives (3, H, W) arrays whose
    three channels are the same memory (``np.broadcast_to``, channel stride 0): they are
    read-only, so copy one (``np.array(sample)``) before modifying it in place.
    """

    mode = "slice"

    def __init__(
        self,
        axis: int = 0,
        discarded_slices: int | Sequence[int] = (0, 0),
        channels: Literal["single", "rgb"] = "single",
    ) -> None:
        axis = _integer(axis, "slice axis", 0)
        if axis > 2:
            raise UsageError(f"slice axis must be 0 (sagittal), 1 (coronal) or 2 (axial): {axis}")
        pair = np.atleast_1d(np.asarray(discarded_slices, dtype=object)).tolist()
        if len(pair) not in (1, 2):
            raise UsageError(f"discarded_slices takes 1 or 2 integers, found {pair}")
        if channels not in ("single", "rgb"):
            raise UsageError(f"slice channels must be 'single' or 'rgb', found {channels!r}")
        self.axis = axis
        self.discarded_slices = tuple(_integer(n, "discarded_slices", 0) for n in pair * 2)[:2]
        self.channels = channels
        self._tables: dict[tuple[int, ...], tuple[list[tuple], tuple[int, ...] | None]] = {}

    def _table(self, shape: tuple[int, ...]) -> tuple[list[tuple], tuple[int, ...] | None]:
        table = self._tables.get(shape)
        if table is None:
            dims = _volume_shape(shape)
            begin, end = self.discarded_slices
            n = dims[self.axis] - begin - end
            if n < 1:
                raise UsageError(
                    f"discarding {begin} + {end} slices leaves no {AXIS_NAMES[self.axis]} slice "
                    f"of a volume with {dims[self.axis]} on axis {self.axis}"
                )
            # One index tuple per slice: None adds the channel axis, the integer drops the axis.
            lead = (None,) + (slice(None),) * self.axis
            indexes = [(*lead, begin + j) for j in range(n)]
            plane = tuple(d for a, d in enumerate(dims) if a != self.axis)
            table = self._tables[shape] = (indexes, (3, *plane) if self.channels == "rgb" else None)
        return table

    def slice_position(self, shape: tuple[int, int, int], i: int) -> int:
        """Position along the axis of slice ``i`` (counting the discarded ones)."""
        n = self.n_samples(shape)
        if not 0 <= i < n:
            raise _out_of_range(i, n, "slice")
        return self.discarded_slices[0] + i

    def n_samples(self, shape: tuple[int, int, int]) -> int:
        return len(self._table(tuple(shape))[0])

    def sample_shape(self, shape: tuple[int, int, int]) -> tuple[int, ...]:
        self._table(tuple(shape))
        plane = tuple(d for a, d in enumerate(shape) if a != self.axis)
        return (3 if self.channels == "rgb" else 1, *plane)

    def extract(self, volume: np.ndarray, i: int) -> np.ndarray:
        table = self._tables.get(volume.shape) or self._table(volume.shape)
        indexes, rgb_shape = table
        if not 0 <= i < len(indexes):
            raise _out_of_range(i, len(indexes), "slice")
        view = volume[indexes[i]]
        return view if rgb_shape is None else np.broadcast_to(view, rgb_shape)

    def params(self) -> dict[str, Any]:
        return {
            "mode": "slice",
            "axis": self.axis,
            "discarded_slices": list(self.discarded_slices),
            "channels": self.channels,
        }


_EXTRACTORS: dict[str, type[Extractor]] = {
    "image": ImageExtractor,
    "patch": PatchExtractor,
    "slice": SliceExtractor,
}


def make_extractor(mode: str, **params: Any) -> Extractor:
    """Build the extractor of ``mode`` ("image", "patch", "slice" or "roi") from its parameters.

    ``make_extractor(**extractor.params())`` rebuilds image, patch and slice extractors.
    """
    from .roi import RoiExtractor  # roi needs nibabel: imported only when asked for

    cls = {**_EXTRACTORS, "roi": RoiExtractor}.get(mode)
    if cls is None:
        close = difflib.get_close_matches(str(mode), [*_EXTRACTORS, "roi"], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown mode {mode!r}: choose one of {[*_EXTRACTORS, 'roi']}{hint}")
    try:
        inspect.signature(cls).bind(**params)
    except TypeError as err:
        raise UsageError(f"bad parameters for {mode} mode {sorted(params)}: {err}") from None
    return cls(**params)
