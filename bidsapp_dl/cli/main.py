"""Entry point: parse, set up logging, dispatch to a level, turn errors into exit codes.

This is the only place where exceptions become exit codes (SPEC section 5) and where logging
is configured. Heavy modules (pybids, torch) are imported by the levels, never here.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import time
from pathlib import Path

from ..errors import NeurodlError, OutputError

log = logging.getLogger("bidsapp_dl")


def _setup_logging(verbosity: int) -> None:
    level = logging.DEBUG if verbosity >= 1 else logging.INFO
    if int(os.environ.get("RANK", 0)) > 0:  # other processes of a torchrun job: problems only
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%H:%M:%S"))
    handler.setLevel(level)
    for old in log.handlers:  # main() may run several times in one process (tests, notebooks)
        old.close()
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    # pybids and nibabel talk a lot at INFO
    for noisy in ("bids", "nibabel"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbosity < 2 else logging.DEBUG)


class _LogFile(logging.FileHandler):
    """The run's log file; one that cannot be written (full disk) goes quiet, not the run."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging API
        log.removeHandler(self)


# errors of writing that the user can fix: space and read-only mounts anywhere; permissions and
# names too long in OUTPUT_DIR (elsewhere they may be about reading an input)
FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
NOT_ALLOWED = (errno.EACCES, errno.EPERM, errno.ENAMETOOLONG)


def _is_output_error(exc: OSError, output_dir: Path | None) -> bool:
    if exc.errno in FULL_OR_READ_ONLY:
        return True
    if exc.errno not in NOT_ALLOWED or not exc.filename or output_dir is None:
        return False
    return Path(os.path.abspath(exc.filename)).is_relative_to(os.path.abspath(output_dir))


def _output_error(exc: OSError) -> str:
    where = exc.filename or "OUTPUT_DIR"
    return (f"cannot write {where} ({exc.strerror or exc}); free some space or choose a writable "
            "OUTPUT_DIR (mount it read-write in a container), then run the same command again")


def _log_to_file(output_dir: Path, level: str) -> Path | None:
    """One log file per run under OUTPUT_DIR/logs (DEBUG level, whatever the console shows)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = output_dir / "logs" / f"{level}-{stamp}-{os.getpid()}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _LogFile(path, encoding="utf-8")
    except OSError as exc:
        raise OutputError(
            f"cannot write in OUTPUT_DIR {output_dir} ({exc.strerror}); check that it exists "
            "or can be created, and that it is writable (mount it read-write in a container)"
        ) from exc
    handler.setFormatter(logging.Formatter("%(asctime)s %(processName)s [%(levelname)s] "
                                           "%(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    log.addHandler(handler)
    return path


def _fail(message: str, code: int) -> int:
    print(f"neurodl: error: {message}", file=sys.stderr)
    return code


def _list_models(argv: list[str]) -> int:
    """``--list-models [--input-shape C X Y Z | C H W]``: the architectures, without any data."""
    import argparse

    parser = argparse.ArgumentParser(prog="neurodl --list-models")
    parser.add_argument("--list-models", action="store_true")
    parser.add_argument("--input-shape", type=int, nargs="+", default=[1, 169, 208, 179],
                        metavar="N", help="channel-first sample shape, e.g. 1 169 208 179 or 1 208 179")
    args = parser.parse_args(argv)
    if len(args.input_shape) not in (3, 4):
        parser.error("--input-shape: C X Y Z for 3D samples, C H W for slices")
    from ..models import list_models

    print(list_models(tuple(args.input_shape)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run neurodl; returns the exit code."""
    from .options import parse_args, resolved

    args = list(sys.argv[1:] if argv is None else argv)
    if "--list-models" in args:
        try:
            return _list_models(args)
        except SystemExit as exc:  # argparse: --help (0) or a usage error
            return 0 if exc.code == 0 else 64
    log_path = opts = None
    try:
        try:
            opts, verbosity = parse_args(args)
        except SystemExit as exc:  # argparse: --help, --version, or a usage error (64)
            return exc.code if isinstance(exc.code, int) else 64
        _setup_logging(verbosity)
        if not opts.bids_path.is_dir():
            from ..errors import InputMissingError

            raise InputMissingError(
                f"BIDS_DIR {opts.bids_dir} does not exist or is not a folder; check the path (in a "
                "container, check that it is mounted, e.g. -v /path/to/bids:/data:ro)")
        log_path = _log_to_file(opts.output_path, opts.analysis_level)
        from .. import __version__

        log.info("neurodl %s, %s level, BIDS_DIR %s, OUTPUT_DIR %s", __version__,
                 opts.analysis_level, opts.bids_path, opts.output_path)
        log.debug("options: %s", resolved(opts))
        if opts.analysis_level == "participant":
            from ..extract.participant import run_participant

            run_participant(opts)
        else:
            from ..group import run_group

            run_group(opts, ["neurodl", *args])
        return 0
    except NeurodlError as exc:
        log.debug("failed", exc_info=True)
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted; run the same command again to continue", 130)
    except MemoryError as exc:  # host memory; CUDA's out-of-memory error is a RuntimeError
        log.debug("out of memory", exc_info=True)
        return _fail(f"out of memory ({exc or 'host RAM'}): lower --nprocs or --num-workers, or "
                     "--batch-size; then run the same command again (with --resume at group level)", 1)
    except Exception as exc:  # the one place that catches everything, to log it
        if isinstance(exc, OSError) and _is_output_error(exc, opts.output_path if opts else None):
            log.debug("cannot write", exc_info=True)
            return _fail(_output_error(exc), OutputError.exit_code)
        if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (GPU)
            log.debug("out of GPU memory", exc_info=True)
            first = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
            return _fail(f"out of GPU memory ({first}): lower --batch-size (with --accumulation-steps "
                         "to keep the effective batch size), add --amp, or choose a smaller "
                         "--architecture or the patch mode; then run the same command again with --resume",
                         69)
        log.error("unexpected failure", exc_info=True)
        where = f" (traceback in {log_path})" if log_path else ""
        return _fail(f"unexpected {type(exc).__name__}: {exc}{where}; please report it", 1)
