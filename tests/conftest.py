"""Shared fixtures: small generated BIDS datasets and a way to run neurodl end to end."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bidsapp_dl.bids.validate import validator_command
from bidsapp_dl.cli.main import main
from bidsapp_dl.generate import generate_dataset

ROOT = Path(__file__).resolve().parents[1]
# small tensors keep the end-to-end tests fast; the defaults are exercised by the demo
SMALL = ["--voxel-size", "4", "--target-shape", "48", "56", "48"]


@pytest.fixture(scope="session")
def dataset_template(tmp_path_factory) -> Path:
    """4 participants, 2 sessions, extra runs and an acq- variant, varied orientations."""
    root = tmp_path_factory.mktemp("template") / "bids"
    generate_dataset(root, kind="shepplogan", n_subjects=4, sessions=2, seed=3, voxel_size=4.0,
                     extra_runs=True, acq_variant=True)
    return root


@pytest.fixture
def bids(dataset_template, tmp_path) -> Path:
    """A private copy of the template dataset that a test may change."""
    dest = tmp_path / "bids"
    shutil.copytree(dataset_template, dest)
    return dest


class Runner:
    """Run neurodl in this process (fast) and keep what it printed."""

    def __init__(self, capsys):
        self.capsys = capsys

    def __call__(self, *args: object) -> tuple[int, str]:
        """Exit code and standard error; every successful run's output must be valid BIDS."""
        code = main([str(a) for a in args])
        err = self.capsys.readouterr().err
        if code == 0:
            assert validation_errors(Path(args[1])) == [], f"invalid derivative {args[1]}"
        return code, err


@pytest.fixture
def neurodl(capsys) -> Runner:
    return Runner(capsys)


def run_script(*args: object, **kwargs) -> subprocess.CompletedProcess:
    """Run ``run.py`` in a new process, as a user would."""
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *map(str, args)],
                          capture_output=True, text=True, **kwargs)


def axis_aligned_matrix(rng: np.random.Generator, scales: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """A random mapping that only permutes, flips and scales axes (by ``scales``), and its
    permutation: output axis c moves along input axis perm[c]."""
    perm = rng.permutation(3)
    matrix = np.zeros((3, 3))
    for c in range(3):
        matrix[perm[c], c] = rng.choice([-1.0, 1.0]) * rng.choice(scales)
    return matrix, perm


def validation_errors(dataset: Path) -> list[str]:
    """Errors that bids-validator-deno finds in a dataset (warnings ignored)."""
    run = subprocess.run([validator_command(), str(dataset), "--format", "json"],
                         capture_output=True, text=True, timeout=300)
    issues = json.loads(run.stdout)["issues"]["issues"]
    return [f"{i['code']} {i.get('location', '')}" for i in issues if i["severity"] == "error"]


@pytest.fixture(autouse=True)
def _fresh_logging():
    """main() configures the package logger; give every test a clean one."""
    yield
    logger = logging.getLogger("bidsapp_dl")
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()
    logger.propagate = True
