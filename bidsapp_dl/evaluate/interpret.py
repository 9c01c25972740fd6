"""Saliency maps of trained networks, and their placement back on the image's voxel grid.

Two methods: ``gradients`` (Simonyan et al. 2014), the absolute gradient of the explained score
with respect to the input, and ``grad-cam`` (Selvaraju et al. 2017), the channel-weighted
activations of a convolutional layer. Both run the model in ``eval`` mode, so that BatchNorm and
dropout treat every sample of a batch on its own and the map of a sample does not depend on its
batch. Gradients go through :func:`torch.autograd.grad` only: no ``.grad`` is written on the
model's parameters, and a model under training is left as it was.
"""

from __future__ import annotations

import difflib
import gzip
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError, UsageError
from ..maps.io import atomic_path

METHODS = ("gradients", "grad-cam")
_CONVOLUTIONS = (nn.Conv2d, nn.Conv3d)
_UPSAMPLING = {4: "bilinear", 5: "trilinear"}


def _did_you_mean(value: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _scores(output: torch.Tensor, target: int | None) -> torch.Tensor:
    """One score per sample: the target class's logit, the predicted one's, or the single output."""
    if output.dim() != 2:
        raise UsageError(f"saliency explains classification or regression outputs of shape (B, n), "
                         f"not {tuple(output.shape)}")
    n_outputs = output.shape[1]
    if n_outputs == 1:
        if target not in (None, 0):
            raise UsageError(f"the model has a single output: target must be None or 0, not {target!r}")
        return output[:, 0]
    if target is None:
        index = output.detach().argmax(dim=1)
    else:
        try:
            target = operator.index(target)
        except TypeError:
            raise UsageError(f"target must be a class index, not {target!r}") from None
        if not 0 <= target < n_outputs:
            raise UsageError(f"target class {target} out of range: the model has {n_outputs} classes "
                             f"(0 to {n_outputs - 1})")
        index = torch.full((len(output),), target, dtype=torch.long, device=output.device)
    return output.gather(1, index[:, None])[:, 0]


def _gradient(score: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    if not score.requires_grad:
        raise UsageError("the model's output is not differentiable with respect to its input "
                         "(no autograd graph): saliency needs gradients")
    # samples are independent in eval mode, so the gradient of the sum is each sample's own
    (grad,) = torch.autograd.grad(score.sum(), wrt, allow_unused=True)
    return torch.zeros_like(wrt) if grad is None else grad


def _find_layer(model: nn.Module, layer: nn.Module | str | None) -> nn.Module:
    if layer is None:
        convolutions = [m for m in model.modules() if isinstance(m, _CONVOLUTIONS)]
        if not convolutions:
            raise UsageError("grad-cam needs a convolutional layer and the model has no Conv2d or "
                             "Conv3d: pass layer= to choose one, or use method 'gradients'")
        return convolutions[-1]
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise UsageError(f"layer {type(layer).__name__} is not a module of the model")
        return layer
    named = dict(model.named_modules())
    if layer not in named:
        raise UsageError(f"the model has no module named {layer!r}{_did_you_mean(layer, list(named))}")
    return named[layer]


def _grad_cam(model: nn.Module, x: torch.Tensor, target: int | None, layer: nn.Module) -> torch.Tensor:
    captured: list[Any] = []
    handle = layer.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        scores = _scores(model(x), target)
    finally:
        handle.remove()
    if not captured:
        raise UsageError(f"layer {type(layer).__name__} was not used by the model's forward pass")
    # a layer run several times (shared weights) is explained at its last use
    activation = captured[-1]
    if not isinstance(activation, torch.Tensor) or activation.dim() != x.dim():
        shape = tuple(activation.shape) if isinstance(activation, torch.Tensor) else type(activation)
        raise UsageError(f"grad-cam needs a layer whose output is (B, C, *spatial) like the input "
                         f"{tuple(x.shape)}, found {shape}")
    grad = _gradient(scores, activation)
    spatial = tuple(range(2, x.dim()))
    weights = grad.mean(dim=spatial, keepdim=True)
    cam = torch.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode=_UPSAMPLING[x.dim()], align_corners=False)
    return cam[:, 0].clamp_min(0)


def saliency(
    model: nn.Module,
    x: torch.Tensor,
    method: str,
    target: int | None = None,
    layer: nn.Module | str | None = None,
) -> np.ndarray:
    """Saliency maps of one batch.

    Parameters
    ----------
    model : torch.nn.Module
        Classification (B, n_classes) or regression (B, 1) network; put in ``eval`` mode.
    x : torch.Tensor
        Batch (B, C, H, W) or (B, C, X, Y, Z), moved to the model's device.
    method : str
        One of :data:`METHODS`.
    target : int or None
        Class to explain; None explains each sample's predicted class (the output itself for a
        single-output model).
    layer : torch.nn.Module or str, optional
        Grad-CAM layer, or its name in ``model.named_modules()``; default the last Conv2d/Conv3d.

    Returns
    -------
    numpy.ndarray
        float32 maps (B, *spatial), non-negative, each scaled to a maximum of 1 (all-zero stays 0).
    """
    if method not in METHODS:
        raise UsageError(f"unknown saliency method {method!r}: choose one of "
                         f"{', '.join(METHODS)}{_did_you_mean(method, METHODS)}")
    x = torch.as_tensor(x)
    if x.dim() not in _UPSAMPLING:
        raise UsageError(f"expected a batch (B, C, H, W) or (B, C, X, Y, Z), found shape {tuple(x.shape)}")
    chosen = _find_layer(model, layer) if method == "grad-cam" else None
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else x.device
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    model.eval()
    with torch.inference_mode(False), torch.enable_grad():
        inputs = x.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
        if chosen is None:
            maps = _gradient(_scores(model(inputs), target), inputs).abs().amax(dim=1)
        else:
            maps = _grad_cam(model, inputs, target, chosen)
    maps = maps.detach()
    peak = maps.reshape(len(maps), -1).amax(dim=1) if maps.numel() else maps.new_zeros(len(maps))
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    maps = maps / peak.reshape(-1, *([1] * (maps.dim() - 1)))
    return maps.cpu().numpy().astype(np.float32, copy=False)


def _placement(extractor: Any, shape: tuple[int, int, int], i: int) -> tuple[tuple, tuple, tuple]:
    """(index in the volume, index in the map, expected map shape) of sample ``i``."""
    mode = getattr(extractor, "mode", None)
    everything = (slice(None),) * 3
    if mode == "image":
        return everything, everything, shape
    if mode == "patch":
        size = extractor.patch_size
        origin = extractor.patch_origin(shape, i)
        return tuple(slice(o, o + size) for o in origin), everything, (size,) * 3
    if mode == "slice":
        axis = extractor.axis
        target = (*(slice(None),) * axis, extractor.slice_position(shape, i))
        plane = tuple(d for a, d in enumerate(shape) if a != axis)
        return target, (slice(None),) * 2, plane
    if mode == "roi":
        box = extractor.roi_box(i)
        # a box padded beyond the border: keep only the part of the map inside the volume
        inside = tuple(slice(max(lo, 0), min(hi, dim)) for (lo, hi), dim in zip(box, shape))
        source = tuple(slice(s.start - lo, s.stop - lo) for s, (lo, _) in zip(inside, box))
        return inside, source, tuple(hi - lo for lo, hi in box)
    raise UsageError(f"cannot place maps of extractor mode {mode!r}: expected image, patch, slice or roi")


def to_volume(
    maps: Sequence[np.ndarray],
    sample_indices: Sequence[int],
    extractor: Any,
    volume_shape: tuple[int, int, int],
) -> np.ndarray:
    """Put the sample-level maps of one image back on its (X, Y, Z) voxel grid.

    Patches go to their origin, slices to their position along the extractor's axis, ROI maps
    to their box (clipped to the volume). Voxels covered by several samples get the mean of
    their values, voxels covered by none get 0.

    Returns
    -------
    numpy.ndarray
        float32 array of ``volume_shape``.
    """
    if len(maps) != len(sample_indices):
        raise UsageError(f"{len(maps)} maps but {len(sample_indices)} sample indices: one index per map")
    shape = tuple(int(d) for d in volume_shape)
    n_samples = extractor.n_samples(shape)  # also checks the shape against the extractor
    total = np.zeros(shape, dtype=np.float64)
    count = np.zeros(shape, dtype=np.int64)
    for saliency_map, i in zip(maps, sample_indices):
        i = operator.index(i)
        if not 0 <= i < n_samples:
            raise IndexError(f"sample index {i} out of range: this volume has {n_samples} samples")
        target, source, expected = _placement(extractor, shape, i)
        saliency_map = np.asarray(saliency_map, dtype=np.float64)
        if saliency_map.shape != expected:
            raise DataError(f"the map of sample {i} has shape {saliency_map.shape}; "
                            f"{extractor.mode} mode expects {expected}")
        total[target] += saliency_map[source]
        count[target] += 1
    np.divide(total, count, out=total, where=count > 0)
    return total.astype(np.float32)


def save_nifti(volume: np.ndarray, affine: np.ndarray, path: str | Path) -> None:
    """Write ``volume`` as a float32 NIfTI-1 file (``.nii`` or ``.nii.gz``), atomically.

    ``affine`` is stored as both sform and qform, with code 2 (aligned to another image).
    """
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise UsageError(f"a NIfTI file name ends in .nii or .nii.gz: {path}")
    data = np.asarray(volume, dtype=np.float32)
    if data.ndim != 3:
        raise DataError(f"expected a 3-D volume, found shape {data.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise DataError(f"expected a finite 4x4 affine, found {affine.tolist()}")
    image = nib.Nifti1Image(data, affine)
    image.set_sform(affine, code=2)
    image.set_qform(affine, code=2)
    image.header.set_data_dtype(np.float32)
    image.header.set_xyzt_units("mm")
    # nibabel picks the format from the suffix, and the temporary name has none: serialise here
    blob = image.to_bytes()
    if path.name.endswith(".gz"):
        blob = gzip.compress(blob, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
