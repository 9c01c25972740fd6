"""Three-dimensional T1-weighted head phantoms.

The head is described in world space (RAS+ millimetres: left at negative x, anterior at +y,
superior at +z) as a stack of soft-edged ellipsoids, then sampled on the voxel grid of each
acquisition. Any affine therefore yields an anatomically correct image.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np

#: Relative T1w intensities (white matter = 1): fat is bright, bone and CSF dark.
TISSUE = {"skin": 0.5, "fat": 1.1, "bone": 0.12, "muscle": 0.45, "csf": 0.2, "gm": 0.62,
          "wm": 1.0, "cord": 0.8}
#: Voxel axis orders used in turn: axial RAS/LAS/LPS and a sagittal PIR acquisition.
ORIENTATIONS = ("RAS", "LAS", "PIR", "LPS")
DEFAULT_FOV = (190.0, 230.0, 230.0)
# The head sits high in the field of view, with the neck below, as in a real scan.
FOV_CENTER = np.array([0.0, 0.0, -5.0])
_INNER_SKULL = np.array([66.0, 84.0, 60.0])
_AXES = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0),
         "S": (2, 1.0), "I": (2, -1.0)}


@dataclass(frozen=True)
class Phantom:
    """Parameters of one head scan (anatomy and scanner nuisance)."""

    center: tuple[float, float, float] = (0.0, 0.0, 30.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    tissue: dict[str, float] = field(default_factory=lambda: dict(TISSUE))
    hippocampus: float = 1.0
    ventricles: float = 1.0
    left_factor: float = 1.0
    fold_phase: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gain: float = 1800.0
    noise: float = 0.025
    bias: tuple[float, ...] = (0.0,) * 9


@dataclass(frozen=True)
class Grid:
    """A voxel grid: array shape and voxel-to-world affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    orientation: str


def random_phantom(rng: np.random.Generator) -> Phantom:
    """Draw the anatomy of one subject, with scanner nuisance from :func:`rescan`."""
    common = rng.normal(1.0, 0.03)
    anatomy = Phantom(
        center=(rng.normal(0.0, 3.0), rng.normal(0.0, 3.0), rng.normal(30.0, 2.0)),
        scale=tuple(float(common * rng.normal(1.0, 0.015)) for _ in range(3)),
        tissue={k: v * rng.normal(1.0, 0.03) for k, v in TISSUE.items()},
        hippocampus=rng.normal(1.0, 0.04),
        ventricles=rng.normal(1.0, 0.05),
        fold_phase=tuple(rng.uniform(0, 2 * np.pi, 3)),
    )
    return rescan(anatomy, rng)


def rescan(ph: Phantom, rng: np.random.Generator) -> Phantom:
    """Same head, new positioning, gain, noise level and bias field (another scan)."""
    shift = rng.normal(0.0, 1.5, 3)
    return replace(
        ph,
        center=tuple(float(c + s) for c, s in zip(ph.center, shift, strict=True)),
        gain=rng.uniform(1200.0, 2400.0),
        noise=rng.uniform(0.015, 0.035),
        bias=tuple(rng.normal(0.0, 0.05, 9)),
    )


def _rotation(degrees) -> np.ndarray:
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_grid(voxel_size: float | tuple[float, float, float], fov=DEFAULT_FOV,
              orientation: str = "RAS", rotation=(0.0, 0.0, 0.0)) -> Grid:
    """Build a voxel grid covering ``fov`` (mm along x, y, z) around the standard centre.

    Parameters
    ----------
    voxel_size : float or 3 floats
        Voxel size in mm along each *voxel* axis.
    orientation : str
        Three-letter code (e.g. ``"PIR"``): the world direction each voxel axis points to.
    rotation : 3 floats
        Degrees about x, y, z applied to the grid, for oblique acquisitions.
    """
    sizes = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,))
    directions = np.zeros((3, 3))
    shape = []
    for i, letter in enumerate(orientation.upper()):
        axis, sign = _AXES[letter]
        directions[axis, i] = sign
        shape.append(max(int(round(fov[axis] / sizes[i])), 4))
    linear = _rotation(rotation) @ directions @ np.diag(sizes)
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = FOV_CENTER - linear @ ((np.array(shape) - 1) / 2.0)
    return Grid(tuple(shape), affine, orientation.upper())


class _Canvas:
    """World coordinates of a grid, and soft (partial-volume) painting of shapes on it."""

    def __init__(self, grid: Grid):
        self.shape = grid.shape
        self.inv = np.linalg.inv(grid.affine)
        self.width = float(np.mean(np.linalg.norm(grid.affine[:3, :3], axis=0)))
        a = grid.affine.astype(np.float32)
        i, j, k = (np.arange(n, dtype=np.float32) for n in grid.shape)
        self.xyz = [a[r, 0] * i[:, None, None] + a[r, 1] * j[None, :, None]
                    + a[r, 2] * k[None, None, :] + a[r, 3] for r in range(3)]
        self.img = np.zeros(grid.shape, dtype=np.float32)

    def box(self, lo, hi):
        """Voxel slices covering the world box [lo, hi] (None when outside the grid)."""
        corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
        ijk = corners @ self.inv[:3, :3].T + self.inv[:3, 3]
        start = np.clip(np.floor(ijk.min(0)) - 1, 0, self.shape).astype(int)
        stop = np.clip(np.ceil(ijk.max(0)) + 2, 0, self.shape).astype(int)
        if np.any(stop <= start):
            return None
        return tuple(slice(a, b) for a, b in zip(start, stop, strict=True))

    def ellipsoid(self, sl, center, radii, fold=None) -> np.ndarray:
        """Membership in [0, 1] of an ellipsoid, ramped over one voxel at its surface."""
        # Python floats keep the arithmetic in float32 (NumPy 2 promotes on NumPy scalars).
        c, r = [float(a) for a in center], [float(a) for a in radii]
        q = np.zeros(self.xyz[0][sl].shape, dtype=np.float32)
        grad = np.zeros_like(q)
        for ax in range(3):
            u = self.xyz[ax][sl] - c[ax]
            u *= 1.0 / r[ax]
            q += u * u
            u *= 1.0 / r[ax]
            grad += u * u
        # (q - 1) / |grad q| approximates the signed distance to the surface in mm.
        np.sqrt(grad, out=grad)
        grad *= 2.0
        q -= 1.0
        q /= np.maximum(grad, 1e-6, out=grad)
        if fold is not None:
            amp, period, phase = fold
            k = 2 * np.pi / period
            wave = np.sin(self.xyz[0][sl] * k + float(phase[0]))
            wave *= np.sin(self.xyz[1][sl] * k + float(phase[1]))
            wave *= np.sin(self.xyz[2][sl] * k + float(phase[2]))
            q -= float(amp) * wave
        q *= -1.0 / self.width
        q += 0.5
        return np.clip(q, 0.0, 1.0, out=q)

    def paint(self, center, radii, value, fold=None) -> None:
        """Paint ``value`` inside an ellipsoid, blending at its edge."""
        margin = 5.0 if fold is None else 5.0 + fold[0]
        sl = self.box(np.subtract(center, radii) - margin, np.add(center, radii) + margin)
        if sl is not None:
            m = self.ellipsoid(sl, center, radii, fold)
            self.img[sl] += m * (float(value) - self.img[sl])


def render(ph: Phantom, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Sample a phantom on a grid: int16 T1w-like image with bias field and Rician noise."""
    cv = _Canvas(grid)
    t, s, c = ph.tissue, np.asarray(ph.scale), np.asarray(ph.center)

    def at(offset):
        return c + s * np.asarray(offset, dtype=float)

    neck_c, neck_r = at((0, -15, -150)), s * (50, 55, 150)
    cv.paint(neck_c, neck_r + 3, t["skin"])
    cv.paint(neck_c, neck_r, t["muscle"])
    # The face makes the head asymmetric front to back, as real heads are.
    cv.paint(at((0, 45, -45)), s * (52, 50, 42), t["skin"])
    cv.paint(at((0, 45, -45)), s * (49, 47, 39), t["muscle"])
    cv.paint(at((0, 96, -40)), s * (9, 14, 18), t["skin"])
    inner = s * _INNER_SKULL
    for extra, name in ((10, "skin"), (8, "fat"), (5, "bone"), (1, "csf"), (-2, "gm")):
        cv.paint(c, inner + extra, t[name], fold=(2.0, 30.0, ph.fold_phase) if extra < 0 else None)
    cv.paint(c, (inner - 2) * 0.8, t["wm"], fold=(3.0, 24.0, ph.fold_phase))
    cv.paint(at((0, -12, -55)), s * (11, 13, 60), t["cord"])
    for side in (-1, 1):  # eyes: dark vitreous (CSF-like in T1w) in bright orbital fat
        cv.paint(at((side * 30, 72, -35)), s * (15, 15, 14), t["fat"])
        cv.paint(at((side * 30, 74, -35)), s * (11, 11, 11), t["csf"])
    _fissure(cv, c, inner - 2, t["csf"])
    v, h = ph.ventricles, ph.hippocampus
    for side in (-1, 1):
        cv.paint(at((side * (4 + 4.5 * v), 0, 10)), s * (4.5 * v, 24 * np.sqrt(v), 9 * v), t["csf"])
        cv.paint(at((side * 31, -6, -12)), s * (2.5 * v, 12, 3 * v), t["csf"])
        cv.paint(at((side * 24, -18, -18)), s * (7 * h, 19 * h, 7 * h), t["gm"])
    if ph.left_factor != 1.0:
        _darken_left(cv, c, inner - 2, ph.left_factor)
    img = cv.img * _bias_field(cv, ph.bias)
    img *= float(ph.gain)
    # Rician noise: the magnitude of a complex signal with Gaussian noise in both channels.
    noise = rng.standard_normal((2, *grid.shape), dtype=np.float32)
    noise *= float(ph.noise * ph.gain)
    img += noise[0]
    img = np.hypot(img, noise[1], out=img)
    return np.clip(np.rint(img), 0, np.iinfo(np.int16).max).astype(np.int16)


def _fissure(cv: _Canvas, center, brain_radii, value) -> None:
    # The interhemispheric fissure: a thin CSF sheet down to the corpus callosum.
    lo = center - brain_radii
    hi = center + brain_radii
    lo[0], hi[0] = center[0] - 4, center[0] + 4
    lo[2] = center[2] + 10
    sl = cv.box(lo, hi)
    if sl is None:
        return
    cx, cz = float(center[0]), float(center[2])
    m = cv.ellipsoid(sl, center, brain_radii)
    m *= np.clip(0.5 - (np.abs(cv.xyz[0][sl] - cx) - 1.0) / cv.width, 0, 1)
    m *= np.clip(0.5 + (cv.xyz[2][sl] - cz - 15.0) / cv.width, 0, 1)
    cv.img[sl] += m * (float(value) - cv.img[sl])


def _darken_left(cv: _Canvas, center, brain_radii, factor: float) -> None:
    # Multiplies the brain in the left hemisphere (x below the mid-sagittal plane).
    hi = center + brain_radii + 5
    hi[0] = center[0] + 5
    sl = cv.box(center - brain_radii - 5, hi)
    if sl is None:
        return
    m = cv.ellipsoid(sl, center, brain_radii)
    m *= np.clip(0.5 - (cv.xyz[0][sl] - float(center[0])) / cv.width, 0, 1)
    cv.img[sl] *= 1.0 - (1.0 - float(factor)) * m


def _bias_field(cv: _Canvas, coef) -> np.ndarray:
    # A smooth second-order polynomial in the exponent, as receive-coil inhomogeneity looks.
    x, y, z = (w / np.float32(100.0) for w in cv.xyz)
    terms = (x, y, z, x * y, x * z, y * z, x * x, y * y, z * z)
    log_field = sum(np.float32(a) * term for a, term in zip(coef, terms, strict=True))
    return np.exp(log_field)
