"""Rank the trials of a random search by their validation results.

Each trial is a MAPS ``OUTPUT_DIR/maps/<base>-trial-<NNN>`` whose ``maps.json`` holds the
options and a ``search`` entry (``{"trial": i, "values": {...}, "space": {...}}``) and whose
``summary.tsv`` holds the cross-validation means. Trials are ranked on the validation group
only: the test group is shown, never used to choose, or it would stop being a test.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InputMissingError, UsageError
from ..evaluate.metrics import metric_direction
from ..maps.io import read_json
from .space import trial_name

DEFAULT_METRIC = {"classification": "BA", "regression": "MAE", "reconstruction": "loss"}
_SUMMARY_COLUMNS = {"group", "selection", "level", "metric", "mean"}


@dataclass
class _Trial:
    number: int
    folder: Path
    maps: dict[str, Any] = field(default_factory=dict)
    summary: pd.DataFrame | None = None  # None: not finished

    @property
    def search(self) -> dict[str, Any]:
        entry = self.maps.get("search")
        return entry if isinstance(entry, dict) else {}


def _read_trial(folder: Path, number: int) -> _Trial:
    maps = read_json(folder / "maps.json")
    trial = _Trial(number, folder, maps if isinstance(maps, dict) else {})
    if not trial.maps or not (folder / "summary.tsv").is_file():
        return trial
    try:
        summary = pd.read_csv(folder / "summary.tsv", sep="\t", na_values=["n/a"])
    except (OSError, ValueError):
        return trial
    # a summary being rewritten, or from another tool, counts as not finished
    if _SUMMARY_COLUMNS <= set(summary.columns):
        trial.summary = summary
    return trial


def _find_trials(maps_root: Path, base: str) -> list[_Trial]:
    trial_name(base, 0)  # checks base
    pattern = re.compile(rf"{re.escape(base)}-trial-(\d+)")
    trials = []
    for folder in sorted(maps_root.iterdir()) if maps_root.is_dir() else []:
        match = pattern.fullmatch(folder.name)
        # trial_name() round trip: "-trial-07" or "-trial-0007" were not written by a search
        if match and folder.is_dir() and trial_name(base, int(match.group(1))) == folder.name:
            trials.append(_read_trial(folder, int(match.group(1))))
    return sorted(trials, key=lambda t: t.number)


def _row(summary: pd.DataFrame, group: str, selection: str, metric: str) -> pd.Series | None:
    rows = summary[(summary["group"] == group) & (summary["level"] == "image") &
                   (summary["metric"] == metric) & (summary["selection"] == selection)]
    return rows.iloc[0] if len(rows) else None


def _shown(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value)) if value else "none"
    return value


def _stat(row: pd.Series | None, column: str) -> float:
    if row is None or column not in row.index:
        return math.nan
    value = pd.to_numeric(row[column], errors="coerce")
    return float(value) if pd.notna(value) else math.nan


def _default_metric(finished: list[_Trial]) -> str:
    tasks = {str(t.maps.get("options", {}).get("task", "classification")) for t in finished}
    if len(tasks) > 1:
        raise UsageError(f"the trials mix tasks ({', '.join(sorted(tasks))}); give the metric to rank by")
    task = tasks.pop()
    if task not in DEFAULT_METRIC:
        raise UsageError(f"unknown task '{task}' in maps.json; give the metric to rank by")
    return DEFAULT_METRIC[task]


def summarize_trials(maps_root: Path | str, base: str, metric: str | None = None) -> pd.DataFrame:
    """One row per trial of search ``base`` under ``maps_root``, best validation result first.

    Parameters
    ----------
    maps_root
        ``OUTPUT_DIR/maps``.
    base
        The search name: trials are the MAPS named ``trial_name(base, i)``.
    metric
        Image-level metric to rank by (default: BA for classification, MAE for regression,
        loss for reconstruction). The model selected on that metric is used when the trial
        kept one, else the one selected on the loss.

    Returns
    -------
    pandas.DataFrame
        ``rank, trial, maps, <metric>_validation_mean, <metric>_validation_sd``, one column per
        sampled option (lists joined by ``+``), then ``selection``, ``<metric>_test_mean``,
        ``<metric>_test_sd`` (shown only) and ``status``. Ties keep the lower trial number
        first. Trials without the metric, then unfinished trials, come last with rank ``n/a``.
    """
    maps_root = Path(maps_root)
    trials = _find_trials(maps_root, base)
    finished = [t for t in trials if t.summary is not None]
    if not finished:
        found = f"{len(trials)} unfinished" if trials else "none"
        raise InputMissingError(f"no finished trial of search '{base}' in {maps_root} (trial MAPS "
                                f"{trial_name(base, 0)}... with maps.json and summary.tsv: {found})")
    metric = metric or _default_metric(finished)
    try:
        direction = metric_direction(metric)
    except ValueError as exc:
        raise UsageError(f"cannot rank the trials by {exc}") from exc

    sampled: list[str] = []
    for t in trials:
        fixed = (t.search.get("space") or {}).get("fixed") or {}
        sampled += [k for k in t.search.get("values") or {} if k not in fixed and k not in sampled]

    mean_col, sd_col = f"{metric}_validation_mean", f"{metric}_validation_sd"
    rows = []
    for t in trials:
        row: dict[str, Any] = {"trial": t.number, "maps": t.folder.name}
        values = t.search.get("values") or {}
        row.update({name: _shown(values[name]) if name in values else None for name in sampled})
        validation = test = None
        selection = None
        if t.summary is not None:
            selection = metric if _row(t.summary, "validation", metric, metric) is not None else "loss"
            validation = _row(t.summary, "validation", selection, metric)
            test = _row(t.summary, "test", selection, metric)
        row.update({mean_col: _stat(validation, "mean"), sd_col: _stat(validation, "sd"),
                    "selection": selection, f"{metric}_test_mean": _stat(test, "mean"),
                    f"{metric}_test_sd": _stat(test, "sd")})
        if t.summary is None:
            row["status"] = "unfinished"
        elif math.isnan(row[mean_col]):
            row["status"] = f"no validation {metric}"
        else:
            row["status"] = "finished"
        rows.append(row)

    sign = -1.0 if direction == "max" else 1.0
    order = {"finished": 0, "unfinished": 2}
    rows.sort(key=lambda r: (order.get(r["status"], 1),
                             sign * r[mean_col] if r["status"] == "finished" else 0.0, r["trial"]))
    ranked = 0
    for r in rows:
        if r["status"] == "finished":
            ranked += 1
            r["rank"] = ranked
        else:
            r["rank"] = "n/a"
    columns = ["rank", "trial", "maps", mean_col, sd_col, *sampled, "selection",
               f"{metric}_test_mean", f"{metric}_test_sd", "status"]
    return pd.DataFrame(rows, columns=columns)
