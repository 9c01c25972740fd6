"""Tests of the image, patch, slice and roi extractors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bidsapp_dl.errors import DataError, UsageError
from bidsapp_dl.extract.modes import (
    ImageExtractor,
    PatchExtractor,
    SliceExtractor,
    make_extractor,
)
from bidsapp_dl.extract.roi import RoiExtractor

CLINICADL_SHAPE = (169, 208, 179)
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
AFFINE[:3, 3] = [-84.0, -120.0, -70.0]


def code(x: int, y: int, z: int) -> int:
    return x * 10000 + y * 100 + z


def coded_volume(shape: tuple[int, int, int], dtype=np.float32) -> np.ndarray:
    """A volume whose voxel (x, y, z) holds ``code(x, y, z)``, to check which voxels we got."""
    x, y, z = (np.arange(n) for n in shape)
    volume = x[:, None, None] * 10000 + y[None, :, None] * 100 + z[None, None, :]
    volume = volume.astype(dtype)
    volume.flags.writeable = False
    return volume


@pytest.fixture(scope="module")
def clinicadl_volume() -> np.ndarray:
    return coded_volume(CLINICADL_SHAPE)


def save_mask(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


# image -----------------------------------------------------------------------------------------
def test_image_is_one_view_of_the_whole_volume():
    volume = coded_volume((4, 5, 6))
    extractor = ImageExtractor()
    assert extractor.n_samples(volume.shape) == 1
    assert extractor.sample_shape(volume.shape) == (1, 4, 5, 6)
    sample = extractor.extract(volume, 0)
    assert sample.shape == (1, 4, 5, 6)
    assert np.shares_memory(sample, volume)
    assert np.array_equal(sample[0], volume)
    for bad in (1, -1):
        with pytest.raises(IndexError):
            extractor.extract(volume, bad)


# patch -----------------------------------------------------------------------------------------
def test_patches_of_a_cropped_t1_match_clinicadl(clinicadl_volume):
    extractor = PatchExtractor(patch_size=50, stride=50)
    assert extractor.n_samples(CLINICADL_SHAPE) == 36
    assert extractor.grid_shape(CLINICADL_SHAPE) == (3, 4, 3)
    assert extractor.sample_shape(CLINICADL_SHAPE) == (1, 50, 50, 50)
    for i in range(36):
        origin = tuple(int(v) * 50 for v in np.unravel_index(i, (3, 4, 3)))
        assert extractor.patch_origin(CLINICADL_SHAPE, i) == origin
        patch = extractor.extract(clinicadl_volume, i)
        assert patch.shape == (1, 50, 50, 50)
        assert np.shares_memory(patch, clinicadl_volume)
        assert patch[0, 0, 0, 0] == code(*origin)
        assert patch[0, -1, -1, -1] == code(*(o + 49 for o in origin))
    assert extractor.patch_origin(CLINICADL_SHAPE, 35) == (100, 150, 100)
    with pytest.raises(IndexError):
        extractor.extract(clinicadl_volume, 36)
    with pytest.raises(IndexError):
        extractor.extract(clinicadl_volume, -1)


def test_overlapping_patches_when_stride_is_smaller_than_size():
    volume = coded_volume((10, 10, 10))
    extractor = PatchExtractor(patch_size=4, stride=3)
    assert extractor.n_samples(volume.shape) == 27
    first, second = extractor.extract(volume, 0), extractor.extract(volume, 1)
    assert extractor.patch_origin(volume.shape, 1) == (0, 0, 3)
    assert np.array_equal(first[..., 3], second[..., 0])
    assert extractor.extract(volume, 26)[0, 0, 0, 0] == code(6, 6, 6)


def test_patch_borders_are_dropped_when_shape_is_not_a_multiple():
    volume = coded_volume((11, 9, 7))
    extractor = PatchExtractor(patch_size=4, stride=2)
    assert extractor.grid_shape(volume.shape) == (4, 3, 2)
    assert extractor.n_samples(volume.shape) == 24
    last = extractor.extract(volume, 23)
    assert last[0, 0, 0, 0] == code(6, 4, 2)
    assert last[0, -1, -1, -1] == code(9, 7, 5)
    with pytest.raises(IndexError):
        extractor.extract(volume, 24)


def test_one_patch_extractor_serves_several_shapes():
    extractor = PatchExtractor(patch_size=2, stride=2)
    small, large = coded_volume((4, 4, 4)), coded_volume((6, 4, 2))
    assert extractor.n_samples(small.shape) == 8
    assert extractor.n_samples(large.shape) == 6
    assert extractor.extract(large, 5)[0, 0, 0, 0] == code(4, 2, 0)
    assert extractor.extract(small, 7)[0, 0, 0, 0] == code(2, 2, 2)


@pytest.mark.parametrize("kwargs", [{"patch_size": 0}, {"stride": 0}, {"stride": 1.5}])
def test_bad_patch_parameters_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        PatchExtractor(**kwargs)


def test_patch_larger_than_volume_is_a_usage_error():
    extractor = PatchExtractor(patch_size=8, stride=8)
    with pytest.raises(UsageError, match="larger than the volume"):
        extractor.n_samples((10, 7, 10))
    with pytest.raises(UsageError):
        extractor.extract(coded_volume((10, 7, 10)), 0)


# slice -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_along_each_axis_skip_the_discarded_ones(axis):
    shape = (6, 7, 8)
    volume = coded_volume(shape)
    extractor = SliceExtractor(axis=axis, discarded_slices=(1, 2))
    n = shape[axis] - 3
    plane = tuple(d for a, d in enumerate(shape) if a != axis)
    assert extractor.n_samples(shape) == n
    assert extractor.sample_shape(shape) == (1, *plane)
    for i in (0, n - 1):
        sample = extractor.extract(volume, i)
        assert sample.shape == (1, *plane)
        assert np.shares_memory(sample, volume)
        assert extractor.slice_position(shape, i) == 1 + i
        assert np.array_equal(sample[0], np.take(volume, 1 + i, axis=axis))
        first, last = [0, 0, 0], [d - 1 for d in shape]
        first[axis] = last[axis] = 1 + i
        assert sample[0, 0, 0] == code(*first)
        assert sample[0, -1, -1] == code(*last)
    for bad in (n, -1):
        with pytest.raises(IndexError):
            extractor.extract(volume, bad)


def test_one_integer_discards_at_both_ends():
    volume = coded_volume((10, 3, 3))
    extractor = SliceExtractor(axis=0, discarded_slices=3)
    assert extractor.discarded_slices == (3, 3)
    assert extractor.n_samples(volume.shape) == 4
    assert extractor.extract(volume, 3)[0, 0, 0] == code(6, 0, 0)


def test_rgb_slices_are_three_identical_read_only_views():
    volume = coded_volume((5, 6, 7))
    extractor = SliceExtractor(axis=2, channels="rgb")
    assert extractor.sample_shape(volume.shape) == (3, 5, 6)
    sample = extractor.extract(volume, 4)
    assert sample.shape == (3, 5, 6)
    assert np.shares_memory(sample, volume)
    assert sample.strides[0] == 0
    assert not sample.flags.writeable
    assert np.array_equal(sample[0], volume[:, :, 4])
    assert np.array_equal(sample[0], sample[1]) and np.array_equal(sample[1], sample[2])


@pytest.mark.parametrize(
    "kwargs",
    [{"axis": 3}, {"axis": -1}, {"discarded_slices": -1}, {"discarded_slices": (1, 2, 3)},
     {"channels": "rgba"}],
)
def test_bad_slice_parameters_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        SliceExtractor(**kwargs)


def test_discarding_every_slice_is_a_usage_error():
    extractor = SliceExtractor(axis=1, discarded_slices=(2, 3))
    assert extractor.n_samples((4, 6, 4)) == 1
    with pytest.raises(UsageError, match="leaves no coronal slice"):
        extractor.n_samples((4, 5, 4))


# roi -------------------------------------------------------------------------------------------
def box_mask(shape, box):
    mask = np.zeros(shape, dtype=np.uint8)
    mask[tuple(slice(lo, hi) for lo, hi in box)] = 1
    return mask


def test_roi_from_mask_files(tmp_path):
    shape = (12, 10, 8)
    volume = coded_volume(shape)
    left = box_mask(shape, [(1, 4), (2, 6), (3, 5)])
    left[1, 2, 3] = 0  # inside the box but outside the mask
    right = box_mask(shape, [(7, 11), (0, 3), (5, 8)])
    paths = [
        save_mask(tmp_path / "tpl-X_res-1_roi-right_mask.nii.gz", right.astype(np.float32)),
        save_mask(tmp_path / "tpl-X_label-left_mask.nii", left),
    ]
    extractor = RoiExtractor.from_mask_files(paths, shape, AFFINE)
    assert extractor.names == ["left", "right"]
    assert extractor.n_samples(shape) == 2
    assert extractor.sample_shape(shape, 0) == (1, 3, 4, 2)
    assert extractor.sample_shape(shape, 1) == (1, 4, 3, 3)
    sample = extractor.extract(volume, 0)
    assert sample.shape == (1, 3, 4, 2)
    assert sample[0, 0, 0, 0] == 0
    assert sample[0, 0, 0, 1] == code(1, 2, 4)
    assert sample[0, -1, -1, -1] == code(3, 5, 4)
    assert np.array_equal(sample[0], volume[1:4, 2:6, 3:5] * left[1:4, 2:6, 3:5])
    assert extractor.extract(volume, 1)[0, 0, 0, 0] == code(7, 0, 5)
    assert extractor.roi_box(1) == ((7, 11), (0, 3), (5, 8))
    for bad in (2, -1):
        with pytest.raises(IndexError):
            extractor.extract(volume, bad)
    with pytest.raises(UsageError, match="different bounding boxes"):
        extractor.sample_shape(shape)
    with pytest.raises(DataError):
        extractor.extract(coded_volume((12, 10, 9)), 0)


def test_roi_name_falls_back_to_the_file_stem(tmp_path):
    path = save_mask(tmp_path / "hippocampus.nii.gz", box_mask((4, 4, 4), [(1, 2)] * 3))
    assert RoiExtractor.from_mask_files([path], (4, 4, 4), AFFINE).names == ["hippocampus"]


def test_non_binary_mask_is_a_data_error_naming_the_file(tmp_path):
    data = box_mask((4, 4, 4), [(0, 2)] * 3).astype(np.float32)
    data[3, 3, 3] = 0.5
    path = save_mask(tmp_path / "label-blurry_mask.nii.gz", data)
    with pytest.raises(DataError, match="label-blurry_mask.nii.gz") as info:
        RoiExtractor.from_mask_files([path], (4, 4, 4), AFFINE)
    assert "0.5" in str(info.value)


@pytest.mark.parametrize("shift", [(0.0, 0.0, 0.01), None])
def test_mask_in_another_space_is_a_data_error(tmp_path, shift):
    affine, shape = AFFINE.copy(), (4, 4, 4)
    if shift is None:
        shape = (4, 4, 5)
    else:
        affine[:3, 3] += shift
    path = save_mask(tmp_path / "label-moved_mask.nii.gz", box_mask(shape, [(0, 2)] * 3), affine)
    with pytest.raises(DataError, match="space of the stored tensors") as info:
        RoiExtractor.from_mask_files([path], (4, 4, 4), AFFINE)
    assert "label-moved_mask.nii.gz" in str(info.value)


def test_affine_difference_within_tolerance_is_accepted(tmp_path):
    affine = AFFINE.copy()
    affine[0, 3] += 5e-4
    path = save_mask(tmp_path / "label-ok_mask.nii.gz", box_mask((4, 4, 4), [(0, 2)] * 3), affine)
    assert RoiExtractor.from_mask_files([path], (4, 4, 4), AFFINE).names == ["ok"]


def test_empty_mask_is_a_data_error(tmp_path):
    path = save_mask(tmp_path / "label-none_mask.nii.gz", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(DataError, match="label-none_mask.nii.gz"):
        RoiExtractor.from_mask_files([path], (4, 4, 4), AFFINE)
    with pytest.raises(DataError, match="empty"):
        RoiExtractor({"none": np.zeros((4, 4, 4), bool)}, crop=False)


def test_roi_from_a_segmentation():
    shape = (10, 10, 10)
    volume = coded_volume(shape)
    seg = np.zeros(shape, dtype=np.int16)
    seg[2:4, 2:4, 2:4] = 17
    seg[6:9, 5:6, 1:2] = 53
    grouped = RoiExtractor.from_segmentation(seg, {"hippocampus": [17, 53]})
    sample = grouped.extract(volume, 0)
    assert sample.shape == (1, 7, 4, 3)
    assert np.array_equal(sample[0], (volume * np.isin(seg, [17, 53]))[2:9, 2:6, 1:4])
    separate = RoiExtractor.from_segmentation(seg, [53, 17])
    assert separate.names == ["label-17", "label-53"]
    assert separate.extract(volume, 1)[0, 0, 0, 0] == code(6, 5, 1)
    with pytest.raises(DataError, match="labels present"):
        RoiExtractor.from_segmentation(seg, [17, 99])


def test_box_shape_is_centred_and_zero_padded_at_the_border():
    shape = (10, 10, 10)
    volume = coded_volume(shape) + 1  # no voxel holds 0, so padding is visible
    corner = RoiExtractor({"corner": box_mask(shape, [(0, 2), (4, 6), (8, 10)])}, box_shape=6)
    assert corner.roi_box(0) == ((-2, 4), (2, 8), (6, 12))
    assert corner.sample_shape(shape) == (1, 6, 6, 6)
    sample = corner.extract(volume, 0)
    assert sample.shape == (1, 6, 6, 6)
    assert np.all(sample[0, :2] == 0) and np.all(sample[0, :, :, 4:] == 0)
    assert sample[0, 2, 2, 2] == code(0, 4, 8) + 1
    assert sample[0, 3, 3, 3] == code(1, 5, 9) + 1
    assert np.count_nonzero(sample) == 8
    # Another subject's mask of another size gives the same sample shape.
    inner = RoiExtractor({"inner": box_mask(shape, [(3, 6), (3, 4), (3, 8)])}, box_shape=(4, 4, 4))
    assert inner.extract(volume, 0).shape == (1, 4, 4, 4)


def test_roi_without_crop_keeps_the_whole_grid():
    shape = (5, 5, 5)
    volume = coded_volume(shape)
    mask = box_mask(shape, [(1, 2), (1, 3), (2, 4)])
    sample = RoiExtractor({"r": mask}, crop=False).extract(volume, 0)
    assert sample.shape == (1, *shape)
    assert np.array_equal(sample[0], volume * mask)


# memory maps and make_extractor ---------------------------------------------------------------
def test_extractors_work_on_a_read_only_float16_memory_map(tmp_path):
    shape = (6, 7, 8)
    # Values stay below 2048, where float16 holds every integer exactly.
    stored = (np.arange(np.prod(shape)).reshape(shape)).astype(np.float16)
    np.save(tmp_path / "t1w.npy", stored)
    volume = np.load(tmp_path / "t1w.npy", mmap_mode="r")
    for extractor in (ImageExtractor(), PatchExtractor(3, 2), SliceExtractor(1, 1, "rgb")):
        last = extractor.n_samples(volume.shape) - 1
        sample = extractor.extract(volume, last)
        assert sample.dtype == np.float16
        assert np.shares_memory(sample, volume)
        assert sample.shape == extractor.sample_shape(volume.shape)
    assert PatchExtractor(3, 2).extract(volume, 17)[0, 0, 0, 0] == stored[2, 4, 4]
    roi = RoiExtractor({"r": box_mask(shape, [(1, 3), (2, 4), (5, 7)])})
    sample = roi.extract(volume, 0)
    assert sample.dtype == np.float16
    assert np.array_equal(sample[0], stored[1:3, 2:4, 5:7])


@pytest.mark.parametrize(
    "extractor",
    [ImageExtractor(), PatchExtractor(32, 16), SliceExtractor(2, (4, 1), "rgb")],
    ids=["image", "patch", "slice"],
)
def test_params_are_json_and_rebuild_the_extractor(extractor):
    params = json.loads(json.dumps(extractor.params()))
    rebuilt = make_extractor(**params)
    assert type(rebuilt) is type(extractor)
    assert rebuilt.params() == extractor.params()


def test_make_extractor_reports_bad_modes_and_parameters():
    assert make_extractor("roi", masks={"a": np.ones((2, 2, 2), bool)}).names == ["a"]
    with pytest.raises(UsageError, match="did you mean 'patch'"):
        make_extractor("patches")
    with pytest.raises(UsageError, match="bad parameters"):
        make_extractor("patch", size=3)
    json.dumps(RoiExtractor({"a": np.ones((2, 2, 2), bool)}, box_shape=2).params())
