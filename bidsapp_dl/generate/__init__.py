"""Synthetic BIDS datasets of T1w head phantoms, for demonstrations, tests and benchmarks.

``generate_dataset`` is imported on first use, so that ``neurodl-generate --help`` stays fast.
"""

from __future__ import annotations

__all__ = ["generate_dataset"]


def __getattr__(name: str):
    if name == "generate_dataset":
        from .dataset import generate_dataset

        return generate_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
