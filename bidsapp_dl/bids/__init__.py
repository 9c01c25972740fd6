"""BIDS input: indexing with pybids, filters, validation."""
