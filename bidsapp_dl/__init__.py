"""neurodl: reproducible, leakage-proof deep learning on BIDS datasets, as a BIDS App."""

__version__ = "0.1.0"
