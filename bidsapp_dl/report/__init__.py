"""Visual reports: ``maps/<NAME>/report.html`` per MAPS, and ``qc.html`` with per-image mosaics."""
