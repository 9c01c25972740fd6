"""Evaluation metrics (classification, regression, image reconstruction) and bootstrap intervals.

The classification and regression metrics are computed from a confusion matrix and plain numpy
formulas that give the same numbers as scikit-learn's ``confusion_matrix``,
``balanced_accuracy_score``, ``matthews_corrcoef``, ``roc_auc_score``, ``mean_absolute_error``,
``mean_squared_error`` and ``r2_score`` (the tests check this), because the bootstrap calls them
thousands of times and scikit-learn's input validation would dominate the run time. A value that is
undefined (a class absent from ``y_true``, a division by zero) is NaN, without any warning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

log = logging.getLogger(__name__)

CLASSIFICATION_METRICS = ("BA", "accuracy", "sensitivity", "specificity", "PPV", "NPV", "F1", "MCC", "AUC")
REGRESSION_METRICS = ("MAE", "RMSE", "R2")
RECONSTRUCTION_METRICS = ("MAE", "RMSE", "PSNR", "SSIM")

_MAXIMISED = frozenset(CLASSIFICATION_METRICS) | {"R2", "PSNR", "SSIM"}
_MINIMISED = frozenset({"loss", "MAE", "RMSE", "MSE"})

# SSIM constants of Wang et al. (2004); a 7-point window per axis (radius 3 at sigma 1.5)
_SSIM_K1, _SSIM_K2, _SSIM_SIGMA, _SSIM_RADIUS = 0.01, 0.03, 1.5, 3


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def metric_direction(name: str) -> str:
    """``"max"`` when a larger ``name`` is better (BA, AUC, R2, PSNR...), ``"min"`` otherwise (loss, MAE)."""
    if name in _MAXIMISED:
        return "max"
    if name in _MINIMISED:
        return "min"
    raise ValueError(f"unknown metric {name!r}; known: {', '.join(sorted(_MAXIMISED | _MINIMISED))}")


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count one half), NaN for one class."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0 or not np.isfinite(score).all():
        return math.nan
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, positive: int | None = None
                           ) -> dict[str, float]:
    """Classification metrics of class probabilities.

    Parameters
    ----------
    y_true
        Class indices, shape (N,).
    proba
        Class probabilities or scores, shape (N, K); the prediction is the argmax of each row.
    positive
        Binary case only: index of the positive class (default 1), to which sensitivity,
        specificity, PPV, NPV, F1 and AUC refer. With K > 2 every class is taken one-vs-rest and
        these metrics are macro-averaged over the classes where they are defined.

    Returns
    -------
    dict
        ``CLASSIFICATION_METRICS`` -> value. BA is the mean recall over the classes present in
        ``y_true`` (scikit-learn's definition); MCC is the multi-class Matthews coefficient.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=float)
    if proba.ndim != 2 or proba.shape[1] < 2 or proba.shape[0] != y_true.shape[0] or y_true.ndim != 1:
        raise ValueError(f"expected y_true of shape (N,) and proba of shape (N, K >= 2), got "
                         f"{y_true.shape} and {proba.shape}")
    n, k = proba.shape
    if y_true.size and (not np.all(np.mod(y_true, 1) == 0) or y_true.min() < 0 or y_true.max() >= k):
        raise ValueError(f"y_true must hold class indices 0..{k - 1}")
    if k == 2:
        positive = 1 if positive is None else int(positive)
        if positive not in (0, 1):
            raise ValueError(f"positive must be 0 or 1 for two classes, got {positive}")
    if n == 0:
        return dict.fromkeys(CLASSIFICATION_METRICS, math.nan)
    y_true = y_true.astype(np.int64)
    predicted = proba.argmax(axis=1)
    # rows: true class, columns: predicted class (scikit-learn's confusion_matrix with labels=range(K))
    cm = np.bincount(y_true * k + predicted, minlength=k * k).reshape(k, k).astype(float)
    support, called = cm.sum(axis=1), cm.sum(axis=0)
    tp = np.diag(cm)
    fn, fp = support - tp, called - tp
    tn = n - tp - fn - fp
    recall = np.array([_ratio(a, b) for a, b in zip(tp, support)])
    per_class = {
        "sensitivity": recall,
        "specificity": np.array([_ratio(a, a + b) for a, b in zip(tn, fp)]),
        "PPV": np.array([_ratio(a, b) for a, b in zip(tp, called)]),
        "NPV": np.array([_ratio(a, a + b) for a, b in zip(tn, fn)]),
        "F1": np.array([_ratio(2 * a, 2 * a + b + c) for a, b, c in zip(tp, fp, fn)]),
        "AUC": np.array([_auc(y_true == c, proba[:, c]) for c in (range(k) if k > 2 else [positive])]),
    }
    out = {"BA": _nanmean(recall), "accuracy": float(tp.sum() / n)}
    for name, values in per_class.items():
        if k == 2 and name != "AUC":  # the binary AUC list already holds the positive class only
            out[name] = float(values[positive])
        else:
            out[name] = _nanmean(values)
    # Gorodkin's R_K, which is matthews_corrcoef; undefined when y_true or the prediction has one class
    den = math.sqrt((n * n - float(called @ called)) * (n * n - float(support @ support)))
    out["MCC"] = _ratio(tp.sum() * n - float(support @ called), den)
    return {name: out[name] for name in CLASSIFICATION_METRICS}


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R2 (NaN when ``y_true`` is constant or empty, or a value is not finite)."""
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.size} and {y_pred.size}")
    if y_true.size == 0 or not (np.isfinite(y_true).all() and np.isfinite(y_pred).all()):
        return dict.fromkeys(REGRESSION_METRICS, math.nan)
    error = y_pred - y_true
    mse = float(np.mean(error ** 2))
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    return {"MAE": float(np.mean(np.abs(error))), "RMSE": math.sqrt(mse),
            "R2": (1.0 - mse * y_true.size / total) if total > 0 else math.nan}


def image_reconstruction_metrics(x: np.ndarray, y: np.ndarray, data_range: float | None = None
                                 ) -> dict[str, float]:
    """MAE, RMSE, PSNR and SSIM of reconstruction ``y`` against target ``x`` (one 2D or 3D image).

    ``data_range`` defaults to ``x.max() - x.min()``; a constant target falls back to 1 so that PSNR
    and SSIM stay finite. PSNR is ``inf`` for a perfect reconstruction. Axes of length 1 (a channel)
    are not filtered.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"target and reconstruction must have the same non-empty shape, got "
                         f"{x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return dict.fromkeys(RECONSTRUCTION_METRICS, math.nan)
    if data_range is None:
        data_range = float(x.max() - x.min())
    if not data_range > 0 or not math.isfinite(data_range):
        log.debug("data range %r of the target is not positive: using 1", data_range)
        data_range = 1.0
    mse = float(np.mean((x - y) ** 2))
    psnr = math.inf if mse == 0 else 10.0 * math.log10(data_range ** 2 / mse)
    return {"MAE": float(np.mean(np.abs(x - y))), "RMSE": math.sqrt(mse), "PSNR": psnr,
            "SSIM": _ssim(x, y, data_range)}


def _ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Mean SSIM with Gaussian-weighted local statistics, away from borders the window cannot fill."""
    radius = [min(_SSIM_RADIUS, (n - 1) // 2) for n in x.shape]
    sigma = [_SSIM_SIGMA if r > 0 else 0.0 for r in radius]

    def smooth(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma=sigma, radius=[max(r, 1) for r in radius], mode="reflect")

    mu_x, mu_y = smooth(x), smooth(y)
    var_x = smooth(x * x) - mu_x * mu_x
    var_y = smooth(y * y) - mu_y * mu_y
    cov = smooth(x * y) - mu_x * mu_y
    c1, c2 = (_SSIM_K1 * data_range) ** 2, (_SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
                / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    inner = tuple(slice(r, n - r) for r, n in zip(radius, x.shape))
    return float(ssim_map[inner].mean())


def bootstrap_ci(metric_fn: Callable[..., Mapping[str, float]], arrays: tuple[np.ndarray, ...],
                 n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                 groups: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of every metric ``metric_fn(*arrays)`` returns.

    Implemented here rather than with ``scipy.stats.bootstrap``, which resamples neither whole
    groups nor a statistic that returns a dictionary with undefined (NaN) values.

    Parameters
    ----------
    metric_fn
        Called on the resampled arrays; returns metric name -> value.
    arrays
        Paired arrays, resampled together along their first axis.
    n_resamples, seed, level
        Number of resamples, seed of ``numpy.random.default_rng``, coverage of the interval.
    groups
        One key per row: whole groups are drawn with replacement (e.g. every session of a
        participant together) instead of single rows.

    Returns
    -------
    dict
        Metric name -> (lower, upper) percentiles over the resamples where the metric is defined;
        ``(nan, nan)`` when it is undefined in all of them.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    n = arrays[0].shape[0] if arrays else 0
    if not arrays or any(a.shape[0] != n for a in arrays):
        raise ValueError("bootstrap_ci needs one or more arrays of equal length")
    if not 0 < level < 1 or n_resamples < 1:
        raise ValueError(f"need 0 < level < 1 and n_resamples >= 1, got {level} and {n_resamples}")
    if n == 0:
        return dict.fromkeys(metric_fn(*arrays), (math.nan, math.nan))
    rng = np.random.default_rng(seed)
    draw = _row_sampler(n, groups, rng)
    samples: list[Mapping[str, float]] = []
    for _ in range(n_resamples):
        rows = draw()
        samples.append(metric_fn(*(a[rows] for a in arrays)))
    names = list(dict.fromkeys(name for s in samples for name in s))
    tail = 100 * (1 - level) / 2
    intervals = {}
    for name in names:
        values = np.array([s.get(name, math.nan) for s in samples], dtype=float)
        values = values[~np.isnan(values)]
        if values.size == 0:
            intervals[name] = (math.nan, math.nan)
        else:
            low, high = np.percentile(values, [tail, 100 - tail])
            intervals[name] = (float(low), float(high))
    return intervals


def _row_sampler(n: int, groups: np.ndarray | None, rng: np.random.Generator) -> Callable[[], np.ndarray]:
    if groups is None:
        return lambda: rng.integers(0, n, size=n)
    groups = np.asarray(groups)
    if groups.shape[0] != n:
        raise ValueError(f"groups has {groups.shape[0]} entries for {n} rows")
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    def draw() -> np.ndarray:
        chosen = rng.integers(0, counts.size, size=counts.size)
        sizes = counts[chosen]
        # position of each drawn row inside its group, then shifted to where that group starts
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return order[np.repeat(starts[chosen], sizes) + within]

    return draw
