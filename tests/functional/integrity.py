"""Checks that an OUTPUT_DIR holds only whole files, shared by the kill, concurrency and resource tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bidsapp_dl.extract.store import data_sha256

from ..conftest import ROOT


def temporary_files(out: Path) -> list[Path]:
    """Files and folders under a temporary name (a writer's, or a killed writer's leftovers)."""
    return sorted(p for p in out.rglob(".*") if p.name.endswith(".tmp") or ".old-" in p.name
                  or (p.is_dir() and p.parent.name == "maps"))


def _hidden(path: Path, out: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(out).parts)


def check_whole(out: Path) -> int:
    """Every JSON and TSV parses, every tensor and model loads, every sidecar describes its tensor.

    Hidden names (temporary files of a killed writer, locks) are not outputs and are left out.
    Returns the number of files checked.
    """
    n = 0
    for path in sorted(out.rglob("*")):
        if not path.is_file() or _hidden(path, out):
            continue
        n += 1
        if path.suffix == ".json":
            meta = json.loads(path.read_text(encoding="utf-8"))
            tensor = path.with_suffix(".npy")
            if "DataSHA256" in meta:
                assert tensor.is_file(), f"{path} describes a missing tensor"
                assert data_sha256(np.load(tensor)) == meta["DataSHA256"], f"{path} != {tensor}"
        elif path.suffix == ".tsv":
            pd.read_csv(path, sep="\t")
        elif path.suffix == ".npy":
            np.load(path)
        elif path.suffix == ".pt":
            torch.load(path, weights_only=True)
    return n


def tensors(out: Path) -> dict[str, bytes]:
    """Every tensor of a derivative, by relative path."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.npy"))
            if not _hidden(p, out)}


def sidecars(out: Path) -> dict[str, dict]:
    """Every tensor sidecar without its timing."""
    found = {}
    for p in sorted(out.rglob("*_desc-tensor_*.json")):
        meta = json.loads(p.read_text())
        meta.pop("ExtractionSeconds", None)
        found[p.relative_to(out).as_posix()] = meta
    return found


def start(*args: object) -> subprocess.Popen:
    """``run.py`` in its own process group (a cluster job), output discarded."""
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def kill(job: subprocess.Popen) -> bool:
    """SIGKILL the job and its worker processes, as a scheduler does; False if it had ended."""
    ended = job.poll() is not None
    try:
        os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    job.communicate()
    return not ended


def kill_when(job: subprocess.Popen, ready, timeout: float = 300) -> bool:
    """Kill the job once ``ready()`` is true; False if it ended first."""
    deadline = time.monotonic() + timeout
    while job.poll() is None and time.monotonic() < deadline:
        if ready():
            return kill(job)
        time.sleep(0.005)
    return kill(job)
