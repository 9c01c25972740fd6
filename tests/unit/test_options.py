"""The command line: parsing, --config, label normalisation, refusals with the right exit code."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bidsapp_dl.cli.main import main
from bidsapp_dl.cli.options import Options, parse_args, resolved
from bidsapp_dl.errors import AnalysisLevelError, UsageError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dirs(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    return str(bids), str(tmp_path / "out")


def test_defaults_and_labels_with_or_without_prefix(dirs):
    opts, verbosity = parse_args([*dirs, "participant", "--participant_label", "01", "sub-02",
                                  "--session-label", "ses-M000", "M012", "-vv"])
    assert opts.participant_label == ["01", "02"]
    assert opts.session_label == ["M000", "M012"]
    assert verbosity == 2
    assert opts.target_shape == [169, 208, 179]
    assert opts.normalization == "robust-minmax"
    assert isinstance(opts, Options)


def test_duplicate_labels_are_merged(dirs):
    opts, _ = parse_args([*dirs, "participant", "--participant-label", "01", "sub-01"])
    assert opts.participant_label == ["01"]


def test_config_file_toml_and_command_line_wins(dirs, tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('voxel-size = 2.0\ntarget_shape = [32, 40, 36]\nnprocs = 3\n'
                   'skip_bids_validation = true\n')
    opts, _ = parse_args([*dirs, "participant", "--config", str(cfg), "--nprocs", "1"])
    assert opts.voxel_size == 2.0
    assert opts.target_shape == [32, 40, 36]
    assert opts.nprocs == 1
    assert opts.skip_bids_validation is True


def test_config_file_json_values_are_checked(dirs, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"normalization": "zscore", "dtype": "float16"}))
    opts, _ = parse_args([*dirs, "participant", "--config", str(cfg)])
    assert (opts.normalization, opts.dtype) == ("zscore", "float16")
    cfg.write_text(json.dumps({"normalisation": "zscore"}))
    with pytest.raises(UsageError, match="did you mean 'normalization'"):
        parse_args([*dirs, "participant", "--config", str(cfg)])
    cfg.write_text(json.dumps({"dtype": "float64"}))
    with pytest.raises(SystemExit) as exc:
        parse_args([*dirs, "participant", "--config", str(cfg)])
    assert exc.value.code == 64


def test_resolved_options_round_trip_through_config(dirs, tmp_path):
    opts, _ = parse_args([*dirs, "participant", "--voxel-size", "1.5", "--seed", "7"])
    cfg = tmp_path / "all.json"
    cfg.write_text(json.dumps(resolved(opts)))
    again, _ = parse_args([*dirs, "participant", "--config", str(cfg)])
    assert resolved(again) == {**resolved(opts), "config": str(cfg)}


@pytest.mark.parametrize("args, message", [
    (["--normalization", "zscor"], "did you mean 'zscore'"),
    (["--nproc", "2"], "did you mean '--nprocs'"),
    (["--dtype", "float64"], "invalid choice"),
])
def test_bad_options_exit_64_with_suggestion(dirs, capsys, args, message):
    assert main([*dirs, "participant", *args]) == 64
    assert message in capsys.readouterr().err


def test_unknown_level_is_exit_17(dirs, capsys):
    assert main([*dirs, "particpant"]) == 17
    assert "did you mean 'participant'" in capsys.readouterr().err
    with pytest.raises(AnalysisLevelError):
        parse_args([*dirs, "both"])


def test_output_dir_inside_bids_dir_refused(tmp_path, capsys):
    bids = tmp_path / "bids"
    bids.mkdir()
    assert main([str(bids), str(bids), "participant"]) == 64
    assert str(bids / "derivatives" / "neurodl") in capsys.readouterr().err
    assert main([str(bids), str(bids / "results"), "participant"]) == 64
    # the suggested place passes the check
    opts, _ = parse_args([str(bids), str(bids / "derivatives" / "neurodl"), "participant"])
    assert opts.output_path == bids / "derivatives" / "neurodl"


@pytest.mark.parametrize("label", ["../01", "sub-01/x", "01_x", ""])
def test_unsafe_labels_refused(dirs, label):
    with pytest.raises(UsageError, match="not a valid BIDS label"):
        parse_args([*dirs, "participant", "--participant-label", label])


def test_missing_bids_dir_is_exit_66(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"]) == 66
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_help_and_version_are_fast_and_light():
    code = ("import sys, time; t=time.perf_counter(); from bidsapp_dl.cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit: pass\n"
            "try:\n    main(['--version'])\nexcept SystemExit: pass\n"
            "heavy=[m for m in ('torch','bids','nibabel','pandas') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "HEAVY []" in run.stdout
    assert "neurodl 0." in run.stdout
    assert "--participant-label" in run.stdout
    # generous: the point is that nothing heavy is imported, which takes seconds
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("command", [[sys.executable, str(ROOT / "run.py")],
                                     [str(Path(sys.executable).with_name("neurodl"))]])
def test_entry_points_print_the_version(command):
    from bidsapp_dl import __version__

    run = subprocess.run([*command, "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == f"neurodl {__version__}"


class OutOfMemoryError(RuntimeError):
    """Named as torch's (torch.OutOfMemoryError), which cli.main recognises by name."""


@pytest.mark.parametrize("error, code, words", [
    (MemoryError("Unable to allocate 3.2 GiB"), 1, ("out of memory", "--nprocs", "--num-workers")),
    (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details"), 69,
     ("out of GPU memory", "Tried to allocate 2.00 GiB", "--batch-size", "--amp", "--resume")),
])
def test_out_of_memory_ends_with_advice_not_a_traceback(dirs, monkeypatch, capsys, error, code, words):
    import bidsapp_dl.extract.participant as participant

    def exhausted(opts):
        raise error

    monkeypatch.setattr(participant, "run_participant", exhausted)
    bids, out = dirs
    assert main([str(bids), str(out), "participant"]) == code
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("neurodl: error: ") and "Traceback" not in err and "unexpected" not in err
    assert all(w in last for w in words), last
