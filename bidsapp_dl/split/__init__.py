"""Labels, duplicates and leakage-proof splits of the group level."""
