"""One exception per exit code of the command line (SPEC section 5).

Each class also subclasses the matching built-in exception, so that library users can catch
``ValueError`` or ``FileNotFoundError`` as usual; only ``cli.main`` turns them into exit codes.
"""

from __future__ import annotations


class NeurodlError(Exception):
    """Base class: every error neurodl raises on purpose. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class BidsValidationError(NeurodlError, ValueError):
    """BIDS_DIR failed BIDS validation."""

    exit_code = 16


class AnalysisLevelError(NeurodlError, ValueError):
    """The analysis level is neither ``participant`` nor ``group``."""

    exit_code = 17


class NoImagesError(NeurodlError, LookupError):
    """The filters selected no image."""

    exit_code = 18


class UsageError(NeurodlError, ValueError):
    """Bad command line: an option value that cannot work."""

    exit_code = 64


class DataError(NeurodlError, ValueError):
    """Bad data: a corrupt image, bad labels, refused leakage."""

    exit_code = 65


class BadImageError(DataError):
    """An input image that cannot be read or used (names the file)."""


class InputMissingError(NeurodlError, FileNotFoundError):
    """An input that should exist does not (a folder, a label, a file)."""

    exit_code = 66


class DeviceError(NeurodlError, RuntimeError):
    """The requested device (a GPU) is not available (sysexits' EX_UNAVAILABLE)."""

    exit_code = 69


class OutputError(NeurodlError, OSError):
    """An output cannot be created (permissions, full disk)."""

    exit_code = 73
