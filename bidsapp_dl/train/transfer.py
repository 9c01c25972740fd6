"""Transfer learning: weights and training participants carried over from another MAPS.

CNN to CNN copies every tensor whose name and shape match (a new output layer for new classes
is left as initialised). An autoencoder's encoder goes into a CNN's convolutional part: the two
have the same layout (``encoder.*`` -> ``features.*``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from ..errors import InputMissingError, UsageError
from ..maps.layout import MapsLayout
from ..maps.weights import load_weights

log = logging.getLogger(__name__)


def source_layout(path: str) -> MapsLayout:
    layout = MapsLayout(Path(path).expanduser().absolute())
    if not layout.exists():
        raise InputMissingError(f"--transfer-from {path}: not a MAPS (no maps.json)")
    return layout


def source_seen(path: str) -> pd.DataFrame:
    """Everything the source MAPS (and its own sources) trained on."""
    return pd.read_csv(source_layout(path).train_validation_tsv, sep="\t", dtype=str,
                       keep_default_na=False)


def transfer_weights(model: torch.nn.Module, path: str, split: int, selection: str,
                     freeze: str) -> list[str]:
    """Load the source's best-<selection> model of ``split`` into ``model``; returns the names."""
    layout = source_layout(path)
    weights = layout.model(split, selection)
    if not weights.is_file():
        raise InputMissingError(f"--transfer-from: {weights} is missing (the source has no "
                                f"split {split} trained with best-{selection})")
    source = load_weights(weights)
    if any(k.startswith("encoder.") for k in source):
        source = {"features." + k[len("encoder."):]: v for k, v in source.items()
                  if k.startswith("encoder.")}
    target = model.state_dict()
    taken = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    if not any(k.startswith("features.") for k in taken):
        raise UsageError(f"--transfer-from {path}: none of its convolutional weights fit this "
                         "architecture; use the same architecture (or its autoencoder)")
    model.load_state_dict(taken, strict=False)
    if freeze == "features":
        for name, parameter in model.named_parameters():
            if name in taken and name.startswith("features."):
                parameter.requires_grad_(False)
    log.info("split %d: %d of %d weight tensors transferred from %s (best-%s)%s", split,
             len(taken), len(target), layout.root, selection,
             ", convolutional layers frozen" if freeze == "features" else "")
    return sorted(taken)
