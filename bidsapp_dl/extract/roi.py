"""ROI extractor: one sample per region, the image inside a binary mask's bounding box.

Masks come as NIfTI files in the stored tensors' space, or as label values of a per-subject
segmentation. ROI samples are computed (image times mask), unlike the views of the other modes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bidsapp_dl.errors import BadImageError, DataError, InputMissingError, UsageError

from .modes import Extractor, _integer, _out_of_range, _volume_shape

logger = logging.getLogger(__name__)

AFFINE_TOLERANCE_MM = 1e-3


def _binary(array: Any, where: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        return array
    bad = (array != 0) & (array != 1)
    if bad.any():
        found = np.unique(array[bad])
        shown = ", ".join(str(v) for v in found[:5].tolist()) + (", ..." if found.size > 5 else "")
        raise DataError(
            f"{where} is not binary: expected only 0 and 1 (or booleans), found also {shown}; "
            "threshold it, or pass a segmentation's labels instead"
        )
    return array != 0


def _bounding_box(mask: np.ndarray, where: str) -> list[tuple[int, int]]:
    if not mask.any():
        raise DataError(f"{where} is empty: no voxel is inside it")
    box = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return box


def _box_indexes(box: list[tuple[int, int]], shape: tuple[int, ...]) -> tuple[tuple, Any]:
    """Index of ``box`` clipped to the volume, and (box shape, target) when it must be padded."""
    src = tuple(slice(max(lo, 0), min(hi, dim)) for (lo, hi), dim in zip(box, shape, strict=True))
    if all(s.stop - s.start == hi - lo for s, (lo, hi) in zip(src, box, strict=True)):
        return src, None
    dst = tuple(slice(s.start - lo, s.stop - lo) for s, (lo, _) in zip(src, box, strict=True))
    return src, (tuple(hi - lo for lo, hi in box), dst)


def _roi_name(path: Path) -> str:
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    entities = dict(part.split("-", 1) for part in stem.split("_") if "-" in part)
    return entities.get("label") or entities.get("roi") or stem


class RoiExtractor(Extractor):
    """One sample per region of interest: the voxels of the volume inside a binary mask.

    Masks are in the voxel grid of the stored volumes. ROIs are served in the sorted order of
    their names, whatever order they were given in. With ``crop`` a sample is the mask's
    bounding box of ``volume * mask`` (other voxels of the box are 0), otherwise the whole
    ``volume * mask``. ``box_shape`` fixes the crop to a box of that shape centred on the
    bounding box, zero-padded where it leaves the volume: use it when masks differ per subject
    (segmentations) but samples must share one shape. Samples are new arrays, not views.
    """

    mode = "roi"

    def __init__(
        self,
        masks: Mapping[str, np.ndarray],
        crop: bool = True,
        box_shape: Sequence[int] | None = None,
    ) -> None:
        if not masks:
            raise UsageError("roi mode needs at least one mask")
        if box_shape is not None:
            if not crop:
                raise UsageError("box_shape only applies with crop=True")
            sizes = np.atleast_1d(np.asarray(box_shape, dtype=object)).tolist()
            if len(sizes) not in (1, 3):
                raise UsageError(f"box_shape takes 1 or 3 integers, found {sizes}")
            box_shape = tuple(_integer(n, "box_shape", 1) for n in sizes * (4 - len(sizes)))[:3]
        self.names = sorted(masks)
        self.crop = bool(crop)
        self.box_shape = box_shape
        self.shape = _volume_shape(np.shape(masks[self.names[0]]))
        # Per ROI: source index in the volume, mask over it, and (shape, target) when padded.
        self._entries: list[tuple[tuple, np.ndarray, tuple | None]] = []
        self._boxes: list[tuple[tuple[int, int], ...]] = []
        for name in self.names:
            mask = _binary(masks[name], f"mask {name!r}")
            if mask.shape != self.shape:
                raise DataError(
                    f"mask {name!r} has shape {mask.shape}, other masks {self.shape}: "
                    "all masks must be in the grid of the stored tensors"
                )
            bbox = _bounding_box(mask, f"mask {name!r}")
            if not crop:
                bbox = [(0, dim) for dim in self.shape]
            if box_shape is not None:
                if any(hi - lo > n for (lo, hi), n in zip(bbox, box_shape, strict=True)):
                    logger.warning("ROI %r is larger than box_shape %s: its borders are cut",
                                   name, list(box_shape))
                starts = [(lo + hi - n) // 2 for (lo, hi), n in zip(bbox, box_shape, strict=True)]
                bbox = [(lo, lo + n) for lo, n in zip(starts, box_shape, strict=True)]
            src, pad = _box_indexes(bbox, self.shape)
            self._entries.append((src, np.ascontiguousarray(mask[src]), pad))
            self._boxes.append(tuple(bbox))

    @classmethod
    def from_mask_files(
        cls,
        paths: Iterable[str | Path],
        reference_shape: Sequence[int],
        reference_affine: np.ndarray,
        crop: bool = True,
        box_shape: Sequence[int] | None = None,
    ) -> RoiExtractor:
        """Load binary NIfTI masks in the grid of the stored tensors (shape and affine).

        The ROI name is the file's ``label-`` (else ``roi-``) entity, else its stem.
        """
        shape = _volume_shape(reference_shape)
        affine = np.asarray(reference_affine, dtype=float)
        masks: dict[str, np.ndarray] = {}
        sources: dict[str, Path] = {}
        for path in map(Path, paths):
            if not path.is_file():
                raise InputMissingError(f"mask file {path} does not exist")
            try:
                image = nib.load(path)
            except Exception as err:  # nibabel raises several types for unreadable files
                raise BadImageError(f"cannot read mask {path}: {err}") from err
            found = np.asarray(image.affine, dtype=float)
            if tuple(image.shape) != shape or np.abs(found - affine).max() > AFFINE_TOLERANCE_MM:
                raise DataError(
                    f"mask {path} must be in the space of the stored tensors: found shape "
                    f"{tuple(image.shape)} and affine {np.round(found, 3).tolist()}, expected "
                    f"shape {shape} and affine {np.round(affine, 3).tolist()} (within "
                    f"{AFFINE_TOLERANCE_MM} mm); resample the mask to the tensors' grid"
                )
            name = _roi_name(path)
            if name in masks:
                raise DataError(f"masks {sources[name]} and {path} both name the ROI {name!r}")
            masks[name] = _binary(np.asanyarray(image.dataobj), f"mask {path}")
            _bounding_box(masks[name], f"mask {path}")
            sources[name] = path
        return cls(masks, crop=crop, box_shape=box_shape)

    @classmethod
    def from_segmentation(
        cls,
        seg: np.ndarray,
        labels: Mapping[str, int | Sequence[int]] | Sequence[int],
        crop: bool = True,
        box_shape: Sequence[int] | None = None,
    ) -> RoiExtractor:
        """ROIs from the label values of a segmentation (dseg) in the tensors' grid.

        ``labels`` maps ROI names to one or several values; a plain list of values gives one
        ROI per value, named ``label-<value>``.
        """
        seg = np.asarray(seg)
        if isinstance(labels, Mapping):
            groups = {str(k): np.atleast_1d(v).tolist() for k, v in labels.items()}
        else:
            groups = {f"label-{v}": [v] for v in labels}
        masks = {}
        for name, values in groups.items():
            masks[name] = np.isin(seg, values)
            if not masks[name].any():
                present = np.unique(seg).tolist()
                raise DataError(
                    f"ROI {name!r}: no voxel of the segmentation has label {values}; "
                    f"labels present: {present[:30]}{' ...' if len(present) > 30 else ''}"
                )
        return cls(masks, crop=crop, box_shape=box_shape)

    def _check(self, shape: tuple[int, ...]) -> None:
        if tuple(shape) != self.shape:
            raise DataError(f"volume of shape {tuple(shape)} but the masks are {self.shape}")

    def roi_box(self, i: int) -> tuple[tuple[int, int], ...]:
        """(start, stop) voxels per axis of sample ``i`` in the volume (may pass its borders)."""
        if not 0 <= i < len(self._boxes):
            raise _out_of_range(i, len(self._boxes), "roi")
        return self._boxes[i]

    def n_samples(self, shape: tuple[int, int, int]) -> int:
        self._check(shape)
        return len(self.names)

    def sample_shape(self, shape: tuple[int, int, int], i: int | None = None) -> tuple[int, ...]:
        """Shape of sample ``i``; without ``i``, the shape all ROIs share (else UsageError)."""
        self._check(shape)
        shapes = [(1, *(hi - lo for lo, hi in box)) for box in self._boxes]
        if i is not None:
            if not 0 <= i < len(shapes):
                raise _out_of_range(i, len(shapes), "roi")
            return shapes[i]
        if len(set(shapes)) > 1:
            raise UsageError(
                f"the ROIs {self.names} have different bounding boxes {shapes}: "
                "pass box_shape (or crop=False) for one sample shape"
            )
        return shapes[0]

    def extract(self, volume: np.ndarray, i: int) -> np.ndarray:
        if volume.shape != self.shape:
            self._check(volume.shape)
        if not 0 <= i < len(self._entries):
            raise _out_of_range(i, len(self._entries), "roi")
        src, mask, pad = self._entries[i]
        if pad is None:
            return np.multiply(volume[src], mask)[None]
        out = np.zeros(pad[0], dtype=volume.dtype)
        np.multiply(volume[src], mask, out=out[pad[1]])
        return out[None]

    def params(self) -> dict[str, Any]:
        box = None if self.box_shape is None else list(self.box_shape)
        return {"mode": "roi", "rois": list(self.names), "crop": self.crop, "box_shape": box}
