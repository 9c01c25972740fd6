"""Output layout and atomic writers."""
