"""The compiled kernels (bidsapp_dl/extract/_kernels.c) against scipy and numpy.

The kernels are optional at install time (no C compiler, no kernels: the numpy/scipy code
runs), but wherever the tests run a compiler was there, so their absence is a failure.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bidsapp_dl.extract import preprocess as pp

from ..conftest import axis_aligned_matrix


def _kernels():
    assert pp._kernels is not None, (
        "bidsapp_dl.extract._kernels is not built: reinstall with a C compiler and the Python "
        "headers at hand (pip install -e . builds it)")
    return pp._kernels


def _scipy(data, matrix, offset, shape, cval):
    return ndimage.affine_transform(data, matrix, offset=offset, output_shape=shape,
                                    output=np.float32, order=1, mode="constant", cval=cval,
                                    prefilter=False)


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_trilinear_equals_scipy_on_oblique_grids(layout):
    """Rotated, sheared, scaled grids, partly outside the input: scipy's values and scipy's
    background, whatever the memory layout of the input."""
    kernels = _kernels()
    rng = np.random.default_rng(11)
    for _ in range(40):
        data = rng.normal(100.0, 30.0, size=(19, 27, 23)).astype(np.float32)
        if layout == "F":
            data = np.asfortranarray(data)
        elif layout == "strided":
            data = np.ascontiguousarray(np.repeat(data, 2, axis=1))[:, ::2, ::-1]
        matrix = _random_rotation(rng) * rng.uniform(0.4, 1.6, 3)
        if rng.random() < 0.3:
            matrix = matrix + rng.normal(0.0, 0.2, (3, 3))  # sheared
        offset = rng.uniform(-6.0, 30.0, 3)
        shape = tuple(int(n) for n in rng.integers(3, 36, 3))
        out = np.empty(shape, np.float32)
        kernels.trilinear(data, out, tuple(matrix.ravel()), tuple(offset), -7.0)
        expected = _scipy(data, matrix, offset, shape, -7.0)
        np.testing.assert_allclose(out, expected, rtol=0, atol=2e-4)
        assert ((out == -7.0) == (expected == -7.0)).mean() > 0.999  # same points outside


def test_oblique_vector_code_gives_the_bytes_of_the_scalar_code():
    """Where the processor has AVX-512 the oblique path gathers neighbours 8 points at a time;
    the scalar code does the rest. Both must give the same bytes, for every layout the vector
    code takes (a unit-stride axis: C, F, or the middle one) and those it leaves (flipped,
    strided), grids bigger than a tile and partly outside the input."""
    kernels = _kernels()
    rng = np.random.default_rng(23)
    base = rng.normal(300.0, 90.0, size=(41, 37, 45)).astype(np.float32)
    middle = np.ascontiguousarray(base.transpose(0, 2, 1)).transpose(0, 2, 1)
    assert middle.strides[1] == 4  # unit stride along the middle axis
    layouts = [base, np.asfortranarray(base), middle, base[::-1], base[:, ::2],
               np.asfortranarray(base)[:, :1]]
    outputs = {}
    try:
        for vector in (False, True):
            kernels.set_vector(vector)
            local = np.random.default_rng(29)
            runs = []
            for data in layouts:
                for _ in range(6):
                    matrix = _random_rotation(local) * local.uniform(0.5, 1.4, 3)
                    offset = local.uniform(-10.0, 40.0, 3)
                    shape = tuple(int(n) for n in local.integers(9, 50, 3))
                    out = np.empty(shape, np.float32)
                    kernels.trilinear(data, out, tuple(matrix.ravel()), tuple(offset), -3.0)
                    runs.append(out)
            outputs[vector] = runs
    finally:
        kernels.set_vector(True)
    for scalar, vector in zip(outputs[False], outputs[True], strict=True):
        assert scalar.tobytes() == vector.tobytes()
    # and the values are scipy's
    matrix = _random_rotation(rng) * 0.9
    out = np.empty((30, 33, 35), np.float32)
    kernels.trilinear(layouts[1], out, tuple(matrix.ravel()), (12.0, 9.0, 14.0), -3.0)
    np.testing.assert_allclose(out, _scipy(layouts[1], matrix, (12.0, 9.0, 14.0), out.shape, -3.0),
                               rtol=0, atol=2e-4)


def test_set_vector_reports_the_switch():
    kernels = _kernels()
    before, now = kernels.set_vector(False)
    assert now is False
    _, again = kernels.set_vector(True)
    assert isinstance(before, bool) and isinstance(again, bool)
    assert kernels.set_vector(True) == (again, again)


@pytest.mark.parametrize("layout", ["C", "F"])
def test_trilinear_axis_aligned_path_equals_scipy(layout):
    """Permuted, flipped and scaled axes take the path with per-axis tables; whole-voxel
    shifts are exact copies."""
    kernels = _kernels()
    rng = np.random.default_rng(5)
    for _ in range(60):
        data = rng.normal(50.0, 20.0, size=(21, 17, 25)).astype(np.float32)
        data = np.asfortranarray(data) if layout == "F" else data
        # binary fractions: no sample point within rounding of an edge
        matrix, _ = axis_aligned_matrix(rng, [0.375, 0.5, 1.0, 1.25, 2.0])
        offset = rng.uniform(-8.0, 30.0, 3)
        shape = tuple(int(n) for n in rng.integers(2, 40, 3))
        out = np.empty(shape, np.float32)
        kernels.trilinear(data, out, tuple(matrix.ravel()), tuple(offset), 3.5)
        np.testing.assert_allclose(out, _scipy(data, matrix, offset, shape, 3.5), rtol=0, atol=1e-4)
    data = rng.normal(size=(12, 10, 8)).astype(np.float32)
    out = np.empty((6, 5, 4), np.float32)
    kernels.trilinear(data, out, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (3.0, 2.0, 1.0), 0.0)
    np.testing.assert_array_equal(out, data[3:9, 2:7, 1:5])


def test_trilinear_axis_aligned_path_across_its_blocks():
    """Grids larger than the blocks the axis-aligned path works in (32 output rows and runs),
    on flipped and permuted axes of strided and one-voxel-thick inputs, partly outside."""
    kernels = _kernels()
    rng = np.random.default_rng(8)
    base = rng.normal(800.0, 300.0, size=(70, 64, 90)).astype(np.float32)
    inputs = [np.asfortranarray(base), base[::-1, ::2, 3:], base[:, 5:6, :], base[:1, :, :1]]
    for data in inputs:
        for _ in range(6):
            matrix, perm = axis_aligned_matrix(rng, [0.625, 0.8125, 1.5])
            shape = tuple(int(n) for n in rng.integers(33, 110, 3))
            offset = np.array([rng.uniform(-10.0, data.shape[perm[c]] + 10.0) for c in range(3)])
            offset = offset[np.argsort(perm)]  # offset is indexed by input axis
            out = np.empty(shape, np.float32)
            kernels.trilinear(data, out, tuple(matrix.ravel()), tuple(offset), -2.0)
            expected = _scipy(data, matrix, offset, shape, -2.0)
            np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-3)
            assert np.array_equal(out == -2.0, expected == -2.0)  # the same points outside


def test_trilinear_single_voxel_axis_and_edges():
    """An axis one voxel thick is constant along it; the last voxel of an axis is reached
    exactly, and a point just beyond it is background."""
    kernels = _kernels()
    data = np.arange(2 * 3 * 1, dtype=np.float32).reshape(2, 3, 1)
    out = np.empty((2, 3, 1), np.float32)
    kernels.trilinear(data, out, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (0.0, 0.0, 0.0), -1.0)
    np.testing.assert_array_equal(out, data)
    line = np.arange(4 * 2 * 2, dtype=np.float32).reshape(4, 2, 2)
    out = np.empty((2, 1, 1), np.float32)
    kernels.trilinear(line, out, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (2.5, 1.0, 1.0), -1.0)
    assert out[0, 0, 0] == pytest.approx((line[2, 1, 1] + line[3, 1, 1]) / 2)
    assert out[1, 0, 0] == -1.0  # x = 3.5 > 3


def test_trilinear_refuses_wrong_arrays():
    kernels = _kernels()
    ident = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    with pytest.raises(ValueError, match="float32"):
        kernels.trilinear(np.zeros((4, 4, 4)), np.empty((2, 2, 2), np.float32), ident, (0, 0, 0), 0.0)
    with pytest.raises(ValueError, match="3-D"):
        kernels.trilinear(np.zeros((4, 4), np.float32), np.empty((2, 2, 2), np.float32), ident,
                          (0, 0, 0), 0.0)
    with pytest.raises((ValueError, BufferError)):  # a read-only or non-contiguous output
        kernels.trilinear(np.zeros((4, 4, 4), np.float32), np.empty((4, 4, 4), np.float32)[::2],
                          ident, (0, 0, 0), 0.0)


@pytest.mark.parametrize("layout", ["C", "F"])
def test_block_sums_equal_numpy(layout):
    kernels = _kernels()
    rng = np.random.default_rng(2)
    for _ in range(20):
        data = rng.random(tuple(int(n) for n in rng.integers(5, 30, 3))).astype(np.float32)
        data = np.asfortranarray(data) if layout == "F" else data
        steps = tuple(int(rng.integers(1, min(5, n) + 1)) for n in data.shape)
        counts = [n // s for n, s in zip(data.shape, steps, strict=True)]
        out = np.empty(counts, np.float32)
        kernels.block_sums(data, out, steps)
        trimmed = data[:counts[0] * steps[0], :counts[1] * steps[1], :counts[2] * steps[2]]
        expected = trimmed.reshape(counts[0], steps[0], counts[1], steps[1], counts[2],
                                   steps[2]).sum(axis=(1, 3, 5), dtype=np.float64)
        np.testing.assert_allclose(out, expected, rtol=1e-5)
        # the vectorised lines (unit stride, steps of 2 or 3) add in the general loop's order
        inner = 0 if layout == "F" else 2
        spread = np.zeros(data.shape[:inner] + (2 * data.shape[inner],) + data.shape[inner + 1:],
                          np.float32, order=layout)
        index = [slice(None)] * 3
        index[inner] = slice(None, None, 2)
        spread[tuple(index)] = data
        general = np.empty(counts, np.float32)
        kernels.block_sums(spread[tuple(index)], general, steps)
        assert general.tobytes() == out.tobytes()
    with pytest.raises(ValueError, match="fit"):
        kernels.block_sums(np.zeros((4, 4, 4), np.float32), np.empty((3, 1, 1), np.float32),
                           (2, 2, 2))


def test_without_kernels_preprocess_gives_the_same_tensor(monkeypatch):
    """An install without a compiler (numpy and scipy only) gives the same tensor to float32
    rounding, for an axis-aligned and for an oblique image."""
    _kernels()
    rng = np.random.default_rng(3)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (40, 48, 44)), indexing="ij")
    head = ((x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.85) ** 2 < 1) * 800.0
    head = (head + rng.normal(0, 20, head.shape)).astype(np.float32)
    params = pp.PreprocessingParams(voxel_size=3.0, target_shape=(48, 56, 50))
    for rotation in (np.eye(3), np.array([[0.94, -0.34, 0], [0.34, 0.94, 0], [0, 0, 1.0]])):
        affine = np.eye(4)
        affine[:3, :3] = rotation * 3.2
        affine[:3, 3] = [-60.0, -70.0, -65.0]
        img = nib.Nifti1Image(np.asfortranarray(head), affine)
        compiled = pp.preprocess(img, params)
        with monkeypatch.context() as m:
            m.setattr(pp, "_kernels", None)
            plain = pp.preprocess(img, params)
        np.testing.assert_array_equal(compiled.affine, plain.affine)
        np.testing.assert_allclose(compiled.data, plain.data, rtol=0, atol=1e-5)
        a, b = dict(compiled.info), dict(plain.info)
        ia, ib = a.pop("intensity"), b.pop("intensity")
        assert ia.keys() == ib.keys() and ia["over"] == ib["over"] == "head"
        assert [ia["low"], ia["high"]] == pytest.approx([ib["low"], ib["high"]], rel=1e-6)
        assert a == b  # the same head, centre, threshold and background


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (float("nan"), float("nan"))])
def test_shift_scale_is_numpys_float32_arithmetic(bounds):
    """One pass in place, bit for bit what subtracting, dividing and clipping in numpy give."""
    kernels = _kernels()
    rng = np.random.default_rng(4)
    volume = rng.normal(300.0, 200.0, (31, 40, 27)).astype(np.float32)
    volume[0, 0, :3] = [np.nan, np.inf, -np.inf]
    expected = volume.copy()
    expected -= np.float32(12.3456)
    expected /= np.float32(678.9)
    if not np.isnan(bounds[0]):
        np.clip(expected, *bounds, out=expected)
    kernels.shift_scale(volume, 12.3456, 678.9, *bounds)
    np.testing.assert_array_equal(volume, expected)


def _value_sets(rng):
    """Volumes whose values make order statistics hard: ties, few levels, both signs, zeros of
    both signs, a constant, values spanning many octaves; in C, F and strided layouts."""
    for it in range(400):
        shape = tuple(int(n) for n in rng.integers(1, 24, 3))
        kind = it % 6
        if kind == 0:
            data = rng.normal(100.0, 30.0, shape)
        elif kind == 1:
            data = rng.integers(-3, 4, shape)
        elif kind == 2:
            data = (rng.random(shape) < 0.3) * rng.choice([1.5, -2.0, 0.0])
        elif kind == 3:
            data = np.exp(rng.normal(0.0, 5.0, shape)) * rng.choice([-1.0, 1.0], shape)
        elif kind == 4:
            data = np.full(shape, 7.25)
        else:
            data = np.where(rng.random(shape) < 0.5, -0.0, 0.0) + (rng.random(shape) < 0.1)
        data = data.astype(np.float32)
        if it % 3 == 1:
            data = np.asfortranarray(data)
        if it % 5 == 2:
            data = data[::-1, :, ::2]
        yield it, data


def test_percentiles_are_numpys():
    """Radix selection gives np.percentile's numbers exactly: for a tuple of percents (float64
    interpolation) and for one float (float32, as numpy does), over a strided sample and over
    the values above a threshold (compared in float32, as numpy compares)."""
    kernels = _kernels()
    rng = np.random.default_rng(41)
    checked = 0
    for it, data in _value_sets(rng):
        steps = tuple(int(s) for s in rng.integers(1, 4, 3))
        above = float("nan") if it % 2 else float(rng.normal(3.0, 40.0))
        percents = tuple(float(p) for p in rng.choice([0.0, 0.5, 1.0, 2.0, 33.3, 50.0, 99.0, 99.5, 100.0],
                                                      size=int(rng.integers(1, 6))))
        sample = data[::steps[0], ::steps[1], ::steps[2]]
        values = sample if it % 2 else sample[sample > above]
        n, got = kernels.percentiles(data, steps, above, percents, False)
        assert n == values.size
        if n == 0:
            assert got == ()
            continue
        np.testing.assert_array_equal(np.array(got), np.percentile(values, percents))
        _, (one,) = kernels.percentiles(data, steps, above, percents[:1], True)
        expected = np.percentile(values, percents[0])
        assert expected.dtype == np.float32 and np.float32(one) == expected and one == float(expected)
        checked += 1
    assert checked > 300
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan  # a NaN among all the values: NaN, as numpy says
    n, got = kernels.percentiles(data, (1, 1, 1), float("nan"), (1.0, 50.0), False)
    assert n == 64 and np.isnan(got).all() and np.isnan(np.percentile(data, (1.0, 50.0))).all()
    with pytest.raises(ValueError, match="steps"):
        kernels.percentiles(data, (0, 1, 1), float("nan"), (1.0,), False)


def test_percentiles_helper_without_kernels_gives_the_same(monkeypatch):
    _kernels()
    rng = np.random.default_rng(43)
    for it, data in _value_sets(rng):
        if it % 7:
            continue
        for args in [((2.0, 99.0), 1, None), (1.0, 4, None), ((0.5, 99.5), 2, 0.5)]:
            compiled = pp._percentiles(data, *args)
            with monkeypatch.context() as m:
                m.setattr(pp, "_kernels", None)
                plain = pp._percentiles(data, *args)
            assert compiled[0] == plain[0]
            if plain[0]:
                assert np.asarray(compiled[1]).dtype == np.asarray(plain[1]).dtype
                np.testing.assert_array_equal(compiled[1], plain[1])
            else:
                assert compiled[1] is plain[1] is None


def test_head_mask_is_scipys_largest_component_with_holes_filled(monkeypatch):
    """Smooth random fields cut at random thresholds: many components, ties, holes and
    cavities that reach the border or not, volumes one voxel thick; the kernel gives what
    scipy's labelling and hole filling give, and the same count."""
    from scipy import ndimage as ndi

    _kernels()
    rng = np.random.default_rng(47)
    tried = found = 0
    for _ in range(300):
        shape = tuple(int(n) for n in rng.integers(1, 18, 3))
        field = ndi.gaussian_filter(rng.normal(size=shape), rng.uniform(0.3, 2.0)).astype(np.float32)
        threshold = float(rng.normal(0.0, 0.1))
        n, head = pp._head_mask(field, threshold)
        with monkeypatch.context() as m:
            m.setattr(pp, "_kernels", None)
            n_ref, head_ref = pp._head_mask(field, threshold)
        assert n == n_ref
        if n:
            assert head.dtype == head_ref.dtype == np.bool_
            np.testing.assert_array_equal(head, head_ref)
            found += 1
        else:
            assert head is head_ref is None
        tried += 1
    assert found > 250
    # a shell around a cavity: the cavity is filled, what is outside is not
    ball = np.zeros((9, 9, 9), np.float32)
    ball[1:8, 1:8, 1:8] = 1.0
    ball[3:6, 3:6, 3:6] = 0.0
    n, head = pp._head_mask(ball, 0.5)
    assert n == 1 and head[4, 4, 4] and head[1:8, 1:8, 1:8].all() and not head[0].any()
    with pytest.raises(ValueError, match="mask"):
        _kernels().head_mask(ball, 0.5, np.empty((9, 9, 8), np.uint8))


def test_head_centre_is_numpys_centroid_near_the_top(monkeypatch):
    """Random masks, block steps and affines (oblique, flipped, the top near any corner), with
    heights that keep everything, a slice or a part: the kernel's centre and top are numpy's
    (argwhere, matmul, select, mean) to rounding."""
    _kernels()
    rng = np.random.default_rng(59)
    for _ in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 14, 3))
        head = rng.random(shape) < rng.uniform(0.05, 0.9)
        head.flat[rng.integers(head.size)] = True
        steps = rng.integers(1, 5, 3)
        affine = np.eye(4)
        affine[:3, :3] = rng.normal(0.0, 2.0, (3, 3))
        affine[:3, 3] = rng.uniform(-100.0, 100.0, 3)
        for height in (math.inf, 0.0, float(rng.uniform(0.5, 20.0))):
            centre, top = pp._head_centre(head, steps, affine, height)
            with monkeypatch.context() as m:
                m.setattr(pp, "_kernels", None)
                centre_ref, top_ref = pp._head_centre(head, steps, affine, height)
            assert top == pytest.approx(top_ref, rel=1e-12, abs=1e-9)
            np.testing.assert_allclose(centre, centre_ref, rtol=1e-12, atol=1e-9)
    # one block at the top and a slab far below it: the slab counts only with the height
    head = np.zeros((4, 4, 4), bool)
    head[:, :, 0] = True
    head[1, 2, 3] = True
    centre, top = pp._head_centre(head, np.array([2, 2, 2]), np.diag([1.0, 1.0, 1.0, 1.0]), 2.0)
    assert top == 6.5 and centre == [2.5, 4.5, 6.5]
    with pytest.raises(ValueError, match="empty"):
        _kernels().head_centre(np.zeros((3, 3, 3), bool), (1, 1, 1), tuple(range(12)), 1.0)

@pytest.mark.parametrize("dtype", ["i1", "u1", "<i2", ">i2", "<u2", "<i4", "<f4", "<f8"])
def test_loaded_voxels_and_range_are_numpys_for_every_stored_type(tmp_path, monkeypatch, dtype):
    """Integers go through widen() (converted, scaled, range taken in one pass), other types
    through numpy; either way the voxels and the range load_image records are what numpy's
    astype, *= and += give, with and without scaling, negative slopes included."""
    _kernels()
    rng = np.random.default_rng(53)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low, high = (max(info.min, -30000), min(info.max, 30000)) if info else (-500.0, 4000.0)
    stored = rng.uniform(low, high, (23, 19, 17)).astype(dtype)
    for k, (slope, inter) in enumerate([(None, None), (1.0, 0.0), (0.37, 12.5), (-2.5, -3.0)]):
        img = nib.Nifti1Image(stored, np.diag([3.0, 3.0, 3.0, 1.0]))
        img.header.set_data_dtype(np.dtype(dtype))
        if slope is not None:
            img.header.set_slope_inter(slope, inter)
        path = tmp_path / f"v{k}.nii"
        img.to_filename(path)
        loaded = pp.load_image(path)
        with monkeypatch.context() as m:
            m.setattr(pp, "_kernels", None)
            plain = pp.load_image(path)
        data, reference = np.asanyarray(loaded.dataobj), np.asanyarray(plain.dataobj)
        assert data.dtype == np.float32 and data.flags.f_contiguous
        assert data.tobytes(order="A") == reference.tobytes(order="A")
        assert loaded.extra["finite_range"] == plain.extra["finite_range"]
        assert loaded.extra["finite_range"] == (float(reference.min()), float(reference.max()))


def test_widen_refuses_what_it_does_not_convert():
    kernels = _kernels()
    out = np.empty(4, np.float32)
    for bad in (np.zeros(4, np.float32), np.zeros(4, np.int64), np.zeros(3, np.int16)):
        with pytest.raises(ValueError, match="int16"):
            kernels.widen(bad, out, False, 1.0, False, 0.0)


def test_widen_takes_the_block_sums_of_what_it_widens(tmp_path):
    """widen() with sums adds each line's blocks while the line is in the cache: the same
    floats as block_sums of the widened volume, for any steps; load_volume hands them to the
    head finder, which then gives what it gives without them."""
    kernels = _kernels()
    rng = np.random.default_rng(59)
    for it in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 26, 3))
        steps = tuple(int(rng.integers(1, min(5, n) + 1)) for n in shape)
        stored = rng.integers(-3000, 3000, shape).astype(np.int16)
        out = np.empty(shape, np.float32, order="F")
        sums = np.empty([n // s for n, s in zip(shape, steps, strict=True)], np.float32)
        scale = bool(it % 2)
        kernels.widen(stored.ravel(order="F"), out.reshape(-1, order="A"), scale,
                      0.37 if scale else 1.0, True, 2.5, sums, steps, shape)
        expected = np.empty_like(sums)
        kernels.block_sums(out, expected, steps)
        assert sums.tobytes() == expected.tobytes()
    with pytest.raises(ValueError, match="whole blocks"):
        kernels.widen(np.zeros(64, np.int16), np.empty(64, np.float32), False, 1.0, False, 0.0,
                      np.empty((3, 1, 1), np.float32), (2, 4, 4), (4, 4, 4))
    head = np.zeros((40, 44, 36), np.int16)
    head[8:32, 8:36, 6:30] = 900
    path = tmp_path / "h.nii.gz"
    nib.Nifti1Image(head, np.diag([4.0, 4.0, 4.0, 1.0])).to_filename(path)
    data, affine, extra = pp.load_volume(path)
    steps, sums = extra["block_sums"]
    plain, plain_steps = pp._block_means(data, affine)
    assert tuple(plain_steps) == tuple(steps)
    assert (sums / np.float32(np.prod(steps))).tobytes() == plain.tobytes()
    params = pp.PreprocessingParams(voxel_size=4.0, target_shape=(40, 48, 40))
    without = {k: v for k, v in extra.items() if k != "block_sums"}
    assert pp.preprocess_volume(data, affine, extra, params).info == \
        pp.preprocess_volume(data, affine, without, params).info


def test_trilinear_takes_the_normalisation_sample_as_it_goes():
    """With keys, trilinear also keeps the keys of out[::2, ::2, ::2] above a threshold (the
    fill outside the input included when it is above): the same count and percentiles as
    reading them back, on axis-aligned grids (partly outside) and oblique ones, with and
    without the vector code, negative values included; the output itself does not change."""
    kernels = _kernels()
    rng = np.random.default_rng(61)
    checked = 0
    try:
        for it in range(240):
            kernels.set_vector(it % 4 != 3)
            centre = float(rng.choice([100.0, 0.0]))  # negative values, signed zeros
            data = rng.normal(centre, 30.0, tuple(int(n) for n in rng.integers(5, 28, 3)))
            data = data.astype(np.float32)
            data = np.asfortranarray(data) if it % 2 else data
            if it % 3 == 0:
                matrix, _ = axis_aligned_matrix(rng, [0.5, 0.8, 1.0, 1.3])
            else:
                matrix = _random_rotation(rng) * rng.uniform(0.5, 1.4, 3)
            offset = rng.uniform(-8.0, 30.0, 3)
            shape = tuple(int(n) for n in rng.integers(2, 36, 3))
            cval = float(rng.choice([0.0, -0.0, -5.0, 150.0]))
            above = float(rng.normal(centre, 25.0))
            out = np.empty(shape, np.float32)
            keys = np.empty(math.prod((n + 1) // 2 for n in shape), np.uint32)
            n = kernels.trilinear(data, out, tuple(matrix.ravel()), tuple(offset), cval, keys, above)
            plain = np.empty(shape, np.float32)
            assert kernels.trilinear(data, plain, tuple(matrix.ravel()), tuple(offset), cval) is None
            assert out.tobytes() == plain.tobytes()
            count, expected = kernels.percentiles(out, (2, 2, 2), above, (0.5, 50.0, 99.5), False)
            assert n == count
            if n:
                assert kernels.sample_percentiles(keys, n, (0.5, 50.0, 99.5), False) == expected
                checked += 1
    finally:
        kernels.set_vector(True)
    assert checked > 80
    with pytest.raises(ValueError, match="room"):
        kernels.trilinear(data, out, tuple(matrix.ravel()), tuple(offset), cval,
                          np.empty(1, np.uint32), above)


def _integer_layouts(stored: np.ndarray) -> list[np.ndarray]:
    """C and Fortran order, unit stride along the middle axis, flipped, strided."""
    middle = np.ascontiguousarray(stored.transpose(0, 2, 1)).transpose(0, 2, 1)
    return [stored, np.asfortranarray(stored), middle, stored[::-1], stored[:, ::2]]


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_trilinear_reads_stored_integers_as_their_float32_copy(dtype):
    """int16 and uint16 volumes are resampled as they are stored: the same bytes (and the same
    normalisation sample) as from their float32 copy, on oblique and axis-aligned grids, in
    every layout, with the vector code and without, over the whole range of the type."""
    kernels = _kernels()
    rng = np.random.default_rng(67)
    info = np.iinfo(dtype)
    stored = rng.integers(info.min, info.max, (33, 29, 38), endpoint=True).astype(dtype)
    stored[:4] = info.min
    stored[-4:] = info.max
    compared = 0
    try:
        for vector in (True, False):
            kernels.set_vector(vector)
            for data in _integer_layouts(stored):
                for it in range(5):
                    if it % 2:
                        matrix, _ = axis_aligned_matrix(rng, [0.6, 1.0, 1.3])
                    else:
                        matrix = _random_rotation(rng) * rng.uniform(0.5, 1.4, 3)
                    offset = rng.uniform(-8.0, 30.0, 3)
                    shape = tuple(int(n) for n in rng.integers(9, 44, 3))
                    above = float(rng.uniform(info.min, info.max))
                    got, expected = np.empty(shape, np.float32), np.empty(shape, np.float32)
                    keys = np.empty(math.prod((n + 1) // 2 for n in shape), np.uint32)
                    keys_expected = keys.copy()
                    n = kernels.trilinear(data, got, tuple(matrix.ravel()), tuple(offset), -1.5,
                                          keys, above)
                    n_expected = kernels.trilinear(data.astype(np.float32), expected,
                                                   tuple(matrix.ravel()), tuple(offset), -1.5,
                                                   keys_expected, above)
                    assert got.tobytes() == expected.tobytes()
                    assert n == n_expected and keys[:n].tobytes() == keys_expected[:n].tobytes()
                    compared += 1
    finally:
        kernels.set_vector(True)
    assert compared == 50
    with pytest.raises(ValueError, match="native order"):
        kernels.trilinear(stored.astype(">i2"), np.empty((4, 4, 4), np.float32),
                          (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (0.0, 0.0, 0.0), 0.0)
    with pytest.raises(ValueError, match="int16 or uint16"):
        kernels.trilinear(stored.astype(np.int32), np.empty((4, 4, 4), np.float32),
                          (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), (0.0, 0.0, 0.0), 0.0)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_percentiles_of_stored_integers_are_those_of_their_float32_copy(dtype):
    kernels = _kernels()
    rng = np.random.default_rng(71)
    stored = rng.integers(0, 900, (30, 26, 21)).astype(dtype)
    for data in _integer_layouts(stored):
        for steps, above in [((1, 1, 1), math.nan), ((4, 4, 4), math.nan), ((2, 3, 1), 300.0)]:
            for percents, weak in [((1.0,), True), ((2.0, 50.0, 99.0), False)]:
                assert kernels.percentiles(data, steps, above, percents, weak) == \
                    kernels.percentiles(data.astype(np.float32), steps, above, percents, weak)


def test_widen_without_output_gives_the_range_and_block_sums():
    kernels = _kernels()
    rng = np.random.default_rng(73)
    for dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dtype)
        shape = tuple(int(n) for n in rng.integers(2, 24, 3))
        steps = tuple(int(rng.integers(1, min(4, n) + 1)) for n in shape)
        stored = rng.integers(max(info.min, -5000), min(info.max, 5000), shape).astype(dtype)
        flat = stored.ravel(order="F")
        out = np.empty(shape, np.float32, order="F")
        sums, sums_alone = (np.empty([n // s for n, s in zip(shape, steps, strict=True)],
                                     np.float32) for _ in range(2))
        both = kernels.widen(flat, out.reshape(-1, order="A"), False, 1.0, False, 0.0, sums,
                             steps, shape)
        assert kernels.widen(flat, None, False, 1.0, False, 0.0, sums_alone, steps, shape) == both
        assert kernels.widen(flat, None, False, 1.0, False, 0.0) == both
        assert both == (float(stored.min()), float(stored.max()))
        assert sums_alone.tobytes() == sums.tobytes()


@pytest.mark.parametrize("dtype", ["<i2", "<u2", ">i2"])
def test_stored_integers_go_to_the_same_tensor_without_a_float32_copy(tmp_path, dtype):
    """load_volume(integers=True) gives int16/uint16 stored without scaling as they are (a
    view of the bytes); preprocess_volume makes the same tensor and facts of them as of the
    float32 volume. Scaled or byte-swapped voxels still come as float32."""
    rng = np.random.default_rng(79)
    base = rng.normal(600.0, 150.0, (46, 52, 40)).clip(0, 3000)
    base[:6] = 0.0
    for k, (slope, inter) in enumerate([(None, None), (2.0, 0.0), (1.0, 10.0)]):
        header = nib.Nifti1Header()
        if dtype.startswith(">"):
            header = header.as_byteswapped(">")  # a big-endian file
        img = nib.Nifti1Image(base.astype(dtype), np.array([[0.0, 0.0, -3.6, 60.0],
                                                            [-3.0, 0.4, 0.0, 70.0],
                                                            [0.3, 3.0, 0.0, -40.0],
                                                            [0.0, 0.0, 0.0, 1.0]]), header)
        img.header.set_data_dtype(np.dtype(dtype))
        img.header.set_slope_inter(slope, inter)
        path = tmp_path / f"{k}.nii.gz"
        img.to_filename(path)
        data, affine, extra = pp.load_volume(path, integers=True)
        plain, _, plain_extra = pp.load_volume(path)
        assert plain.dtype == np.float32
        kept = slope is None and dtype != ">i2"
        assert data.dtype == (np.dtype(dtype) if kept else np.float32)
        if kept:
            assert not data.flags.writeable and np.array_equal(data, plain)
        assert extra["finite_range"] == plain_extra["finite_range"]
        for params in (pp.PreprocessingParams(voxel_size=3.0, target_shape=(48, 56, 48)),
                       pp.PreprocessingParams(preprocessing="none", normalization="zscore")):
            got = pp.preprocess_volume(data, affine, extra, params)
            expected = pp.preprocess_volume(plain, affine, plain_extra, params)
            assert got.data.tobytes() == expected.data.tobytes()
            assert got.info == expected.info
