"""Load one image and bring it onto a common grid and intensity scale.

``load_image`` turns every way a file can be unusable into one :class:`BadImageError` that names
the file. ``preprocess`` resamples onto a head-centred RAS+ grid in a single trilinear pass (so
reorientation, oblique axes, anisotropic voxels, cropping and padding cost one interpolation) and
normalises intensities over the head. Both are deterministic: same input, same bytes.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from scipy import ndimage

from bidsapp_dl.errors import BadImageError, InputMissingError, UsageError
from bidsapp_dl.extract.store import empty_aligned

try:  # compiled resampling and block sums (setup.py); numpy and scipy otherwise, same values
    from bidsapp_dl.extract import _kernels
except ImportError:  # pragma: no cover - built wherever a C compiler was at install time
    _kernels = None

try:  # ISA-L's inflate, 2-3 times zlib's speed; imported here, before worker processes fork
    from isal import igzip, igzip_lib
except ImportError:  # pragma: no cover - isal is a dependency; plain gzip still works
    igzip = igzip_lib = None

__all__ = ["PreprocessingParams", "Preprocessed", "load_image", "preprocess"]

_GZIP_MAGIC = b"\x1f\x8b"
_HEADER_CLASSES = {348: nib.Nifti1Image, 540: nib.Nifti2Image}
_READ_ERRORS = (
    ImageFileError, HeaderDataError, EOFError, zlib.error, OSError, ValueError, TypeError,
    IndexError, struct.error,
)
_CHOICES = {
    "preprocessing": ("minimal", "none"),
    "normalization": ("robust-minmax", "zscore", "minmax", "none"),
    "dtype": ("float32", "float16"),
}
# Head detection works on ~4 mm blocks: enough to place a field of view, and block means
# average the background noise away. The head is what exceeds 10 % of the low..high range.
_BLOCK_MM = 4.0
# stored types that _kernels.widen converts (numpy's type characters)
_WIDENED = frozenset("bBhHi")
# stored types that the kernels resample as they are (besides float32)
_RESAMPLED = frozenset("hH")
_HEAD_FRACTION = 0.1
_STATS_MAX_VOXELS = 2_000_000
# The smallest field of view taken for an image of a head (a brain is over 100 mm across).
_MIN_EXTENT_MM = 20.0


@dataclass(frozen=True)
class PreprocessingParams:
    """Every choice that shapes an extracted tensor (recorded in sidecars, compared on re-runs).

    ``voxel_size`` (mm, isotropic) and ``target_shape`` apply to ``preprocessing="minimal"``
    only; ``"none"`` keeps the grid of images that are already in a template space.
    """

    preprocessing: Literal["minimal", "none"] = "minimal"
    voxel_size: float = 1.0
    target_shape: tuple[int, int, int] = (169, 208, 179)
    normalization: Literal["robust-minmax", "zscore", "minmax", "none"] = "robust-minmax"
    dtype: Literal["float32", "float16"] = "float32"

    def __post_init__(self) -> None:
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise UsageError(f"{key}={getattr(self, key)!r} is not one of {', '.join(choices)}")
        try:
            size = float(self.voxel_size)
            shape = tuple(self.target_shape)
            ints = tuple(int(n) for n in shape)
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"voxel_size/target_shape: {exc}; give a number and 3 integers"
            ) from exc
        if not (math.isfinite(size) and size > 0):
            raise UsageError(f"voxel_size={self.voxel_size!r}: give a positive size in mm")
        if len(ints) != 3 or ints != shape or min(ints) < 1:
            raise UsageError(f"target_shape={self.target_shape!r}: give 3 positive integers")
        object.__setattr__(self, "voxel_size", size)
        object.__setattr__(self, "target_shape", ints)

    def as_dict(self) -> dict:
        """Return every parameter as JSON-ready values (lists, not tuples)."""
        return {
            "preprocessing": self.preprocessing,
            "voxel_size": self.voxel_size,
            "target_shape": list(self.target_shape),
            "normalization": self.normalization,
            "dtype": self.dtype,
        }


@dataclass
class Preprocessed:
    """A preprocessed volume: ``data`` (X, Y, Z), its voxel-to-world ``affine``, ``info``."""

    data: np.ndarray
    affine: np.ndarray
    info: dict


def _bad(path: object, what: str, fix: str) -> BadImageError:
    return BadImageError(" ".join(f"{path}: {what}; {fix}".split()))


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no details"
    return f"{type(exc).__name__}: {text[:200]}"


# a gzip trailer's size is trusted for one allocation only up to this ratio to the input
_MAX_TRUSTED_RATIO = 64


def _gunzip(raw: bytes) -> bytes:
    """Decompress gzip data (every member), with ISA-L when installed: 2-3 times zlib's speed.

    A single-member file, the usual case, is decompressed into one buffer of the size its
    trailer gives (a fifth faster than growing the buffer); anything else (several members,
    trailing bytes, a trailer that lies, a corrupt stream) goes through the general path,
    which also says what is wrong.
    """
    if igzip is None:  # pragma: no cover - isal is a dependency; plain gzip still works
        return gzip.decompress(raw)
    size = int.from_bytes(raw[-4:], "little")  # ISIZE: the last member's length mod 2**32
    if len(raw) >= 18 and size <= _MAX_TRUSTED_RATIO * len(raw):
        stream = igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP)
        try:
            content = stream.decompress(raw, size + 1)
        except igzip_lib.IsalError:
            content = None
        if content is not None and stream.eof and not stream.unused_data \
                and len(content) == size:
            return content
    return igzip.decompress(raw)


def _header_class(path: Path, head: bytes) -> type:
    """The NIfTI class whose header ``head`` (the first bytes, decompressed) starts with."""
    if not head:
        raise _bad(path, "is an empty file", "copy or download it again")
    if head.lstrip()[:1] == b"<":
        raise _bad(path, "is an HTML/XML page, not a NIfTI image (a failed download?)",
                   "download the image again")
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
        if size in _HEADER_CLASSES and len(head) >= size:
            return _HEADER_CLASSES[size]
    raise _bad(path, f"is not a NIfTI image (starts with {head[:16]!r})",
               "convert it to NIfTI (.nii or .nii.gz), e.g. with dcm2niix")


def decompress(raw: bytes) -> bytes | None:
    """The decompressed bytes of a NIfTI file's content; None when they cannot be had (then
    :func:`load_image` says why)."""
    try:
        return _gunzip(raw) if raw[:2] == _GZIP_MAGIC else raw
    except (EOFError, zlib.error, OSError, ValueError):
        return None


def _as_stored(data: np.ndarray) -> bool:
    """Whether the kernels read ``data`` as it is: native int16 or uint16 (and they are built)."""
    return _kernels is not None and data.dtype.char in _RESAMPLED and data.dtype.isnative


def _read_volume(path: Path, raw: bytes, content: bytes | None = None, integers: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.dtype, tuple[float, float] | None,
                            tuple[tuple[int, ...], np.ndarray] | None]:
    """(float32 voxels with scaling applied, affine, stored dtype, their range and the head
    finder's block sums with their steps when they came with the conversion) from a file's
    bytes (``content``: those bytes decompressed already).

    The voxels are read straight from the decompressed bytes: one conversion to float32, no
    intermediate copies; the array keeps the file's (Fortran) voxel order. ``integers``: int16
    and uint16 voxels without scaling stay as they are stored (a read-only view of the bytes,
    no conversion at all), for the kernels that read them directly.
    """
    try:
        if content is None:
            content = _gunzip(raw) if raw[:2] == _GZIP_MAGIC else raw
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        raise _bad(path, f"is truncated or corrupt ({_describe(exc)})",
                   "copy or download it again") from exc
    klass = _header_class(path, content[:544])
    header = klass.header_class.from_fileobj(io.BytesIO(content))
    dtype = header.get_data_dtype()
    if dtype.kind not in "biuf":
        raise _bad(path, f"has data type {dtype}, not real scalars",
                   "give a scalar (grey-level) image")
    shape = tuple(int(n) for n in header.get_data_shape())
    offset = int(header.get_data_offset())
    needed = offset + math.prod(shape) * dtype.itemsize
    if len(content) < needed:
        raise _bad(path, f"is truncated ({len(content)} bytes of image data; its header needs "
                   f"{needed})", "copy or download it again")
    stored = np.frombuffer(content, dtype=dtype, count=math.prod(shape), offset=offset)
    slope, inter = header.get_slope_inter()
    scale, shift = slope is not None and slope != 1, bool(inter)
    affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    if _kernels is not None and stored.size and stored.dtype.isnative and stored.dtype.char in _WIDENED:
        # converted, scaled and its range taken in one pass (the same float32 values), and the
        # head finder's block sums with them, line by line while each is in the cache
        native = stored.view(stored.dtype.newbyteorder("="))  # a plain type code for C
        volume = shape[:3] if len(shape) == 3 or (len(shape) == 4 and shape[3] == 1) else None
        blocks = None
        if volume is not None and min(volume) >= 1:
            steps = _block_steps(volume, affine)
            blocks = (steps, np.empty([n // k for n, k in zip(volume, steps, strict=True)],
                                      np.float32))
        extra = (blocks[1], steps, volume) if blocks is not None else ()
        if integers and not (scale or shift) and native.dtype.char in _RESAMPLED:
            low, high = _kernels.widen(native, None, False, 1.0, False, 0.0, *extra)
            return native.reshape(shape, order="F"), affine, dtype, (low, high), blocks
        data = np.empty(shape, np.float32, order="F")
        low, high = _kernels.widen(native, data.reshape(-1, order="A"), scale,
                                   float(np.float32(slope)) if scale else 1.0, shift,
                                   float(np.float32(inter)) if shift else 0.0, *extra)
        return data, affine, dtype, (low, high), blocks
    data = stored.reshape(shape, order="F").astype(np.float32)
    if scale:
        data *= np.float32(slope)
    if shift:
        data += np.float32(inter)
    return data, affine, dtype, None, None


def load_image(path: str | Path, raw: bytes | None = None,
               content: bytes | None = None) -> nib.Nifti1Image:
    """:func:`load_volume` as a nibabel image (its ``extra`` holds the facts)."""
    data, affine, extra = load_volume(path, raw, content)
    return nib.Nifti1Image(data, affine, extra=extra)


def load_volume(path: str | Path, raw: bytes | None = None, content: bytes | None = None,
                integers: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a NIfTI file fully and check that it holds one usable 3-D volume.

    Compression is told from the content, so gzip data named ``.nii`` loads too. A 4-D image
    with a single volume is squeezed to 3-D. The voxels come in memory as float32 (scaling
    applied; NaN/Inf kept for :func:`preprocess` to count), with the facts: the source path,
    dtype, shape and voxel statistics (``img.extra`` of :func:`load_image`).

    Parameters
    ----------
    path
        A ``.nii`` or ``.nii.gz`` file (NIfTI-1 or NIfTI-2).
    raw
        The file's bytes, when the caller has read them already (to hash them, say).
    content
        Those bytes decompressed, when the caller has done it already (ahead, in a thread).
    integers
        Give int16 and uint16 voxels stored without scaling as they are (a read-only view of
        the decompressed bytes) instead of float32: :func:`preprocess_volume` resamples them
        directly, to the same tensor, without a float32 copy of the volume.

    Returns
    -------
    tuple
        The volume (float32, or the stored integers with ``integers``), the file's affine and
        the facts (``extra``).

    Raises
    ------
    BadImageError
        For anything that is not a readable, non-empty 3-D NIfTI volume.
    InputMissingError
        When ``path`` does not exist.
    """
    path = Path(path)
    if raw is None:
        if not path.exists():
            raise InputMissingError(f"{path}: no such file; check the path")
        if path.is_dir():
            raise _bad(path, "is a directory, not a NIfTI file", "give the path of the image file")
    try:
        if raw is None:
            raw = path.read_bytes()
        data, affine, source_dtype, value_range, blocks = _read_volume(path, raw, content,
                                                                       integers)
    except BadImageError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _bad(path, f"is truncated or corrupt ({_describe(exc)})",
                   "copy or download it again") from exc
    except _READ_ERRORS as exc:
        raise _bad(path, f"cannot be read as NIfTI ({_describe(exc)})",
                   "check the file, or convert it again to NIfTI") from exc
    source_shape = list(data.shape)
    if data.ndim > 3 and all(n == 1 for n in data.shape[3:]):
        data = data.reshape(data.shape[:3], order="F")
    if data.ndim > 3:
        raise _bad(path, f"is {data.ndim}-D with {math.prod(data.shape[3:])} volumes "
                   f"(shape {source_shape})", "give a 3-D image or extract a single volume")
    if data.ndim < 3 or min(data.shape) < 2:
        raise _bad(path, f"is 2-D (shape {source_shape})", "give a 3-D volume")
    n_nonfinite = 0
    if source_dtype.kind == "f" or not np.isfinite(data.flat[0]):  # integers scale to finite
        n_nonfinite = int(data.size - np.count_nonzero(np.isfinite(data)))
    if n_nonfinite == data.size:
        raise _bad(path, "has no finite voxel (all NaN or Inf)", "check how it was produced")
    if value_range is not None and not n_nonfinite:
        low, high = value_range
    else:
        low, high = (float(np.nanmin(data)), float(np.nanmax(data))) if n_nonfinite else \
            (float(data.min()), float(data.max()))
    if not (math.isfinite(low) and math.isfinite(high)):  # +-Inf among the voxels
        finite = data[np.isfinite(data)]
        low, high = float(finite.min()), float(finite.max())
    if low == high == 0:
        raise _bad(path, "has only zero voxels", "check how it was produced")
    if not (np.isfinite(affine).all() and abs(np.linalg.det(affine[:3, :3])) > 1e-9):
        raise _bad(path, "has an unusable voxel-to-world affine (singular or not finite)",
                   "fix the sform/qform of its header")
    extent = np.sqrt((affine[:3, :3] ** 2).sum(axis=0)) * np.array(data.shape)
    if extent.min() < _MIN_EXTENT_MM:
        size = " x ".join(f"{e:.3g}" for e in extent)
        raise _bad(path, f"covers only {size} mm (shape {source_shape}): too small for a head "
                   f"image (at least {_MIN_EXTENT_MM:g} mm along every axis)",
                   "check that it is the right file (not a localizer, a slab or a test image)")
    extra = {"source": str(path), "source_dtype": str(source_dtype), "source_shape": source_shape,
             "n_nonfinite": n_nonfinite, "finite_range": (low, high)}
    if blocks is not None:
        extra["block_sums"] = blocks  # (steps, sums): for _find_head, as _block_means gives them
    return data, affine, extra


def _block_steps(shape: tuple[int, ...], affine: np.ndarray) -> tuple[int, int, int]:
    """Voxels per block along each axis: about ``_BLOCK_MM``, within the volume."""
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    return tuple(int(k) for k in np.clip(np.rint(_BLOCK_MM / zooms), 1, shape[:3]).astype(int))


def _block_means(data: np.ndarray, affine: np.ndarray,
                 sums: tuple[tuple[int, ...], np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Average ``data`` over blocks of about ``_BLOCK_MM``; return the means and block sizes
    (``sums``: the block sums already taken, with their steps, as load_volume gives them).

    The work runs in the array's memory order (a NIfTI volume is Fortran-ordered): the first
    reduction goes over whole contiguous slabs without copying the volume.
    """
    steps = np.array(_block_steps(data.shape, affine))
    if sums is not None and tuple(sums[0]) == tuple(steps):
        return sums[1] / np.float32(np.prod(steps)), steps
    if _as_stored(data):
        data = data.astype(np.float32)  # as the float32 volume sums
    if _kernels is not None and data.dtype == np.float32:
        sums = np.empty([n // s for n, s in zip(data.shape, steps, strict=True)], np.float32)
        _kernels.block_sums(data, sums, tuple(int(s) for s in steps))
        return sums / np.float32(np.prod(steps)), steps
    flip = data.flags.f_contiguous and not data.flags.c_contiguous
    work, wsteps = (data.T, steps[::-1]) if flip else (np.ascontiguousarray(data), steps)
    counts = [n // s for n, s in zip(work.shape, wsteps, strict=True)]
    slabs = work[:counts[0] * wsteps[0]].reshape(counts[0], wsteps[0], *work.shape[1:])
    sums = slabs.sum(axis=1, dtype=np.float32)[:, :counts[1] * wsteps[1], :counts[2] * wsteps[2]]
    sums = sums.reshape(counts[0], counts[1], wsteps[1], counts[2], wsteps[2]).sum(axis=(2, 4))
    means = sums / np.float32(np.prod(wsteps))
    return (means.T if flip else means), steps


def _percentiles(volume: np.ndarray, percents: float | tuple[float, ...], step: int = 1,
                 above: float | None = None) -> tuple[int, Any]:
    """numpy's percentiles (method "linear") of ``volume[::step, ::step, ::step]``, over its
    values ``> above`` only when given; returns how many values there were and what
    ``np.percentile`` gives for them (a float32 for one float percent, float64 for a tuple;
    nothing when there were none). The compiled kernel selects the order statistics without
    copying or partitioning the values: the same numbers, several times faster."""
    weak = isinstance(percents, (int, float))
    wanted = (float(percents),) if weak else tuple(float(p) for p in percents)
    if _kernels is not None and (volume.dtype == np.float32 or _as_stored(volume)) \
            and volume.ndim == 3:
        n, values = _kernels.percentiles(volume, (step,) * 3,
                                         math.nan if above is None else float(above), wanted, weak)
        if not n:
            return 0, None
        return n, np.float32(values[0]) if weak else np.array(values)
    values = _picked(volume, step, above)
    if values.dtype.kind in "iu":  # stored integers: as their float32 values
        values = values.astype(np.float32)
    if not values.size:
        return 0, None
    return values.size, np.percentile(values, percents)


def _picked(volume: np.ndarray, step: int, above: float | None) -> np.ndarray:
    """The values of ``volume[::step, ::step, ::step]`` (``> above`` only, when given)."""
    sample = volume[::step, ::step, ::step] if step > 1 else volume
    return sample if above is None else sample[sample > above]


def _find_head(data: np.ndarray, affine: np.ndarray, fov_height: float,
               block_sums: tuple[tuple[int, ...], np.ndarray] | None = None) -> tuple[dict, float]:
    """Locate the head in world space; return facts for ``info`` and the foreground threshold.

    The centre is the centroid of the largest foreground component, counting only what lies
    within ``fov_height`` mm of the top of the head, so that a neck or shoulders do not drag the
    field of view down and the top of the head stays inside it.
    """
    small, steps = _block_means(data, affine, block_sums)
    low, high = (float(v) for v in _percentiles(small, (2.0, 99.0))[1])
    threshold = low + _HEAD_FRACTION * (high - low)
    n, head = _head_mask(small, threshold)
    if n == 0:
        centre = affine[:3, :3] @ ((np.array(data.shape) - 1) / 2) + affine[:3, 3]
        return {"head_found": False, "head_centre_mm": centre.tolist()}, threshold
    centre, top = _head_centre(head, steps, affine, fov_height)
    facts = {"head_found": True, "head_centre_mm": centre, "head_top_mm": top}
    return facts, threshold


def _head_centre(head: np.ndarray, steps: np.ndarray, affine: np.ndarray,
                 height: float) -> tuple[list[float], float]:
    """The world centroid of the blocks of ``head`` (a mask of blocks of ``steps`` voxels)
    that lie within ``height`` mm of its top, and that top (the highest world z)."""
    if _kernels is not None and head.dtype == np.bool_ and head.flags.c_contiguous:
        *centre, top = _kernels.head_centre(head, tuple(int(s) for s in steps),
                                            tuple(float(a) for a in affine[:3].ravel()),
                                            float(height))
        return centre, top
    voxels = np.argwhere(head) * steps + (steps - 1) / 2.0
    world = voxels @ affine[:3, :3].T + affine[:3, 3]
    top = world[:, 2].max()
    return world[world[:, 2] >= top - height].mean(axis=0).tolist(), float(top)


def _head_mask(small: np.ndarray, threshold: float) -> tuple[int, np.ndarray | None]:
    """The number of connected components of ``small > threshold`` and the largest of them
    (the first in C order among equals) with its holes filled; ``(0, None)`` for none."""
    if _kernels is not None and small.dtype == np.float32 and small.flags.c_contiguous:
        head = np.empty(small.shape, np.bool_)
        n = _kernels.head_mask(small, threshold, head)
        return n, head if n else None
    labels, n = ndimage.label(small > threshold)
    if n == 0:
        return 0, None
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return n, _fill_holes(labels == largest)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with the background parts that do not reach the border filled in: what
    ``ndimage.binary_fill_holes`` gives, with one labelling instead of repeated dilations."""
    outside, _ = ndimage.label(~mask)
    faces = [outside[0], outside[-1], outside[:, 0], outside[:, -1], outside[:, :, 0],
             outside[:, :, -1]]
    border = np.unique(np.concatenate([f.ravel() for f in faces]))
    return ~np.isin(outside, border[border > 0]) & (mask | (outside > 0))


def _grid_affine(
    centre: np.ndarray, in_affine: np.ndarray, params: PreprocessingParams
) -> np.ndarray:
    """Return the RAS+ output affine whose grid is centred on ``centre`` (world mm)."""
    size = params.voxel_size
    out = np.diag([size, size, size, 1.0])
    origin = centre - size * (np.array(params.target_shape) - 1) / 2.0
    # Putting the first output voxel on an input voxel centre makes resampling an exact copy
    # when the input already has the output's voxel size and axes; elsewhere it is harmless.
    ijk = np.rint(np.linalg.solve(in_affine, np.append(origin, 1.0)))
    out[:3, 3] = (in_affine @ ijk)[:3]
    return out


def _axis_permutation(matrix: np.ndarray) -> list[int] | None:
    """For a mapping that only permutes, flips and scales axes: the input axis of each output
    axis; ``None`` for anything else (oblique, sheared)."""
    nonzero = np.abs(matrix) > 1e-9
    if not (nonzero.sum(axis=0) == 1).all() or not (nonzero.sum(axis=1) == 1).all():
        return None
    return [int(np.flatnonzero(nonzero[:, c])[0]) for c in range(3)]


def _lerp_axis(work: np.ndarray, axis: int, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of ``work`` along ``axis`` at ``coords`` (input voxel units).

    Returns the new array and which coordinates fall inside the input (the others are left to
    the caller, who fills them with the background).
    """
    n = work.shape[axis]
    inside = (coords > -1e-6) & (coords < n - 1 + 1e-6)
    coords = np.clip(coords, 0, n - 1)
    low = np.minimum(np.floor(coords).astype(np.intp), max(n - 2, 0))
    weight = (coords - low).astype(np.float32)
    if n == 1 or not weight.any():  # sample points on input voxels: a plain gather
        return np.take(work, low, axis=axis), inside
    view = [None] * work.ndim
    view[axis] = slice(None)
    first = np.take(work, low, axis=axis)
    second = np.take(work, low + 1, axis=axis)
    second -= first
    second *= weight[tuple(view)]
    first += second
    return first, inside


def _resample_axes(data: np.ndarray, matrix: np.ndarray, offset: np.ndarray,
                   shape: tuple[int, int, int], cval: float,
                   perm: list[int] | None = None) -> np.ndarray:
    """Trilinear resampling for axis-aligned grids, one axis at a time.

    Trilinear weights are products of 1-D weights, so three 1-D passes give the interpolation
    of :func:`scipy.ndimage.affine_transform` (``order=1``, ``mode="constant"``: points outside
    the input get ``cval``) at a fraction of its cost; an axis whose sample points fall on
    input voxels is a plain gather (an exact copy). Gathers are fast along outer axes (whole
    rows are copied) and slow along the innermost one, so the passes run in the array's memory
    order (a NIfTI volume is Fortran-ordered), the volume is transposed to the output's order
    once, and the output's outermost axis goes last.
    """
    if perm is None:  # perm[c]: the input axis sampled along output axis c
        perm = _axis_permutation(matrix)
    flip = data.flags.f_contiguous and not data.flags.c_contiguous
    work = data.T if flip else np.ascontiguousarray(data)
    place = [2 - perm[c] if flip else perm[c] for c in range(3)]  # output axis c -> work axis

    def coords(c: int) -> np.ndarray:
        return matrix[perm[c], c] * np.arange(shape[c], dtype=np.float64) + offset[perm[c]]

    inside = {}
    for c in sorted((1, 2), key=lambda c: shape[c] / work.shape[place[c]]):
        work, inside[c] = _lerp_axis(work, place[c], coords(c))
    work = np.ascontiguousarray(work.transpose(place))
    work, inside[0] = _lerp_axis(work, 0, coords(0))
    for c, mask in inside.items():
        if not mask.all():
            index = [slice(None)] * 3
            index[c] = ~mask
            work[tuple(index)] = cval
    return np.ascontiguousarray(work, dtype=np.float32)


def _resample(data: np.ndarray, in_affine: np.ndarray, out_affine: np.ndarray,
              shape: tuple[int, int, int], cval: float, order: int = 1,
              sample: dict | None = None) -> np.ndarray:
    """Resampling of ``data`` onto the grid ``out_affine`` / ``shape`` (trilinear by default).

    ``sample``: ``{"above": threshold}`` asks the compiled kernel for the normalisation's
    sample while it makes the output (the values of ``out[::2, ::2, ::2]`` above the
    threshold, which :func:`_normalize` would otherwise read back from memory); where the
    kernel runs, it adds ``keys`` and ``n`` to the dict.
    """
    mapping = np.linalg.solve(in_affine, out_affine)
    matrix, offset = mapping[:3, :3], mapping[:3, 3]
    if order == 1 and _kernels is not None:
        matrix = np.where(np.abs(matrix) > 1e-9, matrix, 0.0)  # exact zeros: the axes path
        out = empty_aligned(shape, np.float32)  # written to the disk without a copy
        extra = ()
        if sample is not None:
            keys = np.empty(math.prod((n + 1) // 2 for n in shape), np.uint32)
            extra = (keys, float(sample["above"]))
        source = data if _as_stored(data) else np.asarray(data, dtype=np.float32)
        n = _kernels.trilinear(source, out, tuple(matrix.ravel()), tuple(offset), float(cval),
                               *extra)
        if sample is not None:
            sample.update(keys=extra[0], n=n)
        return out
    perm = _axis_permutation(matrix) if order == 1 else None
    if perm is not None:
        return _resample_axes(data, matrix, offset, shape, cval, perm)
    if np.all(np.abs(matrix - np.diag(np.diag(matrix))) < 1e-9):
        matrix = np.diag(matrix).copy()  # axis-aligned: scipy's faster zoom/shift path
    return ndimage.affine_transform(
        data, matrix, offset=offset, output_shape=shape, output=np.float32, order=order,
        mode="constant", cval=cval, prefilter=False,
    )


def _shift_scale(vol: np.ndarray, method: str, step: int = 1, above: float | None = None,
                 sample: dict | None = None) -> tuple[float, float]:
    """The shift and scale of ``method`` from ``vol[::step, ::step, ::step]`` (its values
    ``> above`` only, when given; ``sample``: those values' keys, taken by the resampling);
    (0, 0) when no value is left."""
    if method == "robust-minmax":
        if sample is not None and "keys" in sample and step == 2 and above == sample["above"]:
            n = sample["n"]
            values = _kernels.sample_percentiles(sample["keys"], n, (0.5, 99.5), False) \
                if n else None
        else:
            n, values = _percentiles(vol, (0.5, 99.5), step, above)
        if not n:
            return 0.0, 0.0
        low, high = (np.float64(v) for v in values)
        return float(low), float(high - low)
    values = _picked(vol, step, above)
    if values.size == 0:
        return 0.0, 0.0
    if method == "zscore":
        return float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
    return float(values.min()), float(values.max() - values.min())


def _normalize(vol: np.ndarray, method: str, threshold: float, name: str,
               sample: dict | None = None) -> dict:
    """Scale ``vol`` in place; statistics come from head voxels (``vol > threshold``).

    ``minmax`` uses the whole volume, and the others fall back to it when the head voxels have
    no spread. ``zscore`` leaves the background at what the shift and scale make of it
    ((0 - mean) / sd for padding); the min-max methods clip to [0, 1].
    """
    if method == "none":
        return {"normalization": "none"}
    # every 8th voxel of a big volume: the same statistics, a fraction of the time
    step = 2 if vol.size > _STATS_MAX_VOXELS else 1
    over = "volume" if method == "minmax" else "head"
    if over == "head":
        shift, scale = _shift_scale(vol, method, step, above=threshold, sample=sample)
    else:
        shift, scale = _shift_scale(vol, method)
    if not scale > 0 and over == "head":
        over = "volume"
        shift, scale = _shift_scale(vol, method, step)
    if not scale > 0:
        raise BadImageError(f"{name}: has constant intensity after resampling; "
                            "check the image (nothing to learn from it)")
    bounds = (math.nan, math.nan) if method == "zscore" else (0.0, 1.0)
    if _kernels is not None and vol.dtype == np.float32 and vol.flags.c_contiguous:
        _kernels.shift_scale(vol, shift, scale, *bounds)  # one pass, the same float32 values
    else:
        vol -= np.float32(shift)
        vol /= np.float32(scale)
        if method != "zscore":
            np.clip(vol, *bounds, out=vol)
    if method == "zscore":
        return {"normalization": method, "over": over, "mean": shift, "sd": scale}
    return {"normalization": method, "over": over, "low": shift, "high": shift + scale}


def preprocess(img: nib.spatialimages.SpatialImage,
               params: PreprocessingParams | None = None) -> Preprocessed:
    """Resample (``minimal``) or keep (``none``) the grid, then normalise and cast.

    ``minimal`` gives a RAS+ grid of ``params.target_shape`` voxels of ``params.voxel_size``
    mm centred on the head; outside the input field is the background (0, or the image's
    low percentile when that is negative, as in CT). NaN/Inf become 0 and are counted.

    Parameters
    ----------
    img
        A 3-D image, ideally from :func:`load_image` (its file name then appears in errors).
    params
        The preprocessing choices; defaults to ``PreprocessingParams()``.

    Returns
    -------
    Preprocessed
        The C-contiguous volume in ``params.dtype``, its exact affine and JSON-ready facts.

    Raises
    ------
    BadImageError
        For an image with no finite voxel or a constant intensity.
    """
    extra = dict(getattr(img, "extra", None) or {})
    extra.pop("block_sums", None)  # the image's voxels may have changed since they were loaded
    extra["source"] = str(extra.get("source") or img.get_filename() or "image")
    extra.setdefault("source_dtype", str(img.get_data_dtype()))
    return preprocess_volume(np.asanyarray(img.dataobj, dtype=np.float32), img.affine, extra,
                             params)


def preprocess_volume(data: np.ndarray, affine: np.ndarray, extra: dict,
                      params: PreprocessingParams | None = None) -> Preprocessed:
    """:func:`preprocess` of a volume as :func:`load_volume` gives it (float32 voxels, or the
    stored int16/uint16 with ``integers``; the affine, the facts), without a nibabel image in
    between."""
    params = params or PreprocessingParams()
    name = str(extra.get("source") or "image")
    data = np.asanyarray(data)
    if not _as_stored(data):  # stored int16/uint16 are resampled as they are
        data = data.astype(np.float32, copy=False)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise _bad(name, f"is not a 3-D volume (shape {list(data.shape)})", "use load_image")
    in_affine = np.asarray(affine, dtype=np.float64)
    if "n_nonfinite" in extra:  # counted by load_image
        n_nonfinite, (low, high) = extra["n_nonfinite"], extra["finite_range"]
    else:
        n_nonfinite = int(data.size - np.count_nonzero(np.isfinite(data)))
        low = high = None
    if n_nonfinite == data.size:
        raise _bad(name, "has no finite voxel (all NaN or Inf)", "check how it was produced")
    blocks = extra.get("block_sums")  # taken by load_volume from these very voxels
    if n_nonfinite:
        data = np.where(np.isfinite(data), data, np.float32(0))
        low = high = None  # the zeros may widen the range
        blocks = None
    if low is None:
        low, high = float(data.min()), float(data.max())
    if low == high:
        raise _bad(name, f"is constant (every voxel is {low})", "check how it was produced")
    info = {
        "source_shape": list(extra.get("source_shape", data.shape)),
        "source_dtype": str(extra.get("source_dtype", data.dtype)),
        "source_zooms_mm": np.sqrt((in_affine[:3, :3] ** 2).sum(axis=0)).tolist(),
        "source_orientation": "".join(nib.aff2axcodes(in_affine)),
        "source_obliquity_deg": float(np.degrees(nib.affines.obliquity(in_affine).max())),
        "n_nonfinite": n_nonfinite,
    }
    if params.preprocessing == "minimal":
        fov_height = params.target_shape[2] * params.voxel_size
        head, threshold = _find_head(data, in_affine, fov_height, blocks)
        out_affine = _grid_affine(np.array(head["head_centre_mm"]), in_affine, params)
        cval = min(0.0, float(_percentiles(data, 1.0, step=4)[1]))
        # the normalisation's sample comes with the resampling where it is taken (robust
        # min-max of a big volume: every 8th voxel above the threshold)
        sample = {"above": threshold} if (params.normalization == "robust-minmax"
                                          and math.prod(params.target_shape) > _STATS_MAX_VOXELS) \
            else None
        vol = _resample(data, in_affine, out_affine, params.target_shape, cval, sample=sample)
        info["background"] = cval
    else:
        head, threshold = _find_head(data, in_affine, math.inf, blocks)
        out_affine = in_affine.copy()
        vol = empty_aligned(data.shape, np.float32)
        vol[...] = data
    info.update(head, foreground_threshold=threshold)
    info["intensity"] = _normalize(vol, params.normalization, threshold, name,
                                   sample if params.preprocessing == "minimal" else None)
    if params.dtype == "float16":
        limit = float(np.finfo(np.float16).max)
        info["n_float16_clipped"] = int(np.count_nonzero(np.abs(vol) > limit))
        half = empty_aligned(vol.shape, np.float16)
        half[...] = np.clip(vol, -limit, limit, out=vol)
        vol = half
    return Preprocessed(data=np.ascontiguousarray(vol), affine=out_affine, info=info)


def resample_labels(img: nib.spatialimages.SpatialImage, out_affine: np.ndarray,
                    shape: tuple[int, ...]) -> np.ndarray:
    """A discrete segmentation on a tensor's grid (nearest neighbour), as integers.

    Used to carry a per-subject segmentation (``dseg``) into the space of the stored tensor,
    so that ROI masks taken from its label values select the same voxels as in the image.
    """
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    labels = _resample(data, img.affine, np.asarray(out_affine, float), tuple(shape), 0.0, order=0)
    labels = np.rint(labels)
    dtype = np.int16 if labels.min() >= -32768 and labels.max() <= 32767 else np.int32
    return np.ascontiguousarray(labels.astype(dtype))
