"""Reconstruction networks: a convolutional autoencoder and a convolutional variational one.

Both return a tensor of exactly the input's shape. The decoder mirrors the encoder with stride-2
transposed convolutions and, after each of them, crops (or zero-pads) to the size that the
matching encoder stage saw, so odd sizes come back exact, as ClinicaDL's CropMaxUnpool does.

The output layer is linear (no sigmoid): intensities may be min-max scaled to 0..1, but z-scored
or unnormalised tensors are allowed too, and a sigmoid could never reach their values (nor the
exact 0 of the background without pushing its logits to minus infinity).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bidsapp_dl.models.cnn import Conv5_FC3, conv_stack, infer_shape

RECONSTRUCTION_TASKS = ("reconstruction",)

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_UP = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def match_size(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crop the trailing spatial axes of ``x`` to ``size``, zero-padding any that are shorter."""
    x = x[(..., *(slice(0, s) for s in size))]
    pad: list[int] = []
    for have, want in zip(reversed(x.shape[-len(size):]), reversed(size)):
        pad += [0, want - have]
    return F.pad(x, pad) if any(pad) else x


class _Decoder(nn.Module):
    """Mirror of :func:`conv_stack`: per stage ConvTranspose(2, stride 2) - BatchNorm - LeakyReLU."""

    def __init__(self, ndim: int, channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        widths = list(reversed(channels))
        targets = [*widths[1:], widths[-1]]
        self.stages = nn.ModuleList(
            nn.Sequential(_UP[ndim](a, b, kernel_size=2, stride=2), _NORM[ndim](b), nn.LeakyReLU())
            for a, b in zip(widths, targets)
        )
        self.head = _CONV[ndim](widths[-1], out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, sizes: Sequence[Sequence[int]]) -> torch.Tensor:
        """Decode ``x``; ``sizes`` are the spatial sizes at the input of each encoder stage."""
        for stage, size in zip(self.stages, reversed(sizes)):
            x = match_size(stage(x), size)
        return self.head(x)


def _encode(encoder: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Size]]:
    sizes = []
    for block in encoder:
        sizes.append(x.shape[2:])
        x = block(x)
    return x, sizes


class AE_Conv5_FC3(nn.Module):  # ClinicaDL's architecture name
    """Autoencoder: the Conv5_FC3 convolutional part, mirrored by a transposed-conv decoder."""

    tasks = RECONSTRUCTION_TASKS
    dims = (2, 3)
    channels = Conv5_FC3.channels
    min_size = Conv5_FC3.min_size

    def __init__(self, input_shape: Sequence[int]) -> None:
        super().__init__()
        ndim = len(input_shape) - 1
        # same layout as Conv5_FC3.features: its state dict loads into a CNN for transfer learning
        self.encoder = conv_stack(ndim, input_shape[0], self.channels)
        self.decoder = _Decoder(ndim, self.channels, input_shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code, sizes = _encode(self.encoder, x)
        return self.decoder(code, sizes)


class VAE(nn.Module):
    """Variational autoencoder: Conv5 encoder, latent vector of 64, transposed-conv decoder.

    Training samples the latent vector with the reparameterisation trick (torch's global RNG);
    ``eval()`` decodes the mean, so predictions are deterministic. :meth:`regularization` is the
    KL divergence of the last forward pass, which the trainer adds to the reconstruction loss.
    """

    tasks = RECONSTRUCTION_TASKS
    dims = (2, 3)
    channels = Conv5_FC3.channels
    min_size = Conv5_FC3.min_size

    def __init__(self, input_shape: Sequence[int], latent_size: int = 64) -> None:
        super().__init__()
        ndim = len(input_shape) - 1
        self.encoder = conv_stack(ndim, input_shape[0], self.channels)
        self.code_shape = infer_shape(self.encoder, input_shape)
        n_code = math.prod(self.code_shape)
        self.mean = nn.Linear(n_code, latent_size)
        self.log_var = nn.Linear(n_code, latent_size)
        self.expand = nn.Sequential(nn.Linear(latent_size, n_code), nn.LeakyReLU())
        self.decoder = _Decoder(ndim, self.channels, input_shape[0])
        self._kl: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code, sizes = _encode(self.encoder, x)
        code = torch.flatten(code, 1)
        mean = self.mean(code)
        # bounded so that exp() cannot overflow while the weights are still far off
        log_var = self.log_var(code).clamp(-10.0, 10.0)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var) if self.training else mean
        self._kl = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp(), dim=1).mean()
        return self.decoder(self.expand(z).reshape(-1, *self.code_shape), sizes)

    def regularization(self) -> torch.Tensor:
        """KL divergence from N(0, I) of the last forward pass, averaged over its batch."""
        if self._kl is None:
            raise RuntimeError("VAE.regularization() needs a forward pass first")
        return self._kl

    def __getstate__(self) -> dict:
        # the stored KL term may carry an autograd graph, which copy.deepcopy and pickle refuse
        state = super().__getstate__()
        state["_kl"] = None
        return state
