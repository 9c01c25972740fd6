"""Prediction and metric tables of a MAPS (SPEC section 3) and their byte-stable TSV writer."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..maps.io import write_text
from .metrics import RECONSTRUCTION_METRICS

log = logging.getLogger(__name__)

FLOAT_FORMAT = "%.6g"
METRIC_COLUMNS = ["metric", "value", "ci_lower", "ci_upper"]
_STAT_COLUMNS = ("value", "ci_lower", "ci_upper", "split")


def _ids(info: pd.DataFrame, n: int) -> pd.DataFrame:
    missing = [c for c in ("participant_id", "session_id") if c not in info.columns]
    if missing:
        raise ValueError(f"the image table lacks column(s) {', '.join(missing)}")
    if len(info) != n:
        raise ValueError(f"{len(info)} image rows for {n} predictions")
    return info[["participant_id", "session_id"]].reset_index(drop=True).astype(object)


def _unknown(value: object) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _class_index(value: object, n_classes: int) -> int:
    index = int(value)
    if index != value or not 0 <= index < n_classes:
        raise ValueError(f"true label {value!r} is not a class index 0..{n_classes - 1}")
    return index


def prediction_table(info: pd.DataFrame, true: np.ndarray | None, proba_or_pred: np.ndarray, task: str,
                     classes: list[str] | None, mode_column: str | None = None,
                     sample_index: np.ndarray | None = None) -> pd.DataFrame:
    """A prediction table: one row per image (or per sample with ``mode_column``).

    Parameters
    ----------
    info
        ``participant_id`` and ``session_id`` of each row.
    true
        Class indices (classification) or numbers (regression); NaN or None where unknown, or
        ``None`` when no label is known. Unknown labels are written as an empty cell.
    proba_or_pred
        Class probabilities (N, K) or predicted values (N,).
    task
        ``"classification"`` or ``"regression"``; see :func:`reconstruction_table` otherwise.
    classes
        Class names in index order (classification), written instead of the indices.
    mode_column, sample_index
        Mode name (``"patch"``) and the position of each row, written as a ``<mode>_id`` column.

    Returns
    -------
    pandas.DataFrame
        ``participant_id, session_id, [<mode>_id,] true_label, predicted_label`` and, for
        classification, ``proba_<class>`` per class.
    """
    values = np.asarray(proba_or_pred, dtype=float)
    table = _ids(info, values.shape[0])
    if (mode_column is None) != (sample_index is None):
        raise ValueError("mode_column and sample_index go together")
    if mode_column is not None:
        column = mode_column if mode_column.endswith("_id") else f"{mode_column}_id"
        table[column] = np.asarray(sample_index)
    truth = [None] * len(table) if true is None else list(np.asarray(true, dtype=object))
    if len(truth) != len(table):
        raise ValueError(f"{len(truth)} true labels for {len(table)} predictions")
    if task == "classification":
        if classes is None or values.ndim != 2 or values.shape[1] != len(classes):
            raise ValueError(f"need one class name per probability column, got {classes} for shape "
                             f"{values.shape}")
        names = list(map(str, classes))
        table["true_label"] = ["" if _unknown(t) else names[_class_index(t, len(names))] for t in truth]
        table["predicted_label"] = [names[i] for i in values.argmax(axis=1)]
        for i, name in enumerate(names):
            table[f"proba_{name}"] = values[:, i]
    elif task == "regression":
        if values.ndim != 1:
            raise ValueError(f"regression predictions must have shape (N,), got {values.shape}")
        table["true_label"] = ["" if _unknown(t) else float(t) for t in truth]
        table["predicted_label"] = values
    else:
        raise ValueError(f"prediction_table is for classification and regression, not {task!r}; "
                         "use reconstruction_table")
    return table


def reconstruction_table(info: pd.DataFrame, per_image_metrics: list[Mapping[str, float]]) -> pd.DataFrame:
    """``participant_id, session_id, MAE, RMSE, PSNR, SSIM``: one row per reconstructed image."""
    table = _ids(info, len(per_image_metrics))
    for name in RECONSTRUCTION_METRICS:
        table[name] = [float(m.get(name, math.nan)) for m in per_image_metrics]
    return table


def metrics_table(values: Mapping[str, float], cis: Mapping[str, tuple[float, float]],
                  order: tuple[str, ...]) -> pd.DataFrame:
    """Long metrics table ``metric, value, ci_lower, ci_upper``.

    Rows follow ``order`` (metrics absent from ``values`` are left out), then any other metric of
    ``values`` (such as ``loss``) in its own order. A metric without an interval gets NaN bounds.
    """
    names = [m for m in order if m in values] + [m for m in values if m not in order]
    rows = []
    for name in names:
        low, high = cis.get(name, (math.nan, math.nan))
        rows.append((name, float(values[name]), float(low), float(high)))
    return pd.DataFrame(rows, columns=METRIC_COLUMNS)


def _format(value: object) -> object:
    if isinstance(value, (bool, np.bool_)):
        return value
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else FLOAT_FORMAT % value
    return value


def write_tsv(path: Path | str, frame: pd.DataFrame) -> None:
    """Write ``frame`` atomically as a TSV: tabs, LF, no index, ``n/a`` where missing.

    Every float is written with ``%.6g``, so identical tables give byte-identical files whatever
    the column dtypes.
    """
    formatted = frame.astype(object)
    for i in range(formatted.shape[1]):  # by position: tolerates repeated column names
        formatted.iloc[:, i] = formatted.iloc[:, i].map(_format)
    text = formatted.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n")
    write_text(path, text)


def cross_validation_summary(frames: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """Mean and SD (ddof 1) of each metric over the splits.

    Parameters
    ----------
    frames
        Split number -> long metrics table; columns other than ``value``, ``ci_lower`` and
        ``ci_upper`` (``group``, ``selection``, ``level``, ``metric``) identify a metric.

    Returns
    -------
    pandas.DataFrame
        The key columns, then ``mean``, ``sd`` and ``n_splits`` (splits where the metric is
        defined), in order of first appearance over the splits taken in ascending order.
    """
    if not frames:
        raise ValueError("no split to summarise")
    stacked = pd.concat([frames[s].assign(split=s) for s in sorted(frames)], ignore_index=True)
    if "metric" not in stacked.columns or "value" not in stacked.columns:
        raise ValueError("the metrics tables need metric and value columns")
    keys = [c for c in stacked.columns if c not in _STAT_COLUMNS]
    keys = [c for c in keys if c != "metric"] + ["metric"]
    stacked["value"] = pd.to_numeric(stacked["value"], errors="coerce").astype(float)
    summary = stacked.groupby(keys, sort=False, dropna=False)["value"].agg(["mean", "std", "count"])
    summary = summary.rename(columns={"std": "sd", "count": "n_splits"}).reset_index()
    return summary
