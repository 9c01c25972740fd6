"""Training data: the Dataset over stored tensors, augmentations, samplers and loaders."""

from __future__ import annotations

from .augment import AUGMENTATIONS, Augment
from .dataset import TASKS, TensorDataset, read_npy_header
from .loader import SAMPLERS, EpochSampler, class_weights, epoch_generator, make_loader, seed_worker

__all__ = [
    "AUGMENTATIONS",
    "SAMPLERS",
    "TASKS",
    "Augment",
    "EpochSampler",
    "TensorDataset",
    "class_weights",
    "epoch_generator",
    "make_loader",
    "read_npy_header",
    "seed_worker",
]
