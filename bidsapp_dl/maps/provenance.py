"""Provenance: the software and hardware a MAPS was made with, and hashes of its inputs.

Enough to tell, later, whether a result can be reproduced: versions, seeds (in maps.json),
the container image, the git commit of a checkout, and hashes of the labels and tensors used.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from .. import __version__

PACKAGES = ("neurodl", "torch", "numpy", "scipy", "pandas", "scikit-learn", "nibabel", "pybids",
            "argparse-dataclass", "tensorboard")


def _versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _torch() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"available": False}
    info: dict[str, Any] = {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "num_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _container() -> dict[str, str] | None:
    for var in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        if os.environ.get(var):
            return {"type": "singularity", "uri": os.environ[var]}
    tag = os.environ.get("NEURODL_CONTAINER_TAG")
    if tag:
        return {"type": "docker", "tag": tag}
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return {"type": "docker", "tag": "unknown"}
    return None


def git_commit(path: Path | None = None) -> dict[str, Any] | None:
    """Commit (and whether the tree is dirty) of the checkout this package runs from, if any."""
    where = path or Path(__file__).resolve().parents[2]
    if not (where / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def environment(command: list[str]) -> dict[str, Any]:
    """What environment.json holds; ``command`` is the command line that made the MAPS."""
    return {
        "neurodl": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "packages": _versions(),
        "torch": _torch(),
        "container": _container(),
        "git": git_commit(),
        "command": list(command),
    }


def files_sha256(paths: list[Path]) -> str | None:
    """One hash over several files (name and content), None when none exists."""
    digest = hashlib.sha256()
    found = False
    for path in sorted(paths):
        if path.is_file():
            found = True
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest() if found else None


def rows_sha256(rows: list[str]) -> str:
    """A hash of text rows, independent of their order."""
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()
