"""Training-time augmentations of one channel-first sample (2-D or 3-D).

Every random number comes from a ``torch.Generator``: the one passed to ``Augment.__call__``,
else the one made from ``generator_seed``, else torch's global generator. Seeding that
generator therefore reproduces the augmentation exactly.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from bidsapp_dl.errors import UsageError

AUGMENTATIONS: tuple[str, ...] = ("noise", "intensity", "affine", "flip", "bias", "blur")

MAX_NOISE = 0.1  # standard deviation, as a fraction of the sample's intensity range
MAX_ROTATION_DEG = 5.0
MAX_SCALING = 0.05
MAX_SHIFT_VOXELS = 2.0
MAX_LOG_GAMMA = 0.3
BIAS_ORDER = 3
MAX_BIAS_COEFFICIENT = 0.3
BLUR_SIGMA = (0.25, 1.0)  # voxels

Generator = torch.Generator | None


def _uniform(g: Generator, low: float, high: float, n: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.amin(), x.amax()


def _noise(x: torch.Tensor, g: Generator, flip_axis: int) -> torch.Tensor:
    low, high = _range(x)
    sd = _uniform(g, 0.0, MAX_NOISE) * (high - low)
    return x + torch.randn(x.shape, generator=g, dtype=x.dtype) * sd


def _intensity(x: torch.Tensor, g: Generator, flip_axis: int) -> torch.Tensor:
    """Gamma on the intensities rescaled to [0, 1], then a random scale and shift."""
    gamma, scale, shift = (torch.exp(_uniform(g, -MAX_LOG_GAMMA, MAX_LOG_GAMMA)),
                           _uniform(g, 0.9, 1.1), _uniform(g, -0.05, 0.05))
    low, high = _range(x)
    width = high - low
    if width <= 0:
        return x.clone()
    unit = ((x - low) / width).clamp_(0.0, 1.0) ** gamma
    return low + width * (unit * scale + shift)


def _rotation(angles: torch.Tensor, n: int) -> torch.Tensor:
    if n == 2:
        c, s = torch.cos(angles[0]), torch.sin(angles[0])
        return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
    rotation = torch.eye(3)
    for axis, angle in enumerate(angles):
        c, s = torch.cos(angle), torch.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = torch.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rotation = rotation @ r
    return rotation


def _affine(x: torch.Tensor, g: Generator, flip_axis: int) -> torch.Tensor:
    """Small rotation, scaling and translation about the centre, resampled (bi/trilinear)."""
    n = x.dim() - 1
    angles = torch.deg2rad(_uniform(g, -MAX_ROTATION_DEG, MAX_ROTATION_DEG, 1 if n == 2 else 3))
    scales = _uniform(g, 1 - MAX_SCALING, 1 + MAX_SCALING, n)
    shifts = _uniform(g, -MAX_SHIFT_VOXELS, MAX_SHIFT_VOXELS, n)
    # Built in voxel units, then expressed in grid_sample's [-1, 1] coordinates, whose axes
    # run in reverse order (last array axis first); without this, rotations of non-cubic
    # samples would shear them.
    half = torch.tensor([max(size - 1, 1) / 2 for size in reversed(x.shape[1:])])
    matrix = _rotation(angles, n) @ torch.diag(scales)
    theta = torch.cat([matrix * half[None, :] / half[:, None], (shifts / half)[:, None]], dim=1)
    batch = x[None]
    grid = F.affine_grid(theta[None].to(batch.dtype), list(batch.shape), align_corners=True)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border",
                         align_corners=True)[0]


def _flip(x: torch.Tensor, g: Generator, flip_axis: int) -> torch.Tensor:
    """Mirror along ``flip_axis`` (0, left-right for volumes in RAS-like order) half the time."""
    if torch.rand(1, generator=g).item() < 0.5:
        return x.flip(1 + flip_axis)
    return x.clone()


def _powers(size: int, order: int) -> torch.Tensor:
    coordinate = torch.linspace(-1.0, 1.0, size)
    return torch.stack([coordinate**p for p in range(order + 1)], dim=1)


def _bias(x: torch.Tensor, g: Generator, flip_axis: int) -> torch.Tensor:
    """Multiply by exp(p) for a random polynomial p of degree <= BIAS_ORDER, p(centre) = 0."""
    n, terms = x.dim() - 1, BIAS_ORDER + 1
    coefficients = _uniform(g, -MAX_BIAS_COEFFICIENT, MAX_BIAS_COEFFICIENT, terms**n)
    coefficients = coefficients.reshape((terms,) * n)
    degree = sum(torch.arange(terms).reshape([-1 if a == d else 1 for a in range(n)])
                 for d in range(n))
    coefficients = coefficients * (degree <= BIAS_ORDER) * (degree > 0)
    # Contract one axis at a time: cost ~ voxels x terms rather than voxels x terms**n.
    field = coefficients
    for size in x.shape[1:]:
        field = torch.tensordot(_powers(size, BIAS_ORDER), field, dims=([1], [0])).movedim(0, -1)
    return x * torch.exp(field).to(x.dtype)


def _blur(x: torch.Tensor, g: Generator, flip_axis: int) -> torch.Tensor:
    """Isotropic Gaussian blur, separable, borders replicated."""
    sigma = float(_uniform(g, *BLUR_SIGMA))
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).tolist()
    # A weighted sum of shifted copies: on CPU several times faster than conv1d/conv3d with
    # one input channel, and the same numbers.
    for axis in range(1, x.dim()):
        size = x.shape[axis]
        padded = x.index_select(axis, torch.arange(-radius, size + radius).clamp_(0, size - 1))
        out = padded.narrow(axis, 0, size) * kernel[0]
        for j in range(1, len(kernel)):
            out.add_(padded.narrow(axis, j, size), alpha=kernel[j])
        x = out
    return x


_TRANSFORMS: dict[str, Callable[[torch.Tensor, Generator, int], torch.Tensor]] = {
    "noise": _noise, "intensity": _intensity, "affine": _affine, "flip": _flip,
    "bias": _bias, "blur": _blur,
}


class Augment:
    """Random augmentations applied in the order given, to one sample at a time.

    Parameters
    ----------
    names
        Any of ``AUGMENTATIONS``: "noise" (Gaussian, sd ~ U(0, 0.1) of the intensity range),
        "intensity" (gamma, scale and shift), "affine" (rotation up to 5 degrees, scaling up to
        5 %, translation up to 2 voxels), "flip", "bias" (smooth multiplicative field), "blur"
        (Gaussian, sigma 0.25-1 voxel). "flip" mirrors left and right half the time: it
        breaks laterality (hemispheric asymmetries, lateralised lesions), so it is never
        implied and is only applied when named.
    generator_seed
        Seed of a private generator; by default torch's global generator is used, which
        DataLoader workers seed on their own.
    flip_axis
        Spatial axis of the sample that "flip" mirrors: 0 is left-right for image, patch and
        roi samples and for coronal or axial slices; sagittal slices have no left-right axis.
    """

    def __init__(self, names: Sequence[str], generator_seed: int | None = None,
                 flip_axis: int = 0) -> None:
        if isinstance(names, str):
            names = [names]
        chosen: list[str] = []
        for raw in names:
            name = str(raw).lower()
            if name not in _TRANSFORMS:
                close = difflib.get_close_matches(name, AUGMENTATIONS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UsageError(
                    f"unknown augmentation {raw!r}: choose among {list(AUGMENTATIONS)}{hint}")
            if name not in chosen:
                chosen.append(name)
        self.names = tuple(chosen)
        self.flip_axis = int(flip_axis)
        self.generator_seed = generator_seed
        self._generator = (None if generator_seed is None
                           else torch.Generator().manual_seed(int(generator_seed)))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augmented copy of ``x`` (C, *spatial), same shape and dtype."""
        if x.dim() not in (3, 4):
            raise UsageError(f"augmentations take (C, H, W) or (C, X, Y, Z) samples, got {tuple(x.shape)}")
        if not 0 <= self.flip_axis < x.dim() - 1:
            raise UsageError(f"flip_axis {self.flip_axis} does not exist in a {x.dim() - 1}-D sample")
        g = generator if generator is not None else self._generator
        dtype = x.dtype
        out = x if dtype in (torch.float32, torch.float64) else x.float()
        for name in self.names:
            out = _TRANSFORMS[name](out, g, self.flip_axis)
        return out.to(dtype)

    def params(self) -> dict[str, object]:
        """JSON-ready description, recorded with the model."""
        return {"names": list(self.names), "generator_seed": self.generator_seed,
                "flip_axis": self.flip_axis}

    def __repr__(self) -> str:
        return f"Augment({list(self.names)})"
