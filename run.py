#!/usr/bin/env python3
"""neurodl BIDS App entry point: ``run.py BIDS_DIR OUTPUT_DIR {participant,group} [options]``."""

import sys

from bidsapp_dl.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
