"""Attach the label (and the age/sex covariates) to the table of images of the group level.

A value comes from the participant's sessions.tsv when that file has the column and a value for
the image's session, otherwise from participants.tsv. Values stay strings until the very end so
that nothing is silently coerced ("001" is not "1", "89+" is not 89).

For ``reconstruction`` no label is needed: the output has no ``label`` column at all, so that
no caller can mistake an absent label for a real one; the covariates are still attached.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..bids.tables import add_prefix, participants_table, sessions_table
from ..errors import DataError, InputMissingError, UsageError

log = logging.getLogger(__name__)

TASKS = ("classification", "regression", "reconstruction")
NUMERIC_COVARIATES = frozenset({"age"})
# a plain decimal number; float() alone would also take "nan", "inf" and "1_000"
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_SHOWN = 20
PARTICIPANTS, SESSIONS = "participants.tsv", "sessions.tsv"


@dataclass(frozen=True)
class LabelInfo:
    """What the label is and where it came from, as recorded in the MAPS."""

    column: str | None
    task: str
    source: str | None
    classes: tuple[str, ...] = ()
    code: dict[str, int] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready copy."""
        return {"column": self.column, "task": self.task, "source": self.source,
                "classes": list(self.classes), "code": dict(self.code), "dropped": list(self.dropped)}


def attach_labels(images: pd.DataFrame, bids_dir: Path | str, column: str | None, task: str,
                  drop_invalid: bool = False,
                  covariates: Sequence[str] = ("age", "sex")) -> tuple[pd.DataFrame, LabelInfo]:
    """Join the label and covariates of each image onto ``images``.

    Parameters
    ----------
    images
        One row per image with at least ``participant_id`` ("sub-…") and ``session_id``
        ("ses-…" or "" without sessions).
    bids_dir
        The BIDS dataset holding participants.tsv and the sessions.tsv files.
    column
        The label column; ignored for ``reconstruction``.
    task
        ``classification``, ``regression`` or ``reconstruction``.
    drop_invalid
        Regression only: drop images whose label is not a number instead of failing.
    covariates
        Columns copied for the split summaries; ``age`` is made numeric (NaN when not a
        number), the others stay strings. Always present in the output, missing when unknown.

    Returns
    -------
    (pandas.DataFrame, LabelInfo)
        The labelled rows in input order (index reset) with ``label`` (str for classification,
        float for regression) and the covariates; images without a usable label are left out.
    """
    if task not in TASKS:
        raise UsageError(f"unknown task '{task}'; expected one of {', '.join(TASKS)}")
    absent = [c for c in ("participant_id", "session_id") if c not in images.columns]
    if absent:
        raise ValueError(f"the image table lacks column(s) {', '.join(absent)}")
    if images.empty:
        raise DataError("no image to label: the image table is empty; run the participant level first")

    keys = [(add_prefix(str(p).strip(), "sub-"), _session(s))
            for p, s in zip(images["participant_id"], images["session_id"], strict=True)]
    participants = participants_table(bids_dir)
    sessions = sessions_table(bids_dir, [p for p, _ in keys])
    out = images.copy()
    for name in covariates:
        values, _ = _lookup(keys, participants, sessions, name)
        out[name] = [_number(v) for v in values] if name in NUMERIC_COVARIATES else values

    if task == "reconstruction":
        return out.reset_index(drop=True), LabelInfo(column=None, task=task, source=None)
    if not column:
        raise UsageError(f"task {task} needs a label column; pass --label COLUMN")
    if column not in participants.columns and column not in sessions.columns:
        _raise_missing_column(column, participants, sessions, Path(bids_dir))

    values, origins = _lookup(keys, participants, sessions, column)
    ids = [f"{p}/{s}" if s else p for p, s in keys]
    keep = [v is not None for v in values]
    missing = [ids[i] for i, v in enumerate(values) if v is None]
    if missing:
        listed = set(participants["participant_id"])
        unknown = {p for (p, _), v in zip(keys, values, strict=True) if v is None} - listed
        note = f", {len(unknown)} participant(s) of them not in participants.tsv" if unknown else ""
        log.warning("%d image(s) have no value in column '%s'%s and are left out: %s", len(missing),
                    column, note, _listing(missing))

    labels: list[Any] = list(values)
    if task == "regression":
        invalid = [i for i, v in enumerate(values) if v is not None and not _NUMBER_RE.match(v)]
        if invalid:
            shown = _listing([f"{ids[i]} '{values[i]}' ({origins[i]})" for i in invalid])
            if not drop_invalid:
                raise DataError(f"column '{column}' must hold numbers for regression but has "
                                f"{len(invalid)} other value(s): {shown}; correct them, write n/a "
                                "when unknown, or pass --drop-invalid-labels to leave them out")
            log.warning("%d image(s) have a non-numeric '%s' and are left out: %s",
                        len(invalid), column, shown)
            for i in invalid:
                keep[i] = False
        labels = [float(v) if k else math.nan for v, k in zip(values, keep, strict=True)]

    dropped = tuple(i for i, k in zip(ids, keep, strict=True) if not k)
    if not any(keep):
        raise DataError(f"no image has a usable value in column '{column}' ({len(ids)} image(s) "
                        f"checked, e.g. {ids[0]}); fill in the column in participants.tsv or sessions.tsv")
    source = "+".join(s for s in (PARTICIPANTS, SESSIONS)
                      if any(o == s for o, k in zip(origins, keep, strict=True) if k))

    out["label"] = labels
    out = out.loc[keep].reset_index(drop=True)
    classes: tuple[str, ...] = ()
    if task == "classification":
        classes = tuple(sorted(set(out["label"])))
        if len(classes) < 2:
            raise DataError(f"column '{column}' has a single class '{classes[0]}' among the "
                            f"{len(out)} labelled image(s) ({source}); classification needs at least "
                            "two classes: choose another --label or check the selected participants")
        _warn_near_duplicates(classes, column)
    else:
        out["label"] = out["label"].astype(float)
    info = LabelInfo(column=column, task=task, source=source, classes=classes,
                     code={c: i for i, c in enumerate(classes)}, dropped=dropped)
    return out, info


def _session(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    value = str(value).strip()
    return add_prefix(value, "ses-") if value else ""


def _lookup(keys: list[tuple[str, str]], participants: pd.DataFrame, sessions: pd.DataFrame,
            column: str) -> tuple[list[str | None], list[str | None]]:
    """The value of ``column`` per image and the file it came from (None when it has none)."""
    per_session: dict[tuple[str, str], str | None] = {}
    if column in sessions.columns:
        per_session = dict(zip(zip(sessions["participant_id"], sessions["session_id"], strict=True),
                               sessions[column], strict=True))
    per_participant: dict[str, str | None] = {}
    if column in participants.columns:
        per_participant = dict(zip(participants["participant_id"], participants[column], strict=True))
    values: list[str | None] = []
    origins: list[str | None] = []
    for participant, session in keys:
        value = per_session.get((participant, session)) if session else None
        origin = SESSIONS if value is not None else None
        if value is None:
            value = per_participant.get(participant)
            origin = PARTICIPANTS if value is not None else None
        values.append(value)
        origins.append(origin)
    return values, origins


def _number(value: str | None) -> float:
    return float(value) if value is not None and _NUMBER_RE.match(value) else math.nan


def _listing(items: list[str]) -> str:
    text = ", ".join(items[:_SHOWN])
    return text + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _raise_missing_column(column: str, participants: pd.DataFrame, sessions: pd.DataFrame,
                          bids_dir: Path) -> None:
    ids = {"participant_id", "session_id"}
    in_participants = [c for c in participants.columns if c not in ids]
    in_sessions = [c for c in sessions.columns if c not in ids]
    choices = list(dict.fromkeys(in_participants + in_sessions))
    hint = _closest(column, choices)
    hint = f"did you mean '{hint}'? " if hint else ""
    in_sessions_text = (f"sessions.tsv files have {', '.join(in_sessions) or 'no other column'}"
                        if not sessions.empty else "there is no sessions.tsv")
    if not (bids_dir / PARTICIPANTS).is_file():
        raise InputMissingError(f"label column '{column}' has nowhere to come from: {bids_dir} has no "
                                f"participants.tsv ({in_sessions_text}); {hint}add a participants.tsv "
                                f"with a '{column}' column, or pass --label with an existing column")
    raise DataError(f"label column '{column}' is in neither participants.tsv nor sessions.tsv of "
                    f"{bids_dir} (participants.tsv has {', '.join(in_participants) or 'no other column'}; "
                    f"{in_sessions_text}); {hint}pass --label with one of the existing columns")


def _closest(word: str, choices: list[str]) -> str | None:
    folded = {c.casefold(): c for c in choices}
    if word.casefold() in folded:
        return folded[word.casefold()]
    match = difflib.get_close_matches(word.casefold(), list(folded), n=1, cutoff=0.6)
    return folded[match[0]] if match else None


def _warn_near_duplicates(classes: tuple[str, ...], column: str) -> None:
    """Classes that differ only in case are kept apart, but they are usually a typo."""
    groups: dict[str, list[str]] = {}
    for c in classes:
        groups.setdefault(c.casefold(), []).append(c)
    for names in groups.values():
        if len(names) > 1:
            log.warning("column '%s' has classes %s that differ only in case; they are kept as "
                        "different classes", column, ", ".join(repr(n) for n in names))
