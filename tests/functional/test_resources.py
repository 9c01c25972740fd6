"""A full disk or a read-only OUTPUT_DIR: exit 73, one line that names the file, no partial files.

The end-to-end cases mount a small tmpfs (root only: skipped on a workstation without the rights,
a failure in CI); the in-process cases inject the same errors into the writers and run everywhere.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bidsapp_dl.generate import generate_dataset

from ..conftest import SMALL, run_script, validation_errors
from .integrity import check_whole, temporary_files, tensors
from .test_kill import GROUP, TINY


def _mount(folder: Path, options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        _unavailable(f"cannot mount a small file system here ({run.stderr.strip()})")


def _unavailable(why: str) -> None:
    """Skipped on a workstation without the rights; in CI (as root there) a failure instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}: CI must run these tests (as root, with mount allowed)")
    pytest.skip(why)


@pytest.fixture
def small_fs(tmp_path):
    """``mount(size)`` gives a tmpfs of that size; ``remount(options)`` changes it."""
    mounted: list[Path] = []
    if os.geteuid() != 0:
        _unavailable("mounting a small file system needs root")

    class Fs:
        def mount(self, size: str) -> Path:
            folder = tmp_path / f"fs{len(mounted)}"
            _mount(folder, f"size={size}")
            mounted.append(folder)
            return folder

        def remount(self, folder: Path, options: str) -> None:
            subprocess.run(["mount", "-o", f"remount,{options}", str(folder)], check=True)

    yield Fs()
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def assert_one_line_73(run: subprocess.CompletedProcess, what: str) -> str:
    assert run.returncode == 73, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("neurodl: error: cannot "), run.stderr
    assert what in last, last
    assert "Traceback" not in run.stderr, run.stderr
    return last


def assert_nothing_partial(out: Path) -> None:
    assert temporary_files(out) == []
    check_whole(out)


def test_full_disk_at_participant_level(bids, small_fs, tmp_path):
    reference = tmp_path / "reference"
    assert run_script(bids, reference, "participant", *SMALL, "--skip-bids-validation").returncode == 0
    disk = small_fs.mount("2m")  # room for about three of the twelve tensors
    out = disk / "out"
    args = [bids, out, "participant", *SMALL, "--skip-bids-validation", "--nprocs", "2"]
    last = assert_one_line_73(run_script(*args), "No space left on device")
    assert str(out) in last and "free" in last
    assert_nothing_partial(out)
    small_fs.remount(disk, "size=64m")  # space freed: the same command finishes the job
    run = run_script(*args)
    assert run.returncode == 0, run.stderr
    assert validation_errors(out) == []
    assert_nothing_partial(out)
    assert tensors(out) == tensors(reference)


def test_read_only_output_dir(bids, small_fs):
    disk = small_fs.mount("64m")
    out = disk / "out"
    run = run_script(bids, out, "participant", *SMALL, "--skip-bids-validation", "--participant-label",
                     "01")
    assert run.returncode == 0, run.stderr
    small_fs.remount(disk, "ro")
    before = _files(out)
    for args in (["participant", *SMALL, "--skip-bids-validation"],
                 ["group", "--stages", "split", "--maps-name", "m", "--n-splits", "1"]):
        last = assert_one_line_73(run_script(bids, out, *args), "Read-only file system")
        assert str(out) in last
    assert _files(out) == before
    last = assert_one_line_73(run_script(bids, disk / "new" / "out", "participant", *SMALL),
                              "Read-only file system")
    assert str(disk / "new") in last


@pytest.mark.slow
def test_full_disk_during_training(small_fs, tmp_path):
    bids = tmp_path / "bids"
    generate_dataset(bids, kind="trivial", n_subjects=8, sessions=1, seed=4, voxel_size=6.0)
    disk = small_fs.mount("4m")  # tensors and splits fit, a training checkpoint does not
    out = disk / "out"
    assert run_script(bids, out, "participant", *TINY).returncode == 0
    args = [bids, out, "group", *GROUP]
    assert_one_line_73(run_script(*args), "No space left on device")
    assert_nothing_partial(out)
    small_fs.remount(disk, "size=128m")
    run = run_script(*args)
    assert run.returncode == 64 and "--resume" in run.stderr  # the MAPS was split
    run = run_script(*args, "--resume")
    assert run.returncode == 0, run.stderr
    assert validation_errors(out) == []
    assert_nothing_partial(out)


# --- in process: the same errors, injected --------------------------------------------------

def _failing(code: int):
    def fail(*args, **kwargs):
        where = args[-1] if args and isinstance(args[-1], str | os.PathLike) else None
        raise OSError(code, os.strerror(code), where)
    return fail


@pytest.mark.parametrize("target, code", [
    ("os.replace", errno.EROFS),      # every atomic write, at its rename
    ("os.fsync", errno.ENOSPC),       # tensors and models, at their flush to disk
])
def test_write_errors_become_exit_73(bids, neurodl, monkeypatch, tmp_path, target, code):
    out = tmp_path / "out"
    monkeypatch.setattr(os, target.split(".")[1], _failing(code))
    result, err = neurodl(bids, out, "participant", *SMALL, "--skip-bids-validation",
                          "--participant-label", "01")
    assert result == 73, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("neurodl: error: cannot write") and os.strerror(code) in last, err
    assert "Traceback" not in err
    monkeypatch.undo()
    assert temporary_files(out) == []
    check_whole(out)


def test_permission_denied_in_output_dir_is_exit_73(bids, neurodl, monkeypatch, tmp_path):
    out = tmp_path / "out"
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(".npy"):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    result, err = neurodl(bids, out, "participant", *SMALL, "--skip-bids-validation",
                          "--participant-label", "02")
    assert result == 73 and "Permission denied" in err and ".npy" in err, err
    monkeypatch.undo()
    assert temporary_files(out) == []
    assert not list(out.rglob("*.npy"))


def test_full_disk_while_saving_a_model(tmp_path, monkeypatch):
    """torch's writer reports a full disk as a RuntimeError: models are written by Python."""
    import torch

    from bidsapp_dl.errors import OutputError
    from bidsapp_dl.maps.weights import save_weights

    monkeypatch.setattr(os, "fsync", _failing(errno.ENOSPC))
    path = tmp_path / "split-0" / "best-loss" / "model.pt"
    with pytest.raises(OutputError, match="No space left on device"):
        save_weights({"w": torch.zeros(3)}, path)
    assert list(tmp_path.rglob("*")) == [path.parent.parent, path.parent]
    monkeypatch.undo()
    save_weights({"w": torch.ones(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    shutil.rmtree(path.parent)
