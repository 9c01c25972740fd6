"""Image-level assembly of patch, slice and roi predictions by weighted soft voting.

The weight of each sample position (patch, slice or region index) is measured on the validation
predictions only (SPEC section 4 rule 4), then applied unchanged to any data group, so that the
test labels never influence the image-level prediction. Sample-level frames have one row per
(image, position): ``image_index``, ``sample_index``, ``true_label`` (class index or number; may be
missing outside validation), and ``proba_0`` ... ``proba_{K-1}`` (classification) or ``predicted``
(regression).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..errors import DataError

log = logging.getLogger(__name__)

TASKS = ("classification", "regression")
# keeps a perfect position's regression weight finite
_EPS = 1e-6
# image identifiers carried to the image-level frame when the samples have them
_IMAGE_COLUMNS = ("participant_id", "session_id")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"soft voting applies to {' and '.join(TASKS)}, not {task!r}")


def _require(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)}")


def _value_columns(frame: pd.DataFrame, task: str, what: str) -> list[str]:
    if task == "regression":
        _require(frame, ["predicted"], what)
        return ["predicted"]
    columns = [c for c in frame.columns if str(c).startswith("proba_")]
    if len(columns) < 2:
        raise ValueError(f"{what} needs two or more proba_* columns, has {columns}")
    return columns


def sample_weights(validation: pd.DataFrame, task: str, threshold: float | None = None) -> pd.Series:
    """Weight of each sample position, from validation predictions.

    Parameters
    ----------
    validation
        Sample-level predictions of the validation images, with their ``true_label``.
    task
        ``"classification"``: weight = balanced accuracy of the position over the validation
        images, set to 0 below ``threshold`` (ClinicaDL's ``--selection_threshold``); when every
        weight is 0 all positions get weight 1. ``"regression"``: weight = 1 / (MAE + 1e-6);
        ``threshold`` does not apply.

    Returns
    -------
    pandas.Series
        Unnormalised weights indexed by ``sample_index``, sorted.
    """
    _check_task(task)
    _require(validation, ["sample_index", "true_label"], "the validation predictions")
    values = _value_columns(validation, task, "the validation predictions")
    labelled = validation[validation["true_label"].notna()]
    if labelled.empty:
        raise DataError("no validation prediction has a true label: sample weights for image-level "
                        "voting need labelled validation predictions")
    positions = labelled["sample_index"].to_numpy()
    truth = pd.to_numeric(labelled["true_label"]).to_numpy(dtype=float)
    if task == "classification":
        expected = [f"proba_{i}" for i in range(len(values))]
        if values != expected:
            raise ValueError(f"class probability columns must be {expected}, got {values}")
        predicted = labelled[values].to_numpy(dtype=float).argmax(axis=1)
        per_row = pd.DataFrame({"position": positions, "label": truth, "correct": predicted == truth})
        # recall of each class at each position, then the mean over the classes present there
        recall = per_row.groupby(["position", "label"])["correct"].mean()
        weights = recall.groupby(level="position").mean().astype(float)
        if threshold is not None:
            weights[weights < threshold] = 0.0
        if not (weights > 0).any():
            log.warning("every sample position has a validation balanced accuracy below %s: image-level "
                        "voting falls back to equal weights", threshold)
            weights[:] = 1.0
    else:
        error = np.abs(labelled["predicted"].to_numpy(dtype=float) - truth)
        mae = pd.Series(error).groupby(positions).mean()
        weights = 1.0 / (mae + _EPS)
    weights.index.name = "sample_index"
    return weights.rename("weight").sort_index()


def soft_vote(samples: pd.DataFrame, weights: pd.Series | None, task: str) -> pd.DataFrame:
    """Image-level predictions: weighted mean over each image's samples.

    Parameters
    ----------
    samples
        Sample-level predictions of any data group.
    weights
        From :func:`sample_weights` on the validation group; ``None`` for equal weights. An image
        whose positions all have weight 0 is averaged with equal weights (with a warning).
    task
        ``"classification"`` (mean probabilities, renormalised to sum to 1) or ``"regression"``.

    Returns
    -------
    pandas.DataFrame
        One row per ``image_index``, in order of first appearance: ``image_index``,
        ``participant_id`` and ``session_id`` when given, ``true_label`` when given, and the
        ``proba_*`` or ``predicted`` columns.
    """
    _check_task(task)
    _require(samples, ["image_index", "sample_index"], "the sample predictions")
    values = _value_columns(samples, task, "the sample predictions")
    if weights is None:
        w = np.ones(len(samples))
    else:
        if not weights.index.is_unique:
            raise ValueError("the sample weights repeat a sample_index")
        w = weights.reindex(samples["sample_index"].to_numpy()).to_numpy(dtype=float)
        if np.isnan(w).any():
            unknown = sorted(set(samples["sample_index"].to_numpy()[np.isnan(w)].tolist()))
            raise DataError(f"sample position(s) {unknown[:10]} have no weight: the validation "
                            "predictions do not cover them; extract every group with the same options")
    image = samples["image_index"].to_numpy()
    data = samples[values].to_numpy(dtype=float)
    weighted = pd.DataFrame(data * w[:, None], columns=values).groupby(image, sort=False).sum()
    total = pd.Series(w).groupby(image, sort=False).sum()
    voted = weighted.div(total, axis=0)
    unweighted = total.index[total.to_numpy() == 0]
    if len(unweighted):
        log.warning("%d image(s) have weight 0 at every position they contain: equal weights used "
                    "for them", len(unweighted))
        plain = pd.DataFrame(data, columns=values).groupby(image, sort=False).mean()
        voted.loc[unweighted] = plain.loc[unweighted]
    if task == "classification":
        voted = voted.div(voted.sum(axis=1), axis=0)

    result = pd.DataFrame({"image_index": voted.index.to_numpy()})
    kept = [c for c in (*_IMAGE_COLUMNS, "true_label") if c in samples.columns]
    if kept:
        first = samples[["image_index", *kept]].groupby("image_index", sort=False, dropna=False)
        conflicting = first.nunique()
        conflicting = conflicting.index[(conflicting > 1).any(axis=1)].tolist()
        if conflicting:
            raise DataError(f"image(s) {conflicting[:10]} have samples with different "
                            f"{' or '.join(kept)}; the sample predictions are mixed up")
        result = result.join(first.first().reindex(voted.index).reset_index(drop=True))
    for column in values:
        result[column] = voted[column].to_numpy()
    return result
