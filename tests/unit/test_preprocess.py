"""Tests for bidsapp_dl.extract.preprocess on synthetic heads defined in world space."""

from __future__ import annotations

import gzip
import json
import os
import zlib

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from bidsapp_dl.errors import BadImageError, DataError, InputMissingError, UsageError
from bidsapp_dl.extract import preprocess as pp
from bidsapp_dl.extract.preprocess import (
    Preprocessed,
    PreprocessingParams,
    load_image,
    preprocess,
)

from ..conftest import axis_aligned_matrix

HEAD_CENTRE = np.array([10.0, -20.0, 15.0])  # world mm
SEMI_AXES = np.array([65.0, 85.0, 75.0])
ARRAY_CENTRE = HEAD_CENTRE + np.array([-30.0, 30.0, -40.0])  # the head sits off-centre
FEATURE_OFFSET = np.array([20.0, 25.0, 30.0])  # from the head centre, inside the head
SMALL = {"voxel_size": 3.0, "target_shape": (56, 68, 60)}


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    rot = np.eye(3)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
    return rot


ORIENTATIONS = {
    "RAS": (np.eye(3), (2.0, 2.5, 3.0)),
    "LPS": (np.diag([-1.0, -1.0, 1.0]), (2.5, 2.5, 2.5)),
    "PIR": (np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]]), (3.0, 2.0, 2.5)),
    "oblique": (_rotation(2, -15) @ _rotation(0, 25), (2.2, 2.2, 3.0)),
}


def phantom(orientation: str = "RAS", fov: float = 300.0, seed: int = 0):
    """Return a head (ellipsoid, neck, bright 3x3x3 feature) and the feature's world mm."""
    rotation, zooms = ORIENTATIONS[orientation]
    shape = tuple(int(np.ceil(fov / z)) for z in zooms)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(zooms)
    affine[:3, 3] = ARRAY_CENTRE - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:]).T - HEAD_CENTRE
    head = (((xyz / SEMI_AXES) ** 2).sum(axis=1) < 1) | (
        (xyz[:, 0] ** 2 + (xyz[:, 1] + 10) ** 2 < 30**2) & (xyz[:, 2] < 0)
    )
    noise = np.random.default_rng(seed).normal(0.0, 3.0, head.size)
    data = np.abs(np.where(head, 100.0 + 0.2 * xyz[:, 2], 0.0) + noise).reshape(shape)
    centre = np.rint(np.linalg.solve(affine, np.append(HEAD_CENTRE + FEATURE_OFFSET, 1)))[:3]
    i, j, k = centre.astype(int)
    data[i - 1 : i + 2, j - 1 : j + 2, k - 1 : k + 2] = 1000.0
    return nib.Nifti1Image(data.astype(np.float32), affine), (affine @ np.append(centre, 1))[:3]


def save(img: nib.Nifti1Image, path) -> str:
    img.to_filename(str(path))
    return str(path)


def world_to_voxel(affine: np.ndarray, point: np.ndarray) -> np.ndarray:
    return np.linalg.solve(affine, np.append(point, 1.0))[:3]


def feature_centroid(result: Preprocessed) -> np.ndarray:
    weights = np.clip(result.data.astype(np.float64) - 200.0, 0.0, None)
    return (np.indices(result.data.shape).reshape(3, -1) @ weights.ravel()) / weights.sum()


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_feature_lands_on_its_world_coordinate(orientation, tmp_path):
    img, feature = phantom(orientation)
    loaded = load_image(save(img, tmp_path / f"{orientation}.nii.gz"))
    result = preprocess(loaded, PreprocessingParams(**SMALL, normalization="none"))
    assert result.data.shape == SMALL["target_shape"]
    assert nib.aff2axcodes(result.affine) == ("R", "A", "S")
    np.testing.assert_allclose(result.affine[:3, :3], 3.0 * np.eye(3), atol=1e-9)
    expected = world_to_voxel(result.affine, feature)
    # A 3x3x3 input block seen by trilinear interpolation: its weighted centre is its centre.
    np.testing.assert_allclose(feature_centroid(result), expected, atol=0.35)
    peak = np.unravel_index(np.argmax(result.data), result.data.shape)
    assert np.abs(np.array(peak) - expected).max() <= 1.0
    assert result.info["source_orientation"] == (orientation if len(orientation) == 3 else "RAS")


@pytest.mark.parametrize("orientation", ["RAS", "PIR", "oblique"])
def test_grid_is_centred_on_the_head_not_the_array_or_neck(orientation):
    img, _ = phantom(orientation)
    result = preprocess(img, PreprocessingParams(**SMALL))
    centre_voxel = world_to_voxel(result.affine, HEAD_CENTRE)
    middle = (np.array(SMALL["target_shape"]) - 1) / 2
    # x and y are symmetric; the neck may pull z a little, never by a long neck's worth (~20 mm).
    assert np.abs(centre_voxel[:2] - middle[:2]).max() <= 1.0
    assert abs(centre_voxel[2] - middle[2]) * 3.0 <= 8.0
    mask = result.data > 0.2
    com = np.array(np.nonzero(mask)).mean(axis=1)
    assert np.abs(com - middle).max() * 3.0 <= 10.0
    # The top of the head stays inside the field of view, with air above it.
    assert mask[:, :, -3:].sum() == 0 and mask.any(axis=(0, 1))[-20:].any()
    np.testing.assert_allclose(result.info["head_centre_mm"], HEAD_CENTRE, atol=8.0)


def test_orientations_give_the_same_anatomy():
    results = [preprocess(phantom(o)[0], PreprocessingParams(**SMALL)) for o in ORIENTATIONS]
    reference = results[0].data.ravel()
    for other in results[1:]:
        assert np.corrcoef(reference, other.data.ravel())[0, 1] > 0.95


def test_real_image_is_copied_exactly_onto_a_matching_grid():
    path = os.path.join(data_path, "anatomical.nii")
    source = nib.load(path)
    values = np.asanyarray(source.dataobj, dtype=np.float32)
    params = PreprocessingParams(voxel_size=2.0, target_shape=(40, 48, 40), normalization="none")
    result = preprocess(load_image(path), params)
    assert nib.aff2axcodes(source.affine) == ("L", "A", "S")
    assert nib.aff2axcodes(result.affine) == ("R", "A", "S")
    # Same voxel size, snapped origin: every output voxel inside the input is an input voxel.
    ijk = np.indices(result.data.shape).reshape(3, -1)
    src = np.linalg.solve(source.affine, result.affine @ np.vstack([ijk, np.ones(ijk.shape[1])]))
    src = src[:3]
    np.testing.assert_allclose(src, np.rint(src), atol=1e-6)
    src = np.rint(src).astype(int)
    inside = np.all((src >= 0) & (src < np.array(values.shape)[:, None]), axis=0)
    assert inside.mean() > 0.3
    np.testing.assert_array_equal(result.data.ravel()[inside], values[tuple(src[:, inside])])
    assert np.all(result.data.ravel()[~inside] == 0)


def test_real_image_default_grid_is_sensible():
    result = preprocess(load_image(os.path.join(data_path, "anatomical.nii")))
    assert result.data.shape == (169, 208, 179) and result.data.dtype == np.float32
    assert result.data.flags.c_contiguous and np.isfinite(result.data).all()
    assert result.data.min() == 0.0 and result.data.max() == 1.0
    assert result.info["head_found"] and result.info["source_zooms_mm"] == [2.0, 2.0, 2.0]
    com = np.array(np.nonzero(result.data > 0.1)).mean(axis=1)
    assert np.abs(com - (np.array(result.data.shape) - 1) / 2).max() < 8
    json.dumps(result.info)


@pytest.fixture(scope="module")
def raw_and_params():
    img, _ = phantom("RAS")
    base = preprocess(img, PreprocessingParams(**SMALL, normalization="none"))
    return img, base


def test_robust_minmax_maps_head_percentiles_to_unit_range(raw_and_params):
    img, base = raw_and_params
    result = preprocess(img, PreprocessingParams(**SMALL))
    head = base.data[base.data > base.info["foreground_threshold"]]
    low, high = np.percentile(head, (0.5, 99.5))
    # Head tissue and its partial-volume edge; neither background nor the feature.
    assert base.info["foreground_threshold"] < low < 50.0 and 100.0 < high < 200.0
    expected = np.clip((base.data - np.float32(low)) / np.float32(high - low), 0, 1)
    np.testing.assert_allclose(result.data, expected, atol=1e-5)
    assert result.data.min() == 0.0 and result.data.max() == 1.0
    assert result.info["intensity"]["over"] == "head"


def test_zscore_is_standard_over_the_head(raw_and_params):
    img, base = raw_and_params
    result = preprocess(img, PreprocessingParams(**SMALL, normalization="zscore"))
    head = result.data[base.data > base.info["foreground_threshold"]]
    assert abs(head.mean()) < 1e-3 and abs(head.std() - 1.0) < 1e-3
    stats = result.info["intensity"]
    # The background is shifted and scaled like the rest, not clipped.
    expected = (base.data - np.float32(stats["mean"])) / np.float32(stats["sd"])
    np.testing.assert_allclose(result.data, expected, atol=1e-5)
    assert result.data.min() < -3.0


def test_minmax_and_none(raw_and_params):
    img, base = raw_and_params
    result = preprocess(img, PreprocessingParams(**SMALL, normalization="minmax"))
    lo, hi = base.data.min(), base.data.max()
    np.testing.assert_allclose(result.data, (base.data - lo) / (hi - lo), atol=1e-6)
    assert result.data.min() == 0.0 and result.data.max() == 1.0
    assert base.data.max() == pytest.approx(1000.0, rel=1e-3)  # 'none' keeps raw intensities


def test_nonfinite_voxels_are_zeroed_and_counted(tmp_path):
    img, _ = phantom("RAS")
    data = np.asanyarray(img.dataobj).copy()
    data[50, 60, 50:55] = np.nan
    data[0, 0, :3] = np.inf
    data[1, 1, 1] = -np.inf
    loaded = load_image(save(nib.Nifti1Image(data, img.affine), tmp_path / "nan.nii.gz"))
    for mode in ("minimal", "none"):
        result = preprocess(loaded, PreprocessingParams(**SMALL, preprocessing=mode))
        assert result.info["n_nonfinite"] == 9 and np.isfinite(result.data).all()
    kept = preprocess(loaded, PreprocessingParams(preprocessing="none", normalization="none"))
    assert kept.data[50, 60, 52] == 0.0 and kept.data[0, 0, 0] == 0.0
    assert np.isnan(np.asanyarray(loaded.dataobj)[50, 60, 52])  # the input is left alone


def test_none_keeps_grid_and_scaled_int16_values(tmp_path):
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 3000, (20, 24, 18)).astype(np.int16)
    img = nib.Nifti1Image(raw, np.diag([-1.2, 1.0, 1.5, 1.0]))
    img.header.set_slope_inter(0.5, 10.0)
    loaded = load_image(save(img, tmp_path / "int.nii"))
    params = PreprocessingParams(preprocessing="none", normalization="none")
    result = preprocess(loaded, params)
    np.testing.assert_array_equal(result.affine, loaded.affine)
    np.testing.assert_allclose(result.data, raw * 0.5 + 10.0, rtol=1e-6)
    assert result.info["source_dtype"] == "int16" and result.info["source_orientation"] == "LAS"


def test_float16_is_cast_last(raw_and_params):
    img, _ = raw_and_params
    f32 = preprocess(img, PreprocessingParams(**SMALL))
    f16 = preprocess(img, PreprocessingParams(**SMALL, dtype="float16"))
    assert f16.data.dtype == np.float16 and f16.data.flags.c_contiguous
    np.testing.assert_allclose(f16.data, f32.data, atol=1e-3)
    big = nib.Nifti1Image(np.asanyarray(img.dataobj) * 1000.0, img.affine)
    raw16 = preprocess(big, PreprocessingParams(**SMALL, normalization="none", dtype="float16"))
    assert np.isfinite(raw16.data).all() and raw16.info["n_float16_clipped"] > 0


def test_deterministic_bytes(tmp_path):
    path = save(phantom("oblique")[0], tmp_path / "obl.nii.gz")
    params = PreprocessingParams(**SMALL, dtype="float16")
    first, second = (preprocess(load_image(path), params) for _ in range(2))
    assert first.data.tobytes() == second.data.tobytes()
    assert first.affine.tobytes() == second.affine.tobytes() and first.info == second.info


def test_params_are_validated_and_json_ready():
    params = PreprocessingParams(voxel_size=2, target_shape=[10, 12, 14])
    assert params.target_shape == (10, 12, 14)
    assert json.loads(json.dumps(params.as_dict())) == {
        "preprocessing": "minimal", "voxel_size": 2.0, "target_shape": [10, 12, 14],
        "normalization": "robust-minmax", "dtype": "float32",
    }
    for bad in ({"voxel_size": 0}, {"target_shape": (1, 2)}, {"target_shape": (1.5, 2, 2)},
                {"normalization": "l2"}, {"dtype": "int8"}, {"preprocessing": "full"}):
        with pytest.raises(UsageError):
            PreprocessingParams(**bad)


VALID_AFFINE = np.diag([2.5, 2.5, 2.5, 1.0])  # 2.5 mm voxels: a small image, but head-sized


def _valid_bytes(shape=(12, 14, 10, 1)) -> bytes:
    data = np.random.default_rng(2).random(shape).astype(np.float32)
    return nib.Nifti1Image(data, VALID_AFFINE).to_bytes()


def _singular_sform_bytes() -> bytes:
    raw = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)).to_bytes()
    header = nib.Nifti1Header(raw[:348])
    header["srow_y"] = 0.0  # the sform (code 2) is what nibabel reads the affine from
    return header.binaryblock + raw[348:]


HTML = b"<!DOCTYPE html>\n<html><body>Sign in to download</body></html>\n"
BAD_FILES = {
    "html.nii": HTML,
    "html.nii.gz": HTML,
    "text.nii": b"subject,age\n01,70\n" * 40,
    "empty.nii.gz": b"",
    "truncated.nii.gz": gzip.compress(_valid_bytes((30, 30, 30)), mtime=0)[:3000],
    "truncated.nii": _valid_bytes((30, 30, 30))[:5000],
    "badmagic.nii": _valid_bytes()[:344] + b"xxxx" + _valid_bytes()[348:],
    "four_d.nii.gz": gzip.compress(_valid_bytes((12, 14, 10, 3)), mtime=0),
    "two_d.nii": nib.Nifti1Image(np.ones((12, 14), np.float32), np.eye(4)).to_bytes(),
    "slice.nii": nib.Nifti1Image(np.ones((12, 14, 1), np.float32), np.eye(4)).to_bytes(),
    "zeros.nii": nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)).to_bytes(),
    "nans.nii": nib.Nifti1Image(np.full((8, 8, 8), np.nan, np.float32), np.eye(4)).to_bytes(),
    "singular.nii": _singular_sform_bytes(),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_files_raise_one_line_bad_image_error(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name])
    with pytest.raises(BadImageError) as caught:
        load_image(path)
    message = str(caught.value)
    assert name in message and "\n" not in message and ";" in message
    assert isinstance(caught.value, DataError) and caught.value.exit_code == 65
    expected = {"html": "HTML", "truncated": "truncated", "four_d": "3 volumes",
                "two_d": "2-D", "slice": "2-D", "zeros": "zero", "nans": "finite"}
    for key, words in expected.items():
        if name.startswith(key):
            assert words in message.replace(str(path), "")  # said, not just in the file name


def test_missing_file_is_input_missing(tmp_path):
    with pytest.raises(InputMissingError, match="absent.nii.gz"):
        load_image(tmp_path / "absent.nii.gz")


def test_misnamed_compression_nifti2_and_single_volume_4d_load(tmp_path):
    raw = _valid_bytes()
    expected = nib.Nifti1Image.from_bytes(raw).get_fdata()[..., 0]
    nifti2 = nib.Nifti2Image(expected[..., None].astype(np.float32), VALID_AFFINE).to_bytes()
    for name, content in (("gz_as.nii", gzip.compress(raw)), ("plain_as.nii.gz", raw),
                          ("two.nii", nifti2), ("two_gz_as.nii", gzip.compress(nifti2))):
        (tmp_path / name).write_bytes(content)
        img = load_image(tmp_path / name)
        assert img.shape == (12, 14, 10) and img.get_data_dtype() == np.float32
        np.testing.assert_array_equal(img.get_fdata(), expected)
        assert img.extra["source_shape"] == [12, 14, 10, 1]


def test_data_is_read_inside_load_image(tmp_path):
    path = tmp_path / "plain.nii"
    path.write_bytes(_valid_bytes())
    img = load_image(path)
    path.unlink()  # nothing may be left to read lazily from the file
    assert type(img.dataobj) is np.ndarray and img.dataobj.dtype == np.float32
    assert preprocess(img, PreprocessingParams(**SMALL)).data.shape == SMALL["target_shape"]


def test_constant_image_is_refused_by_name(tmp_path):
    path = save(nib.Nifti1Image(np.full((10, 10, 10), 5.0, np.float32), np.diag([3.0, 3, 3, 1])),
                tmp_path / "flat.nii")
    with pytest.raises(BadImageError, match="flat.nii.*constant"):
        preprocess(load_image(path))


def test_an_image_smaller_than_a_head_is_refused_by_its_extent(tmp_path):
    data = np.random.default_rng(3).random((40, 40, 5)).astype(np.float32)
    path = save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "slab.nii.gz")
    with pytest.raises(BadImageError, match=r"slab.nii.gz: covers only 40 x 40 x 5 mm"):
        load_image(path)
    save(nib.Nifti1Image(data, np.diag([1.0, 1, 4, 1])), path)  # 20 mm thick: accepted
    assert load_image(path).shape == (40, 40, 5)


@pytest.mark.parametrize("layout", ["C", "F"])
def test_axis_aligned_resampling_equals_scipy_trilinear(layout):
    """The separable path (permuted, flipped, scaled axes) gives scipy's interpolation, with
    points outside the input set to the background, whatever the memory order of the input."""
    from scipy import ndimage

    from bidsapp_dl.extract.preprocess import _resample_axes

    rng = np.random.default_rng(7)
    for _ in range(60):
        data = rng.normal(100.0, 30.0, size=(23, 31, 27)).astype(np.float32)
        data = np.asfortranarray(data) if layout == "F" else data
        # binary fractions: no sample point within rounding of an edge
        matrix, _ = axis_aligned_matrix(rng, [0.375, 0.5, 0.75, 1.0, 1.25, 2.0])
        offset = rng.uniform(-8.0, 35.0, 3)
        if rng.random() < 0.3:
            offset = np.round(offset)  # whole-voxel shifts: a plain copy
        shape = tuple(int(n) for n in rng.integers(4, 40, 3))
        expected = ndimage.affine_transform(data, matrix, offset=offset, output_shape=shape,
                                            output=np.float32, order=1, mode="constant",
                                            cval=-5.0, prefilter=False)
        got = _resample_axes(data, matrix, offset, shape, -5.0)
        assert got.shape == shape and got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_fortran_and_c_ordered_volumes_preprocess_to_the_same_bytes(tmp_path):
    """A NIfTI volume arrives Fortran-ordered; the same voxels in C order give the same tensor."""
    img = load_image(save(phantom("LPS")[0], tmp_path / "head.nii.gz"))
    assert img.get_fdata(dtype=np.float32).flags.f_contiguous
    c_img = nib.Nifti1Image(np.ascontiguousarray(img.get_fdata(dtype=np.float32)), img.affine)
    params = PreprocessingParams(**SMALL)
    a, b = preprocess(img, params), preprocess(c_img, params)
    assert a.data.tobytes() == b.data.tobytes()
    np.testing.assert_array_equal(a.affine, b.affine)


def test_gunzip_takes_every_member_and_refuses_corrupt_data(monkeypatch):
    """The one-buffer path serves single-member files; several members (bgzip-like, of equal
    sizes), a trailer whose size lies and corrupt data give what gzip gives, or an error."""
    rng = np.random.default_rng(4)
    payload = rng.integers(0, 40, 300_000, dtype=np.int16).tobytes()
    single = gzip.compress(payload, mtime=0)
    assert pp.igzip is not None, "isal is a dependency"
    with monkeypatch.context() as patch:  # a single member never needs the general path
        patch.setattr(pp.igzip, "decompress", lambda raw: pytest.fail("general path taken"))
        assert pp._gunzip(single) == payload
    halves = gzip.compress(payload[:300_000], mtime=0) + gzip.compress(payload[300_000:], mtime=0)
    assert pp._gunzip(halves) == payload  # each member is as long as the other
    lying = single[:-4] + (len(payload) - 16).to_bytes(4, "little")
    with pytest.raises(Exception, match="(?i)length|size|incorrect"):
        gzip.decompress(lying)
    with pytest.raises(Exception, match="(?i)length|size|incorrect"):
        pp._gunzip(lying)
    corrupt = bytearray(single)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises((EOFError, OSError, ValueError, zlib.error)):
        pp._gunzip(bytes(corrupt))
    assert pp.decompress(bytes(corrupt)) is None
    assert pp.decompress(single[: len(single) // 2]) is None  # truncated


@pytest.mark.parametrize("orientation", ["LPS", "oblique"])
def test_volume_path_gives_what_the_image_path_gives(orientation, tmp_path):
    """The participant level reads and preprocesses without a nibabel image in between:
    the same tensor, affine and facts as load_image + preprocess, and the file's name in the
    errors of both."""
    img, _ = phantom(orientation)
    path = save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.int16), img.affine),
                tmp_path / "sub-01_T1w.nii.gz")
    params = pp.PreprocessingParams(**SMALL)
    through_image = pp.preprocess(pp.load_image(path), params)
    data, affine, extra = pp.load_volume(path)
    assert data.dtype == np.float32 and extra["source_dtype"] == "int16"
    direct = pp.preprocess_volume(data, affine, extra, params)
    assert direct.data.tobytes() == through_image.data.tobytes()
    np.testing.assert_array_equal(direct.affine, through_image.affine)
    assert direct.info == through_image.info
    flat = np.zeros((40, 40, 40), np.float32)
    with pytest.raises(BadImageError, match="sub-01_T1w"):
        pp.preprocess_volume(flat + 3.0, affine, {**extra, "finite_range": (3.0, 3.0)}, params)


def test_normalisation_sample_taken_by_the_resampling_changes_nothing():
    """A default-size grid (over 2 million voxels: every 8th voxel is the sample): the sample
    the resampling takes gives the statistics, and so the tensor, of the one read back."""
    img, _ = phantom("oblique", fov=260.0)
    data = np.asarray(img.dataobj, dtype=np.float32)
    params = pp.PreprocessingParams()
    head, threshold = pp._find_head(data, img.affine, params.target_shape[2] * params.voxel_size)
    grid = pp._grid_affine(np.array(head["head_centre_mm"]), img.affine, params)
    sample = {"above": threshold}
    vol = pp._resample(data, img.affine, grid, params.target_shape, 0.0, sample=sample)
    assert vol.size > pp._STATS_MAX_VOXELS and sample["n"] > 1000
    again = vol.copy()
    with_sample = pp._normalize(vol, "robust-minmax", threshold, "x", sample)
    read_back = pp._normalize(again, "robust-minmax", threshold, "x")
    assert with_sample == read_back
    assert vol.tobytes() == again.tobytes()
