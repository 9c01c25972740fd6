"""Atomic writers: every file goes to a temporary name in its folder, then is renamed into place.

A run that dies leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import OutputError


def _cannot_write(path: Path, exc: OSError) -> OutputError:
    if exc.errno == errno.ENAMETOOLONG:
        return OutputError(f"cannot write {path}: its name is {len(path.name)} characters long, more "
                           "than the file system allows (usually 255); shorten the input file's "
                           "name (its entity labels, e.g. acq-) or the name given on the command line")
    return OutputError(f"cannot write {path} ({exc.strerror}); check free space and permissions "
                       "of the output folder")


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    # the temporary name is kept short: a name that fits must not fail for its .tmp twin
    prefix = f".{path.name[:200]}."
    try:
        try:
            fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
        except FileNotFoundError:  # the folder is made only when it is missing
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _cannot_write(path, exc) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _cannot_write(path, exc) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def read_json(path: Path | str) -> Any | None:
    """The parsed JSON file, or None when it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return None


def read_settings(path: Path | str, what: str) -> Any:
    """A TOML or JSON (by its suffix) settings file; UsageError naming ``what`` on any problem."""
    import tomllib

    from ..errors import UsageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"{what} {path}: no such file")
    text = p.read_text(encoding="utf-8-sig")
    try:
        return json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except ValueError as exc:
        reason = " ".join(str(exc).split())
        raise UsageError(f"{what} {path}: cannot parse it ({reason}); expected TOML or JSON") from exc


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def folder_lock(folder: Path, waiting: str | None = None) -> Iterator[None]:
    """An exclusive lock on ``folder`` for read-modify-write of shared files.

    Many participant jobs write the same dataset_description.json and .bidsignore at once.
    Where the file system has no working ``flock`` (some network mounts), the atomic renames
    still guarantee whole files. ``waiting`` is logged when another process holds the lock.
    """
    lock = folder / ".neurodl.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot write in {folder} ({exc.strerror}); check that it is "
                          "writable") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                logging.getLogger("bidsapp_dl").info("%s", waiting)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # no flock here: the atomic renames still hold
        yield
    finally:
        os.close(fd)


STALE_AFTER_S = 2 * 3600  # no temporary file lives that long: a run that was killed left it


def remove_stale_temporaries(folders: Iterable[Path | str], recursive: bool = True,
                             older_than_s: float = STALE_AFTER_S) -> int:
    """Remove what killed runs left in ``folders`` (and below them when ``recursive``): hidden
    ``.*.tmp`` files of the atomic writers, and hidden half-written MAPS folders
    (``maps/.NAME.*``), once they are older than ``older_than_s``; the temporaries of runs still
    going are younger. Returns how many."""
    import shutil
    import time

    removed, limit = 0, time.time() - older_than_s
    for top in folders:
        for folder, dirs, files in os.walk(top):
            here = Path(folder)
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        if (here / name).lstat().st_mtime < limit:
                            (here / name).unlink()
                            removed += 1
            if here.name == "maps":
                for name in [d for d in dirs if d.startswith(".")]:
                    dirs.remove(name)
                    with contextlib.suppress(OSError):
                        if (here / name).lstat().st_mtime < limit:
                            shutil.rmtree(here / name)
                            removed += 1
            if not recursive:
                dirs.clear()
    if removed:
        logging.getLogger("bidsapp_dl").info("removed %d temporary file(s) or folder(s) left by "
                                             "interrupted runs", removed)
    return removed
