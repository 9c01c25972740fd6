"""BIDS tables and the labels of the group level, on small hand-written TSV files."""

from __future__ import annotations

import json
import logging
import math

import pandas as pd
import pytest

from bidsapp_dl.bids.tables import participants_table, read_tsv, sessions_table
from bidsapp_dl.errors import DataError, InputMissingError
from bidsapp_dl.split.labels import LabelInfo, attach_labels


def write(path, rows, bom=False, crlf=False):
    """Write ``rows`` (lists of cells) as a TSV file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    newline = "\r\n" if crlf else "\n"
    text = newline.join("\t".join(r) for r in rows) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def images(*keys, **extra):
    """An image table for ("sub-01", "ses-M000") keys, with a tensor path per row."""
    table = pd.DataFrame({"participant_id": [k[0] for k in keys], "session_id": [k[1] for k in keys],
                          "tensor": [f"/t/{p}_{s}.npy" for p, s in keys]})
    for name, values in extra.items():
        table[name] = values
    return table


# ---------------------------------------------------------------- read_tsv


def test_read_tsv_bom_crlf_strip_and_missing(tmp_path):
    path = write(tmp_path / "t.tsv", [[" participant_id ", "age", "group", "note"],
                                      ["001", " 72 ", "NA", "n/a"], ["sub-2", "", "N/A", " x "]],
                 bom=True, crlf=True)
    table = read_tsv(path)
    assert list(table.columns) == ["participant_id", "age", "group", "note"]
    assert table["participant_id"].tolist() == ["001", "sub-2"]
    assert table["age"].tolist() == ["72", None]
    assert table.loc[0, "group"] == "NA"          # only n/a and empty cells are missing
    assert table.loc[1, "group"] is None
    assert table.loc[0, "note"] is None and table.loc[1, "note"] == "x"
    assert all(isinstance(v, str) for v in table["participant_id"])


def test_read_tsv_missing_file_names_it(tmp_path):
    with pytest.raises(InputMissingError, match="nothere.tsv"):
        read_tsv(tmp_path / "nothere.tsv")


def test_read_tsv_ragged_row_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.tsv", [["participant_id", "age"], ["sub-01", "70"], ["sub-02"]])
    with pytest.raises(DataError, match=r"bad\.tsv line 3 has 1"):
        read_tsv(path)
    write(path, [["participant_id", "age"], ["sub-01", "70", "71"]])
    with pytest.raises(DataError, match="line 2 has 3"):
        read_tsv(path)
    # a CRLF file must count its lines the same way
    write(path, [["participant_id", "age"], ["sub-01", "70"], ["sub-02", "1", "2"]], crlf=True)
    with pytest.raises(DataError, match="line 3 has 3"):
        read_tsv(path)


def test_read_tsv_tolerates_trailing_tabs_and_blank_lines(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("participant_id\tage\n\nsub-01\t70\t\t\n\n", encoding="utf-8")
    assert read_tsv(path).values.tolist() == [["sub-01", "70"]]


def test_read_tsv_not_utf8_and_repeated_header(tmp_path):
    path = tmp_path / "latin.tsv"
    path.write_bytes("participant_id\tsite\nsub-01\tcr\u00e9teil\n".encode("latin-1"))
    with pytest.raises(DataError, match="line 2 is not UTF-8"):
        read_tsv(path)
    write(path, [["participant_id", "age", "age"], ["sub-01", "1", "2"]])
    with pytest.raises(DataError, match="repeats column.*age"):
        read_tsv(path)


# ---------------------------------------------------------------- participants / sessions


def test_participants_prefix_and_zero_padding(tmp_path):
    write(tmp_path / "participants.tsv", [["participant_id", "diagnosis"], ["001", "AD"],
                                          ["sub-1", "CN"], ["sub-002", "CN"]])
    table = participants_table(tmp_path)
    assert table["participant_id"].tolist() == ["sub-001", "sub-1", "sub-002"]


def test_participants_identical_duplicates_dropped_with_warning(tmp_path, caplog):
    write(tmp_path / "participants.tsv", [["participant_id", "diagnosis"], ["sub-01", "AD"],
                                          ["01", "AD"], ["sub-02", "CN"]])
    with caplog.at_level(logging.WARNING):
        table = participants_table(tmp_path)
    assert table["participant_id"].tolist() == ["sub-01", "sub-02"]
    assert "identical" in caplog.text and "sub-01" in caplog.text


def test_participants_conflicting_duplicates(tmp_path):
    write(tmp_path / "participants.tsv", [["participant_id", "diagnosis", "age", "sex"],
                                          ["sub-01", "AD", "70", "F"], ["sub-01", "CN", "70", "M"]])
    with pytest.raises(DataError, match=r"sub-01 that disagree in column\(s\) diagnosis, sex;") as err:
        participants_table(tmp_path)
    assert "age" not in str(err.value).split("disagree")[1]


def test_participants_missing_file_gives_empty_table(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        table = participants_table(tmp_path)
    assert table.empty and list(table.columns) == ["participant_id"]
    assert "participants.tsv" in caplog.text


def test_participants_without_id_column(tmp_path):
    write(tmp_path / "participants.tsv", [["subject", "diagnosis"], ["sub-01", "AD"]])
    with pytest.raises(DataError, match="no 'participant_id' column"):
        participants_table(tmp_path)


def test_sessions_table_concatenates_and_normalises(tmp_path):
    write(tmp_path / "sub-01" / "sub-01_sessions.tsv", [["session_id", "mmse"], ["M000", "28"],
                                                         ["ses-M012", "n/a"]])
    write(tmp_path / "sub-02" / "sub-02_sessions.tsv", [["session_id", "dx"], ["ses-M000", "AD"]],
          bom=True, crlf=True)
    table = sessions_table(tmp_path, ["01", "sub-02", "sub-03"])
    assert table[["participant_id", "session_id"]].values.tolist() == [
        ["sub-01", "ses-M000"], ["sub-01", "ses-M012"], ["sub-02", "ses-M000"]]
    assert table["mmse"].tolist() == ["28", None, None]
    assert table["dx"].tolist() == [None, None, "AD"]
    empty = sessions_table(tmp_path, ["sub-03"])
    assert empty.empty and list(empty.columns) == ["participant_id", "session_id"]


def test_sessions_table_duplicates(tmp_path):
    path = tmp_path / "sub-01" / "sub-01_sessions.tsv"
    write(path, [["session_id", "dx"], ["M000", "AD"], ["ses-M000", "AD"]])
    assert len(sessions_table(tmp_path, ["sub-01"])) == 1
    write(path, [["session_id", "dx"], ["M000", "AD"], ["ses-M000", "CN"]])
    with pytest.raises(DataError, match="sub-01/ses-M000 that disagree.*dx"):
        sessions_table(tmp_path, ["sub-01"])


# ---------------------------------------------------------------- attach_labels


@pytest.fixture
def adni(tmp_path):
    write(tmp_path / "participants.tsv", [["participant_id", "diagnosis", "age", "sex"],
                                          ["sub-01", "AD", "72", "F"], ["02", "CN", "7.2e1", "M"],
                                          ["sub-03", "CN", "89+", "n/a"], ["sub-04", "n/a", "60", "F"]])
    return tmp_path


def test_classification_from_participants(adni):
    table = images(("sub-02", "ses-M000"), ("sub-01", "ses-M000"), ("sub-01", "ses-M012"),
                   ("sub-03", "ses-M000"), extra=[1, 2, 3, 4])
    out, info = attach_labels(table, adni, "diagnosis", "classification")
    assert out["participant_id"].tolist() == ["sub-02", "sub-01", "sub-01", "sub-03"]
    assert out["label"].tolist() == ["CN", "AD", "AD", "CN"]
    assert out["extra"].tolist() == [1, 2, 3, 4] and out["tensor"].tolist() == table["tensor"].tolist()
    assert info == LabelInfo(column="diagnosis", task="classification", source="participants.tsv",
                             classes=("AD", "CN"), code={"AD": 0, "CN": 1}, dropped=())


def test_covariates(adni, tmp_path):
    out, _ = attach_labels(images(("sub-01", ""), ("sub-02", ""), ("sub-03", "")), adni, "diagnosis",
                           "classification")
    assert out["age"].tolist()[:2] == [72.0, 72.0] and math.isnan(out["age"].iloc[2])
    assert out["sex"].tolist()[:2] == ["F", "M"] and pd.isna(out["sex"].iloc[2])
    bare = tmp_path / "bare"
    write(bare / "participants.tsv", [["participant_id", "dx"], ["sub-01", "AD"], ["sub-02", "CN"]])
    out, _ = attach_labels(images(("sub-01", ""), ("sub-02", "")), bare, "dx", "classification")
    assert out["age"].isna().all() and out["sex"].isna().all()


def test_missing_labels_dropped_with_one_warning(adni, caplog):
    table = images(("sub-01", "ses-M000"), ("sub-04", "ses-M000"), ("sub-09", "ses-M012"),
                   ("sub-02", "ses-M000"))
    with caplog.at_level(logging.WARNING):
        out, info = attach_labels(table, adni, "diagnosis", "classification")
    assert out["participant_id"].tolist() == ["sub-01", "sub-02"]
    assert info.dropped == ("sub-04/ses-M000", "sub-09/ses-M012")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "sub-04/ses-M000, sub-09/ses-M012" in warnings[0].getMessage()
    assert "1 participant(s) of them not in participants.tsv" in warnings[0].getMessage()


def test_missing_label_warning_is_capped(tmp_path, caplog):
    rows = [["participant_id", "dx"], ["sub-a", "AD"], ["sub-b", "CN"]]
    rows += [[f"sub-{i:02d}", "n/a"] for i in range(25)]
    write(tmp_path / "participants.tsv", rows)
    keys = [("sub-a", ""), ("sub-b", "")] + [(f"sub-{i:02d}", "") for i in range(25)]
    with caplog.at_level(logging.WARNING):
        _, info = attach_labels(images(*keys), tmp_path, "dx", "classification")
    assert len(info.dropped) == 25
    assert "and 5 more" in caplog.text and "sub-19" in caplog.text and "sub-20" not in caplog.text


def test_zero_padded_ids_are_different_participants(tmp_path):
    write(tmp_path / "participants.tsv", [["participant_id", "dx"], ["001", "AD"], ["1", "CN"]])
    out, _ = attach_labels(images(("sub-1", ""), ("sub-001", "")), tmp_path, "dx", "classification")
    assert out["label"].tolist() == ["CN", "AD"]


def test_session_labels_override_participants(adni):
    write(adni / "sub-01" / "sub-01_sessions.tsv", [["session_id", "diagnosis"], ["M000", "MCI"],
                                                     ["ses-M012", "n/a"]])
    table = images(("sub-01", "ses-M000"), ("sub-01", "ses-M012"), ("sub-02", "ses-M000"))
    out, info = attach_labels(table, adni, "diagnosis", "classification")
    assert out["label"].tolist() == ["MCI", "AD", "CN"]
    assert info.source == "participants.tsv+sessions.tsv"
    assert info.classes == ("AD", "CN", "MCI") and info.code["MCI"] == 2


def test_labels_only_in_sessions(tmp_path):
    write(tmp_path / "participants.tsv", [["participant_id", "sex"], ["sub-01", "F"]])
    write(tmp_path / "sub-01" / "sub-01_sessions.tsv", [["session_id", "dx"], ["M000", "CN"],
                                                         ["M012", "AD"]])
    # sub-02 is not in participants.tsv, but its sessions.tsv labels it
    write(tmp_path / "sub-02" / "sub-02_sessions.tsv", [["session_id", "dx", "age"], ["M000", "AD", "70"]])
    table = images(("sub-01", "ses-M000"), ("sub-01", "ses-M012"), ("sub-02", "ses-M000"),
                   ("sub-02", "ses-M024"))
    out, info = attach_labels(table, tmp_path, "dx", "classification")
    assert out["label"].tolist() == ["CN", "AD", "AD"]
    assert info.source == "sessions.tsv" and info.dropped == ("sub-02/ses-M024",)
    assert out["age"].tolist()[2] == 70.0 and out["sex"].tolist()[0] == "F"


def test_regression_numbers(tmp_path):
    write(tmp_path / "participants.tsv", [["participant_id", "score"], ["sub-01", "72"],
                                          ["sub-02", "72.5"], ["sub-03", " 72 "], ["sub-04", "7.2e1"],
                                          ["sub-05", "-.5"]])
    out, info = attach_labels(images(*[(f"sub-0{i}", "") for i in range(1, 6)]), tmp_path, "score",
                              "regression")
    assert out["label"].tolist() == [72.0, 72.5, 72.0, 72.0, -0.5]
    assert out["label"].dtype == float
    assert info.classes == () and info.code == {}


def test_regression_invalid_value(adni):
    table = images(("sub-01", "ses-M000"), ("sub-03", "ses-M012"), ("sub-02", "ses-M000"))
    with pytest.raises(DataError, match=r"'age'.*sub-03/ses-M012 '89\+'.*--drop-invalid-labels") as err:
        attach_labels(table, adni, "age", "regression")
    assert err.value.exit_code == 65


def test_regression_drop_invalid(adni, tmp_path, caplog):
    write(adni / "sub-02" / "sub-02_sessions.tsv", [["session_id", "age"], ["M000", "unknown"]])
    table = images(("sub-01", "ses-M000"), ("sub-03", "ses-M012"), ("sub-02", "ses-M000"),
                   ("sub-04", "ses-M000"))
    with caplog.at_level(logging.WARNING):
        out, info = attach_labels(table, adni, "age", "regression", drop_invalid=True)
    assert out["participant_id"].tolist() == ["sub-01", "sub-04"]
    assert out["label"].tolist() == [72.0, 60.0]
    assert info.dropped == ("sub-03/ses-M012", "sub-02/ses-M000")
    assert "'89+'" in caplog.text and "'unknown' (sessions.tsv)" in caplog.text
    assert info.source == "participants.tsv"


def test_missing_column_did_you_mean(adni):
    write(adni / "sub-01" / "sub-01_sessions.tsv", [["session_id", "mmse"], ["M000", "28"]])
    with pytest.raises(DataError, match="did you mean 'diagnosis'") as err:
        attach_labels(images(("sub-01", "ses-M000")), adni, "diagnosys", "classification")
    message = str(err.value)
    assert err.value.exit_code == 65 and "\n" not in message
    assert "diagnosis, age, sex" in message and "mmse" in message
    with pytest.raises(DataError) as err:
        attach_labels(images(("sub-01", "ses-M000")), adni, "zzz", "regression")
    assert "did you mean" not in str(err.value)


def test_no_tables_at_all(tmp_path):
    with pytest.raises(InputMissingError, match="no participants.tsv"):
        attach_labels(images(("sub-01", "")), tmp_path, "diagnosis", "classification")


def test_single_class(adni):
    with pytest.raises(DataError, match="single class 'CN'"):
        attach_labels(images(("sub-02", ""), ("sub-03", ""), ("sub-04", "")), adni, "diagnosis",
                      "classification")


def test_no_labelled_image(adni):
    with pytest.raises(DataError, match="no image has a usable value in column 'diagnosis'"):
        attach_labels(images(("sub-04", ""), ("sub-77", "")), adni, "diagnosis", "classification")


def test_non_ascii_classes(tmp_path):
    name = "Alzheimer's \u2013 d\u00e9mence"
    write(tmp_path / "participants.tsv", [["participant_id", "diagnostic"], ["sub-01", name],
                                          ["sub-02", "t\u00e9moin"]], bom=True, crlf=True)
    out, info = attach_labels(images(("sub-01", ""), ("sub-02", "")), tmp_path, "diagnostic",
                              "classification")
    assert out["label"].tolist() == [name, "t\u00e9moin"]
    assert info.classes == (name, "t\u00e9moin")
    assert json.loads(json.dumps(info.as_dict()))["code"] == {name: 0, "t\u00e9moin": 1}


def test_as_dict(adni):
    _, info = attach_labels(images(("sub-01", ""), ("sub-02", ""), ("sub-04", "")), adni, "diagnosis",
                            "classification")
    assert json.loads(json.dumps(info.as_dict())) == {
        "column": "diagnosis", "task": "classification", "source": "participants.tsv",
        "classes": ["AD", "CN"], "code": {"AD": 0, "CN": 1}, "dropped": ["sub-04"]}


def test_reconstruction_needs_no_label(tmp_path, adni):
    table = images(("sub-01", "ses-M000"), ("sub-04", "ses-M000"), ("sub-99", "ses-M000"))
    out, info = attach_labels(table, adni, "no-such-column", "reconstruction")
    assert "label" not in out.columns and len(out) == 3
    assert out["age"].tolist()[:2] == [72.0, 60.0]
    assert info.column is None and info.source is None and info.dropped == ()
    out, _ = attach_labels(table, tmp_path / "empty", None, "reconstruction")
    assert len(out) == 3
