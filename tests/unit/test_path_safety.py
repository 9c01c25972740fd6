"""Names from the command line become folders only when they stay inside theirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bidsapp_dl.cli.main import main
from bidsapp_dl.errors import UsageError
from bidsapp_dl.maps.layout import MAX_NAME_LENGTH, MapsLayout, safe_name

BAD_NAMES = ["../x", "..", ".", "a/b", "a/../../b", "/tmp/x", ".hidden", "a\\b", "a b", "",
             "x" * (MAX_NAME_LENGTH + 1)]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_layout_refuses_names_that_leave_their_folder(tmp_path, name):
    with pytest.raises(UsageError):
        MapsLayout.under(tmp_path, name)
    layout = MapsLayout(tmp_path / "maps" / "m")
    for path_of in (layout.group_data, lambda g: layout.prediction_tsv(0, "loss", g, "image"),
                    lambda g: layout.interpret_dir(0, "loss", g, "grad-cam")):
        with pytest.raises(UsageError, match="name"):
            path_of(name)


@pytest.mark.parametrize("name", ["m", "adcn-2024.v1", "a+b_c", "x" * MAX_NAME_LENGTH])
def test_good_names_stay_inside(tmp_path, name):
    layout = MapsLayout.under(tmp_path, safe_name(name, "MAPS name"))
    for path in (layout.root, layout.group_data(name), layout.prediction_tsv(1, "BA", name, "patch"),
                 layout.interpret_dir(0, "loss", name, "gradients")):
        assert path.resolve().is_relative_to((tmp_path / "maps").resolve())
        assert all(len(part) < 255 for part in path.parts)


def _run(tmp_path: Path, capsys, *args: str) -> tuple[int, str]:
    bids = tmp_path / "bids"
    bids.mkdir(exist_ok=True)
    code = main([str(bids), str(tmp_path / "out"), *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("option, value", [
    ("--maps-name", "../x"), ("--maps-name", "a/b"), ("--maps-name", "/tmp/x"),
    ("--maps-name", "m" * (MAX_NAME_LENGTH + 1)),
    ("--group-name", "../x"), ("--group-name", "a/b"), ("--group-name", "/tmp/x"),
    ("--group-name", "g" * (MAX_NAME_LENGTH + 1)),
])
def test_group_names_refused_before_anything_is_written(tmp_path, capsys, option, value):
    code, err = _run(tmp_path, capsys, "group", "--stages", "predict", option, value)
    assert code == 64, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and value[:20] in lines[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, value", [
    ("--participant-label", "../x"), ("--participant-label", "sub-a/b"),
    ("--participant-label", "/tmp/x"), ("--participant-label", "1" * 65),
    ("--session-label", "../x"), ("--session-label", "ses-" + "1" * 65),
])
def test_labels_refused_before_anything_is_written(tmp_path, capsys, option, value):
    code, err = _run(tmp_path, capsys, "participant", option, value)
    assert code == 64, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "label" in lines[0] and value[:20] in lines[0], err
    assert not (tmp_path / "out").exists()
