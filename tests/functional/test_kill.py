"""kill -9 at random moments: the same command run again completes, and gives what one run gives.

Each case draws its moment from its own seed (a delay within the length of an uninterrupted run,
or the appearance of an output file plus a short delay), so a failure reproduces with its seed.
The whole process group is killed, worker processes included, as a cluster scheduler does.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bidsapp_dl.generate import generate_dataset

from ..conftest import SMALL, run_script, validation_errors
from .integrity import check_whole, kill_when, sidecars, start, temporary_files, tensors

TINY = ["--voxel-size", "8", "--target-shape", "24", "28", "24"]
GROUP = ["--maps-name", "m", "--epochs", "3", "--batch-size", "4", "--learning-rate", "1e-3",
         "--n-splits", "2", "--test-size", "2", "--seed", "5", "--selection-metrics", "loss"]
# twelve moments per level; the default run keeps two at participant level, one at group level
# (a group case is a run and a half), the others run with -m slow
SEEDS = [0, 1] + [pytest.param(s, marks=pytest.mark.slow) for s in range(2, 12)]
GROUP_SEEDS = [0] + [pytest.param(s, marks=pytest.mark.slow) for s in range(1, 12)]


def _timed(*args: object) -> float:
    start_time = time.monotonic()
    run = run_script(*args)
    assert run.returncode == 0, run.stderr
    return time.monotonic() - start_time


def _moment(job, rng: random.Random, length: float, files) -> tuple[str, bool]:
    """Kill ``job`` at a moment drawn from ``rng``: after a delay, or when a file appears."""
    started = time.monotonic()
    if rng.random() < 0.5:
        delay = rng.uniform(0.1, length)
        return f"after {delay:.2f} s", kill_when(job, lambda: time.monotonic() - started >= delay)
    target, jitter = rng.choice(files), rng.uniform(0, 0.05)
    seen: list[float] = []

    def ready() -> bool:
        if not seen and target():
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= jitter

    when = f"{jitter:.3f} s after {target.__doc__}"
    return when, kill_when(job, ready)


def _rerun(*args: object) -> None:
    """The same command again; at group level, with --resume when it asks for it."""
    run = run_script(*args)
    if run.returncode == 64 and "--resume" in run.stderr:
        run = run_script(*args, "--resume")
    assert run.returncode == 0, run.stderr


# --- participant level ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def extracted(dataset_template, tmp_path_factory) -> tuple[Path, float]:
    """The template dataset extracted once, uninterrupted, and how long that took."""
    out = tmp_path_factory.mktemp("reference") / "out"
    length = _timed(dataset_template, out, "participant", *SMALL, "--skip-bids-validation")
    return out, length


def _count(out: Path, n: int):
    def ready() -> bool:
        return sum(1 for _ in out.glob("sub-*/*/*/*")) + sum(1 for _ in out.glob("sub-*/*/*")) >= n
    ready.__doc__ = f"{n} files"
    return ready


@pytest.mark.parametrize("seed", SEEDS)
def test_participant_level_killed_at_random(bids, tmp_path, extracted, seed):
    reference, length = extracted
    rng = random.Random(seed)
    out = tmp_path / "out"
    args = [bids, out, "participant", *SMALL, "--skip-bids-validation", "--nprocs",
            rng.choice([1, 2])]
    when, killed = _moment(start(*args), rng, length, [_count(out, k) for k in range(1, 40)])
    print(f"participant level, seed {seed}: killed {when}" if killed else "ended before the kill")
    check_whole(out)  # what a killed job leaves is whole, or hidden under a temporary name
    _rerun(*args)
    assert validation_errors(out) == [], when
    check_whole(out)
    assert tensors(out) == tensors(reference), f"killed {when} (killed: {killed})"
    assert sidecars(out) == sidecars(reference)
    assert all(p.name.startswith(".") for p in temporary_files(out))


# --- group level ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, float]:
    """Extracted tensors of 8 participants, and an uninterrupted group run on them."""
    bids = tmp_path_factory.mktemp("group") / "bids"
    generate_dataset(bids, kind="trivial", n_subjects=8, sessions=1, seed=4, voxel_size=6.0)
    out = bids / "derivatives" / "neurodl"
    run = run_script(bids, out, "participant", *TINY, "--nprocs", "2")
    assert run.returncode == 0, run.stderr
    shutil.copytree(bids, bids.with_name("clean"))
    length = _timed(bids, out, "group", *GROUP)
    return bids, length


def _exists(path: Path):
    def ready() -> bool:
        return path.exists()
    ready.__doc__ = path.name if path.parent.name.startswith("split") else \
        "/".join(path.parts[-3:])
    return ready


def _state_dicts_equal(a: Path, b: Path) -> bool:
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def assert_same_maps(once: Path, again: Path) -> None:
    """Same splits, same training (epoch rows, best models, selection), same tables."""
    def files(maps: Path, pattern: str) -> dict[str, bytes]:
        return {p.relative_to(maps).as_posix(): p.read_bytes() for p in sorted(maps.glob(pattern))}

    recorded = [json.loads((m / "maps.json").read_text()) for m in (once, again)]
    for maps in recorded:  # in other folders, and the stages of one job may differ
        for key in ("bids_dir", "output_dir", "stages"):
            del maps["options"][key]
    assert recorded[0] == recorded[1]
    for pattern in ("groups/**/*.tsv", "split-*/best-*/*.json",
                    "split-*/best-*/*/*.tsv", "summary.tsv"):
        assert files(once, pattern) == files(again, pattern), pattern
    for log in once.glob("split-*/training_logs/training.tsv"):
        rows = [pd.read_csv(m / log.relative_to(once), sep="\t").drop(columns="time")
                for m in (once, again)]
        pd.testing.assert_frame_equal(*rows)
    models = sorted(p.relative_to(once) for p in once.glob("split-*/best-*/model.pt"))
    assert models == sorted(p.relative_to(again) for p in again.glob("split-*/best-*/model.pt"))
    for model in models:
        assert _state_dicts_equal(once / model, again / model), model


@pytest.mark.parametrize("seed", GROUP_SEEDS)
def test_group_level_killed_at_random(trained, tmp_path, seed):
    reference, length = trained
    rng = random.Random(1000 + seed)
    bids = tmp_path / "bids"
    shutil.copytree(reference.with_name("clean"), bids)
    out = bids / "derivatives" / "neurodl"
    maps = out / "maps" / "m"
    args = [bids, out, "group", *GROUP]
    files = [_exists(maps / "maps.json")] + [
        _exists(maps / f"split-{i}" / name) for i in (0, 1)
        for name in ("checkpoint.pt", "best-loss/model.pt", "best-loss/test")] + [
        _exists(maps / "summary.tsv")]
    when, killed = _moment(start(*args), rng, length, files)
    print(f"group level, seed {seed}: killed {when}" if killed else "ended before the kill")
    check_whole(out)
    _rerun(*args)
    assert validation_errors(out) == [], when
    check_whole(out)
    assert_same_maps(reference / "derivatives/neurodl/maps/m", maps)
    assert json.loads((maps / "maps.json").read_text())["seed"] == 5
