"""Command line of ``neurodl-generate``: write a synthetic BIDS dataset."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .. import __version__
from ..errors import NeurodlError, OutputError, UsageError

KINDS = ("trivial", "random", "shepplogan")


class _Parser(argparse.ArgumentParser):
    # Bad arguments exit 64 (BIDS Apps usage error) with one line, not argparse's 2.
    def error(self, message: str):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (no heavy imports, so that ``--help`` is fast)."""
    p = _Parser(prog="neurodl-generate",
                description="Write a synthetic raw BIDS dataset of T1w head phantoms in two "
                            "classes (CN, AD), for demonstrations, tests and benchmarks.")
    p.add_argument("out", metavar="OUT", help="output folder (absent or empty)")
    p.add_argument("--kind", choices=KINDS, default="shepplogan",
                   help="trivial: AD has a darker left hemisphere; random: labels unrelated to "
                        "images; shepplogan: AD has smaller hippocampi, larger ventricles "
                        "(default: %(default)s)")
    p.add_argument("--n-subjects", type=int, default=10, metavar="N",
                   help="participants, at least 2, half of each class (default: %(default)s)")
    p.add_argument("--sessions", type=int, default=1, metavar="S",
                   help="visits per participant, ses-M000, ses-M012... (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, metavar="K",
                   help="master seed; the same seed gives identical files (default: %(default)s)")
    p.add_argument("--voxel-size", type=float, default=1.2, metavar="MM",
                   help="voxel size in mm; 3 or more gives small, fast images "
                        "(default: %(default)s)")
    p.add_argument("--fov", type=float, nargs=3, default=(190.0, 230.0, 230.0),
                   metavar=("X", "Y", "Z"), help="field of view in mm (default: 190 230 230)")
    p.add_argument("--extra-runs", action="store_true",
                   help="add run-1/run-2 scans at the first visit of two participants")
    p.add_argument("--acq-variant", action="store_true",
                   help="add a coarser acq-lowres scan at the first visit of two participants")
    p.add_argument("--duplicates", type=int, default=0, metavar="D",
                   help="extra participants whose images copy another's (default: 0)")
    p.add_argument("--ras-only", action="store_true",
                   help="plain RAS, axis-aligned, isotropic grids for every participant")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it already holds a BIDS dataset")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--version", action="version", version=f"neurodl-generate {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``neurodl-generate``; return the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    except UsageError as exc:
        print(f"neurodl-generate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from .dataset import generate_dataset

    start = time.perf_counter()
    try:
        out = generate_dataset(args.out, kind=args.kind, n_subjects=args.n_subjects,
                               sessions=args.sessions, seed=args.seed,
                               voxel_size=args.voxel_size, fov=tuple(args.fov),
                               extra_runs=args.extra_runs, acq_variant=args.acq_variant,
                               duplicates=args.duplicates, ras_only=args.ras_only,
                               overwrite=args.overwrite)
    except NeurodlError as exc:
        print(f"neurodl-generate: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        err = OutputError(f"cannot write {exc.filename or args.out}: {exc.strerror or exc}")
        print(f"neurodl-generate: error: {err}", file=sys.stderr)
        return err.exit_code
    if not args.quiet:
        print(f"wrote {args.kind} dataset of {args.n_subjects + args.duplicates} participants "
              f"to {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
