"""Loading model files safely: weights only, never code.

A MAPS may come from someone else. ``torch.load(..., weights_only=True)`` refuses pickles that
would import or call anything; such a file is reported as bad data, not as a crash.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from ..errors import DataError, InputMissingError
from .io import atomic_path


def load_weights(path: Path, device: Any = "cpu") -> Any:
    """The tensors (state dict, or checkpoint of plain values) stored in ``path``."""
    import torch

    if not Path(path).is_file():
        raise InputMissingError(f"{path} is missing")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200]
        raise DataError(f"{path} is not a weights-only model file and is refused: loading it "
                        f"could run code ({reason}); use models trained by neurodl, or re-save "
                        "the weights alone with torch.save(model.state_dict())") from exc


def save_weights(obj: Any, path: Path) -> None:
    """Write ``obj`` with ``torch.save``, atomically.

    torch's own file writer turns a full disk into an obscure RuntimeError: serialise in memory,
    so that the write itself raises OSError and becomes an output error (exit 73).
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buffer.getbuffer())
        fh.flush()
        os.fsync(fh.fileno())
