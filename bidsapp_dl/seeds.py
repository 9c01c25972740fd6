"""One master seed; every consumer derives its own from it by name."""

from __future__ import annotations

import hashlib
import random

import numpy as np


def derive(master: int, *names: object) -> int:
    """A 31-bit seed for ``names`` (e.g. ("split", 2, "epoch", 5)), stable across versions."""
    text = ":".join([str(int(master)), *map(str, names)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
