"""Read BIDS tabular files (participants.tsv, sessions.tsv) without losing or inventing values.

Every value stays a string so that zero-padded identifiers ("001") survive; BIDS missing values
("n/a") and empty cells become ``None``. Identifiers are normalised to carry their ``sub-`` /
``ses-`` prefix whichever way the file wrote them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ..errors import DataError, InputMissingError

log = logging.getLogger(__name__)

MISSING = frozenset({"", "n/a"})
# a label that may safely become part of a path (BIDS: letters and digits only)
_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


def read_tsv(path: Path | str) -> pd.DataFrame:
    """Read a BIDS TSV file as strings.

    Parameters
    ----------
    path
        The file. UTF-8 with or without a byte-order mark, LF or CRLF line endings.

    Returns
    -------
    pandas.DataFrame
        One object column per header, values stripped of surrounding whitespace, ``None`` where
        the file has ``n/a`` or an empty cell.

    Raises
    ------
    InputMissingError
        The file does not exist.
    DataError
        The file is not UTF-8, has no header, repeats a header, or has a row with a different
        number of cells than the header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputMissingError(f"{path} does not exist; create it or check BIDS_DIR") from exc
    except OSError as exc:
        raise InputMissingError(f"cannot read {path} ({exc.strerror}); check its permissions") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataError(f"{path} line {line} is not UTF-8 text; re-save the file as UTF-8") from exc

    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise DataError(f"{path} is empty: expected a header line of tab-separated column names")
    header_no, header_line = numbered[0]
    header = [h.strip() for h in header_line.split("\t")]
    _check_header(path, header_no, header)

    rows = []
    for number, line in numbered[1:]:
        cells = [c.strip() for c in line.split("\t")]
        # spreadsheet exports often leave trailing tabs; they carry no value
        while len(cells) > len(header) and cells[-1] == "":
            cells.pop()
        if len(cells) != len(header):
            raise DataError(f"{path} line {number} has {len(cells)} tab-separated cells but the header "
                            f"has {len(header)}; fix that line (every row needs one cell per column, "
                            "n/a when unknown)")
        rows.append([None if c.lower() in MISSING else c for c in cells])
    return pd.DataFrame(rows, columns=header, dtype=object)


def _check_header(path: Path, number: int, header: list[str]) -> None:
    if any(h == "" for h in header):
        raise DataError(f"{path} line {number} (the header) has an empty column name; name every "
                        "column or remove the stray tab")
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise DataError(f"{path} line {number} (the header) repeats column(s) {', '.join(repeated)}; "
                        "give each column a unique name")


def add_prefix(value: str, prefix: str) -> str:
    """``value`` with ``prefix`` ("sub-" or "ses-") added unless it is already there."""
    return value if value.startswith(prefix) else prefix + value


def participants_table(bids_dir: Path | str) -> pd.DataFrame:
    """participants.tsv of ``bids_dir`` with ``participant_id`` as ``sub-<label>``.

    Exact duplicate rows are dropped with a warning; rows for one participant that disagree are
    an error. A missing file gives an empty table with a ``participant_id`` column: the caller
    decides whether it needed a label from it.
    """
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        log.info("%s does not exist: no per-participant labels or covariates", path)
        return pd.DataFrame({"participant_id": pd.Series([], dtype=object)})
    table = read_tsv(path)
    _normalise_id(table, "participant_id", "sub-", path)
    return _deduplicate(table, ["participant_id"], path)


def sessions_table(bids_dir: Path | str, participants: Iterable[str]) -> pd.DataFrame:
    """The sessions.tsv files of ``participants``, concatenated, with a ``participant_id`` column.

    ``session_id`` is normalised to ``ses-<label>``; participants without the file are skipped.
    Duplicates follow the rules of :func:`participants_table`.
    """
    bids_dir = Path(bids_dir)
    frames = []
    for participant in dict.fromkeys(add_prefix(str(p).strip(), "sub-") for p in participants):
        label = participant[len("sub-"):]
        if not _LABEL_RE.match(label):
            raise DataError(f"participant '{participant}' is not a valid BIDS label: only letters and "
                            "digits may follow 'sub-'; rename it")
        path = bids_dir / participant / f"{participant}_sessions.tsv"
        if not path.is_file():
            continue
        table = read_tsv(path)
        _normalise_id(table, "session_id", "ses-", path)
        table = table.drop(columns=["participant_id"], errors="ignore")
        table.insert(0, "participant_id", participant)
        frames.append(_deduplicate(table, ["participant_id", "session_id"], path))
    if not frames:
        return pd.DataFrame({"participant_id": pd.Series([], dtype=object),
                             "session_id": pd.Series([], dtype=object)})
    table = pd.concat(frames, ignore_index=True).astype(object)
    # columns absent from some files come back as NaN: keep one missing marker
    return table.where(table.notna(), None)


def _normalise_id(table: pd.DataFrame, column: str, prefix: str, path: Path) -> None:
    if column not in table.columns:
        raise DataError(f"{path} has no '{column}' column (found: {', '.join(table.columns)}); "
                        f"add a '{column}' column as its first column")
    missing = table.index[table[column].isna()]
    if len(missing):
        rows = ", ".join(str(i + 1) for i in missing[:10])
        raise DataError(f"{path} has no {column} on data row(s) {rows}; fill in the identifier or "
                        "remove the row(s)")
    table[column] = [add_prefix(v, prefix) for v in table[column]]


def _deduplicate(table: pd.DataFrame, keys: list[str], path: Path) -> pd.DataFrame:
    """Drop exact duplicate rows; refuse rows with the same keys and different values."""
    exact = table.duplicated(keep="first")
    if exact.any():
        ids = ["/".join(row) for row in table.loc[exact, keys].itertuples(index=False)]
        log.warning("%s repeats %d identical row(s) (%s); keeping one of each", path, len(ids),
                    ", ".join(ids[:20]))
        table = table.loc[~exact].reset_index(drop=True)
    clash = table.duplicated(subset=keys, keep=False)
    if clash.any():
        key = tuple(table.loc[clash, keys].iloc[0])
        rows = table.loc[(table[keys] == pd.Series(key, index=keys)).all(axis=1)]
        differ = [c for c in table.columns if c not in keys and len(set(rows[c])) > 1]
        who = "/".join(key)
        raise DataError(f"{path} has {len(rows)} rows for {who} that disagree in column(s) "
                        f"{', '.join(differ)}; keep one row per {'/'.join(keys)}")
    return table.reset_index(drop=True)
