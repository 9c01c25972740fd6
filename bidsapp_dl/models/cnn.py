"""Classification and regression networks for 3-D volumes and 2-D slices.

Every network takes ``input_shape`` (channel-first, without the batch axis) and sizes its fully
connected part from it: the flattened feature size comes from running an empty tensor on the
``meta`` device through a copy of the convolutional part, so no size is written by hand.

``min_size`` is the smallest edge, in voxels, that every spatial axis must have: each axis keeps at
least two voxels up to the last BatchNorm. Below it an axis is halved from one voxel to one voxel,
which learns nothing, and a cubic input leaves that BatchNorm a single value per channel when a
batch holds one sample, so training fails on an epoch's last, one-sample batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn

CLASSIFICATION_TASKS = ("classification", "regression")

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


def conv_block(ndim: int, c_in: int, c_out: int, strided: bool = False) -> nn.Sequential:
    """Conv(3) - BatchNorm - LeakyReLU, halving each axis by max-pooling or by a stride of 2.

    Pooling uses ``ceil_mode`` so that an axis of size n becomes ceil(n / 2), as ClinicaDL's
    PadMaxPool does, and odd sizes lose no voxel.
    """
    conv = _CONV[ndim](c_in, c_out, kernel_size=3, stride=2 if strided else 1, padding=1)
    layers = [conv, _NORM[ndim](c_out), nn.LeakyReLU()]
    if not strided:
        layers.append(_POOL[ndim](kernel_size=2, stride=2, ceil_mode=True))
    return nn.Sequential(*layers)


def conv_stack(ndim: int, c_in: int, channels: Sequence[int], strided: bool = False) -> nn.Sequential:
    """A chain of :func:`conv_block`; the autoencoders reuse it so that encoders and CNNs share weights."""
    widths = [c_in, *channels]
    return nn.Sequential(*(conv_block(ndim, a, b, strided) for a, b in zip(widths[:-1], widths[1:])))


def infer_shape(module: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    """Output shape (without batch) of ``module`` for one sample of ``input_shape``.

    Runs on the ``meta`` device: no memory, no computation, and the global RNG is left alone.
    """
    probe = copy.deepcopy(module).to("meta")
    with torch.no_grad():
        out = probe(torch.empty(1, *input_shape, device="meta"))
    return tuple(out.shape[1:])


def fc_head(n_in: int, hidden: Sequence[int], n_outputs: int, dropout: float) -> nn.Sequential:
    """Flatten - Dropout - (Linear - ReLU) per hidden width - Linear."""
    layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(dropout)]
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        n_in = width
    layers.append(nn.Linear(n_in, n_outputs))
    return nn.Sequential(*layers)


class _ConvFC(nn.Module):
    """Convolutional part ``features`` then a flattening fully connected part ``classifier``."""

    tasks = CLASSIFICATION_TASKS
    dims: tuple[int, ...] = (2, 3)
    channels: tuple[int, ...] = ()
    hidden: tuple[int, ...] = ()
    strided = False

    def __init__(self, input_shape: Sequence[int], n_outputs: int, dropout: float = 0.5) -> None:
        super().__init__()
        ndim = len(input_shape) - 1
        self.features = conv_stack(ndim, input_shape[0], self.channels, self.strided)
        n_features = math.prod(infer_shape(self.features, input_shape))
        self.classifier = fc_head(n_features, self.hidden, n_outputs, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# class names are ClinicaDL's architecture names, which users type on the command line
class Conv5_FC3(_ConvFC):
    """ClinicaDL's default CNN: 5 conv blocks (8-128 channels, max-pooling), FC 1300-50."""

    channels = (8, 16, 32, 64, 128)
    hidden = (1300, 50)
    # the last BatchNorm comes after 4 halvings
    min_size = 2 ** (len(channels) - 1) + 1


class Conv4_FC3(_ConvFC):
    """A lighter CNN: 4 conv blocks (15, 25, 50, 50 channels, max-pooling), FC 50-40."""

    channels = (15, 25, 50, 50)
    hidden = (50, 40)
    min_size = 2 ** (len(channels) - 1) + 1


class Stride_Conv5_FC3(_ConvFC):
    """Conv5_FC3 with stride-2 convolutions instead of max-pooling."""

    channels = (8, 16, 32, 64, 128)
    hidden = (1300, 50)
    strided = True
    # the BatchNorm of each block follows its strided convolution: 5 halvings before the last one
    min_size = 2 ** len(channels) + 1


class _BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with a residual connection (1x1x1 projection when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(c_out),
            nn.ReLU(), nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            # a 1x1x1 stride-2 convolution gives ceil(n / 2) like the padded 3x3x3 one
            self.shortcut = nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm3d(c_out))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet3D(nn.Module):
    """A small 3-D ResNet: strided stem, 4 basic residual blocks (16-128), global average pooling."""

    tasks = CLASSIFICATION_TASKS
    dims = (3,)
    widths = (16, 32, 64, 128)
    # stem + 3 strided blocks halve the input before the last BatchNorm
    min_size = 2 ** len(widths) + 1

    def __init__(self, input_shape: Sequence[int], n_outputs: int, dropout: float = 0.5) -> None:
        super().__init__()
        stem = [nn.Conv3d(input_shape[0], self.widths[0], 3, stride=2, padding=1, bias=False),
                nn.BatchNorm3d(self.widths[0]), nn.ReLU()]
        blocks = [_BasicBlock(self.widths[0], self.widths[0], 1)]
        blocks += [_BasicBlock(a, b, 2) for a, b in zip(self.widths[:-1], self.widths[1:])]
        self.features = nn.Sequential(*stem, *blocks, nn.AdaptiveAvgPool3d(1))
        self.classifier = fc_head(self.widths[-1], (), n_outputs, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _SqueezeExcitation(nn.Module):
    """Channel attention: global average, bottleneck MLP, sigmoid gate on each channel."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 2)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels),
                                  nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.gate(x.mean(dim=tuple(range(2, x.dim()))))
        return x * weights.reshape(*weights.shape, *([1] * (x.dim() - 2)))


class _SEBlock(nn.Module):
    """Residual block of two convolutions with squeeze-and-excitation, then max-pooling."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(),
            nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out),
            _SqueezeExcitation(c_out),
        )
        self.shortcut = nn.Sequential(nn.Conv3d(c_in, c_out, 1, bias=False), nn.BatchNorm3d(c_out))
        self.act = nn.ReLU()
        self.pool = nn.MaxPool3d(2, stride=2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.body(x) + self.shortcut(x)))


class SqueezeExcitationCNN(nn.Module):
    """3-D CNN of 5 residual squeeze-and-excitation blocks (8-128), global average pooling, FC 64."""

    tasks = CLASSIFICATION_TASKS
    dims = (3,)
    channels = (8, 16, 32, 64, 128)
    min_size = 2 ** (len(channels) - 1) + 1

    def __init__(self, input_shape: Sequence[int], n_outputs: int, dropout: float = 0.5) -> None:
        super().__init__()
        widths = [input_shape[0], *self.channels]
        blocks = [_SEBlock(a, b) for a, b in zip(widths[:-1], widths[1:])]
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool3d(1))
        self.classifier = fc_head(self.channels[-1], (64,), n_outputs, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CNN2D(nn.Module):
    """2-D CNN for slices (1 or 3 channels): 4 conv blocks (16-128), global average pooling, FC 64."""

    tasks = CLASSIFICATION_TASKS
    dims = (2,)
    channels = (16, 32, 64, 128)
    min_size = 2 ** (len(channels) - 1) + 1

    def __init__(self, input_shape: Sequence[int], n_outputs: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_stack(2, input_shape[0], self.channels), nn.AdaptiveAvgPool2d(1))
        self.classifier = fc_head(self.channels[-1], (64,), n_outputs, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
