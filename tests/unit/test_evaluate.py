"""Metrics, bootstrap intervals, image-level soft voting and the prediction/metric tables.

Expected metric values are worked out by hand from small confusion matrices written in the test,
not by calling the function under test or the library it mirrors.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from bidsapp_dl.errors import DataError
from bidsapp_dl.evaluate import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    bootstrap_ci,
    classification_metrics,
    cross_validation_summary,
    image_reconstruction_metrics,
    metric_direction,
    metrics_table,
    prediction_table,
    reconstruction_table,
    regression_metrics,
    sample_weights,
    soft_vote,
    write_tsv,
)


def quiet(fn, *args, **kwargs):
    """Call ``fn`` and fail if it emitted any warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    assert [str(w.message) for w in caught] == []
    return result


def pairwise_auc(positive_scores, negative_scores):
    """AUC by counting every (positive, negative) pair; a tie counts one half."""
    pairs = list(itertools.product(positive_scores, negative_scores))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


def two_class(scores):
    return np.column_stack([1 - np.asarray(scores), scores])


# ---------------------------------------------------------------- classification

# 4 positives (TP 3, FN 1) then 6 negatives (FP 2, TN 4)
BINARY_Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
BINARY_SCORE = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.55, 0.4, 0.2, 0.1, 0.05])


def test_binary_metrics_by_hand():
    m = quiet(classification_metrics, BINARY_Y, two_class(BINARY_SCORE))
    assert list(m) == list(CLASSIFICATION_METRICS)
    tp, fn, fp, tn = 3, 1, 2, 4
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["BA"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m["PPV"] == pytest.approx(3 / 5)
    assert m["NPV"] == pytest.approx(4 / 5)
    assert m["F1"] == pytest.approx(6 / 9)
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["MCC"] == pytest.approx(mcc) and m["MCC"] == pytest.approx(10 / math.sqrt(600))
    # pairs won by each positive: 6 + 6 + 5 + 3 out of 4 * 6
    assert m["AUC"] == pytest.approx(20 / 24)
    assert m["AUC"] == pytest.approx(pairwise_auc(BINARY_SCORE[:4], BINARY_SCORE[4:]))


def test_binary_positive_class_zero_swaps_roles():
    m = quiet(classification_metrics, BINARY_Y, two_class(BINARY_SCORE), positive=0)
    assert m["sensitivity"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["PPV"] == pytest.approx(4 / 5)
    assert m["NPV"] == pytest.approx(3 / 5)
    assert m["F1"] == pytest.approx(8 / 11)
    assert m["AUC"] == pytest.approx(20 / 24)
    assert m["BA"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    with pytest.raises(ValueError, match="positive"):
        classification_metrics(BINARY_Y, two_class(BINARY_SCORE), positive=2)


@pytest.mark.parametrize("y, scores, expected", [
    ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),
    ([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9], 3.5 / 4),  # one tied pair counts one half
    ([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], 1.0),
    ([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9], 0.0),
])
def test_auc_known_cases(y, scores, expected):
    assert classification_metrics(np.array(y), two_class(scores))["AUC"] == pytest.approx(expected)


# rows: true class; confusion matrix [[2, 1, 0], [0, 2, 1], [0, 1, 3]]
THREE_Y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
THREE_PROBA = np.array([
    [0.6, 0.3, 0.1], [0.5, 0.2, 0.3], [0.3, 0.5, 0.2],
    [0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5],
    [0.1, 0.2, 0.7], [0.1, 0.1, 0.8], [0.3, 0.1, 0.6], [0.1, 0.5, 0.4],
])


def test_three_class_metrics_by_hand():
    m = quiet(classification_metrics, THREE_Y, THREE_PROBA)
    # tp [2, 2, 3], fp [0, 2, 1], fn [1, 1, 1], tn [7, 5, 5]
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["BA"] == pytest.approx((2 / 3 + 2 / 3 + 3 / 4) / 3)
    assert m["sensitivity"] == pytest.approx((2 / 3 + 2 / 3 + 3 / 4) / 3)
    assert m["specificity"] == pytest.approx((7 / 7 + 5 / 7 + 5 / 6) / 3)
    assert m["PPV"] == pytest.approx((2 / 2 + 2 / 4 + 3 / 4) / 3)
    assert m["NPV"] == pytest.approx((7 / 8 + 5 / 6 + 5 / 6) / 3)
    assert m["F1"] == pytest.approx((4 / 5 + 4 / 7 + 6 / 8) / 3)
    # (correct * n - true counts . predicted counts) / sqrt((n^2 - pred . pred)(n^2 - true . true))
    assert m["MCC"] == pytest.approx((7 * 10 - (3 * 2 + 3 * 4 + 4 * 4)) / math.sqrt((100 - 36) * (100 - 34)))
    ovr = [pairwise_auc(THREE_PROBA[THREE_Y == c, c], THREE_PROBA[THREE_Y != c, c]) for c in range(3)]
    assert m["AUC"] == pytest.approx(sum(ovr) / 3)


def test_metrics_agree_with_scikit_learn_on_random_cases():
    from sklearn import metrics as skm

    rng = np.random.default_rng(7)
    for k in (2, 3, 4):
        for _ in range(20):
            n = int(rng.integers(12, 40))
            y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
            # coarse values make ties in both the scores and the predictions
            proba = rng.integers(1, 5, size=(n, k)).astype(float)
            proba /= proba.sum(axis=1, keepdims=True)
            m = classification_metrics(y, proba)
            pred = proba.argmax(axis=1)
            assert m["BA"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
            if len(set(pred)) > 1:
                assert m["MCC"] == pytest.approx(skm.matthews_corrcoef(y, pred))
            if k == 2:
                assert m["AUC"] == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))
            else:
                assert m["AUC"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))


def test_single_class_truth_gives_nan_without_warnings():
    # three positives, two predicted positive: tp 2, fn 1, no negatives at all
    m = quiet(classification_metrics, np.array([1, 1, 1]), two_class([0.9, 0.7, 0.2]))
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["PPV"] == 1.0 and m["NPV"] == 0.0
    assert m["F1"] == pytest.approx(4 / 5)
    assert m["BA"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(2 / 3)
    for name in ("specificity", "MCC", "AUC"):
        assert math.isnan(m[name]), name


def test_absent_class_and_empty_input():
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]])
    m = quiet(classification_metrics, np.array([0, 0, 1, 1]), proba)
    # class 2 neither present nor predicted: it drops out of the macro averages
    assert m["BA"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["PPV"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["AUC"] == pytest.approx((pairwise_auc([0.8, 0.2], [0.1, 0.3])
                                      + pairwise_auc([0.8, 0.6], [0.1, 0.7])) / 2)
    assert m["AUC"] == pytest.approx(0.75)
    empty = quiet(classification_metrics, np.array([], dtype=int), np.zeros((0, 2)))
    assert all(math.isnan(v) for v in empty.values())
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics(np.array([0, 3]), np.ones((2, 2)) / 2)


# ---------------------------------------------------------------- regression and reconstruction


def test_regression_metrics_by_hand():
    m = quiet(regression_metrics, np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.0, 5.0]))
    assert list(m) == list(REGRESSION_METRICS)
    assert m["MAE"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert m["RMSE"] == pytest.approx(math.sqrt((0.25 + 0 + 1 + 1) / 4))
    assert m["R2"] == pytest.approx(1 - 2.25 / 5.0)
    constant = quiet(regression_metrics, np.array([2.0, 2.0]), np.array([1.0, 3.0]))
    assert constant["MAE"] == 1.0 and math.isnan(constant["R2"])


def test_psnr_by_hand_and_perfect_reconstruction():
    x = np.array([[0.0, 1.0], [1.0, 0.0]])
    m = quiet(image_reconstruction_metrics, x, x + 0.1)
    assert m["MAE"] == pytest.approx(0.1) and m["RMSE"] == pytest.approx(0.1)
    assert m["PSNR"] == pytest.approx(20.0)
    assert image_reconstruction_metrics(x, x + 0.1, data_range=10.0)["PSNR"] == pytest.approx(40.0)
    same = image_reconstruction_metrics(x, x.copy())
    assert same["PSNR"] == math.inf and same["SSIM"] == pytest.approx(1.0) and same["MAE"] == 0.0


def test_ssim_of_constant_images_by_hand():
    # no local variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1) with C1 = (0.01 * range)^2
    x, y = np.full((9, 9, 9), 0.5), np.full((9, 9, 9), 0.25)
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * 0.5 * 0.25 + c1) / (0.5 ** 2 + 0.25 ** 2 + c1)
    assert image_reconstruction_metrics(x, y, data_range=1.0)["SSIM"] == pytest.approx(expected)
    # a constant target has no range of its own: the range falls back to 1
    assert quiet(image_reconstruction_metrics, x, y)["SSIM"] == pytest.approx(expected)


@pytest.mark.parametrize("shape", [(24, 20), (16, 18, 14), (1, 12, 12, 12), (5, 40)])
def test_ssim_decreases_with_noise(shape):
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.random(shape), axis=-1)  # a smooth, structured image
    noise = rng.standard_normal(shape)
    assert quiet(image_reconstruction_metrics, x, x)["SSIM"] == pytest.approx(1.0)
    ssim = [image_reconstruction_metrics(x, x + s * noise)["SSIM"] for s in (0.05, 0.2, 1.0)]
    psnr = [image_reconstruction_metrics(x, x + s * noise)["PSNR"] for s in (0.05, 0.2, 1.0)]
    assert 1.0 > ssim[0] > ssim[1] > ssim[2]
    assert psnr[0] > psnr[1] > psnr[2]
    with pytest.raises(ValueError, match="same"):
        image_reconstruction_metrics(x, x[..., :-1])


def test_metric_direction():
    for name in (*CLASSIFICATION_METRICS, "R2", "PSNR", "SSIM"):
        assert metric_direction(name) == "max", name
    for name in ("loss", "MAE", "RMSE"):
        assert metric_direction(name) == "min", name
    with pytest.raises(ValueError, match="unknown metric"):
        metric_direction("bogus")


# ---------------------------------------------------------------- bootstrap


def noisy_regression(n=200, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.normal(70, 8, n)
    return y, y + rng.normal(0, 3, n)


def test_bootstrap_is_deterministic_and_seed_dependent():
    y, pred = noisy_regression()
    first = quiet(bootstrap_ci, regression_metrics, (y, pred), n_resamples=200, seed=3)
    again = bootstrap_ci(regression_metrics, (y, pred), n_resamples=200, seed=3)
    other = bootstrap_ci(regression_metrics, (y, pred), n_resamples=200, seed=4)
    assert first == again
    assert set(first) == set(REGRESSION_METRICS)
    assert all(first[name] != other[name] for name in REGRESSION_METRICS)


def test_bootstrap_interval_contains_estimate_and_narrows_with_level():
    y, pred = noisy_regression()
    point = regression_metrics(y, pred)
    wide = bootstrap_ci(regression_metrics, (y, pred), n_resamples=500)
    narrow = bootstrap_ci(regression_metrics, (y, pred), n_resamples=500, level=0.5)
    for name in REGRESSION_METRICS:
        low, high = wide[name]
        assert low < point[name] < high, name
        assert low < narrow[name][0] < narrow[name][1] < high, name
    constant = bootstrap_ci(lambda a: {"mean": float(a.mean())}, (np.full(10, 2.5),), n_resamples=20)
    assert constant == {"mean": (2.5, 2.5)}


def test_bootstrap_ignores_undefined_resamples_and_all_nan():
    y = np.array([0, 1, 0, 1, 1, 0])
    proba = two_class([0.2, 0.9, 0.4, 0.6, 0.3, 0.7])
    ci = quiet(bootstrap_ci, classification_metrics, (y, proba), n_resamples=300)
    # some resamples hold one class only (AUC undefined there); the others still give an interval
    assert all(math.isfinite(v) for v in ci["AUC"])
    undefined = quiet(bootstrap_ci, lambda a: {"x": math.nan, "y": 1.0}, (np.arange(5),), n_resamples=10)
    assert all(math.isnan(v) for v in undefined["x"]) and undefined["y"] == (1.0, 1.0)


def test_group_bootstrap_keeps_groups_whole():
    groups = np.array(["p1", "p1", "p1", "p2", "p3", "p3", "p4", "p4"])
    rows = np.arange(groups.size)
    seen = []

    def record(r, g):
        seen.append((tuple(r), tuple(g)))
        return {"n": float(r.size)}

    bootstrap_ci(record, (rows, groups), n_resamples=100, seed=5, groups=groups)
    assert len(seen) == 100
    assert len(set(seen)) > 1
    for resampled, keys in seen:
        drawn = pd.Series(resampled).groupby(list(keys)).agg(list)
        for key, members in drawn.items():
            whole = np.flatnonzero(groups == key).tolist()
            # each draw of a group brings all its rows, nothing else
            copies = len(members) // len(whole)
            assert sorted(members) == sorted(whole * copies), key
        assert len(drawn.index) <= 4
    # four groups drawn per resample: the row count is the sum of four group sizes
    assert all(len(r) in {sum(c) for c in itertools.product([3, 1, 2, 2], repeat=4)} for r, _ in seen)
    row_level = []
    bootstrap_ci(lambda r: row_level.append(r.tolist()) or {}, (rows,), n_resamples=50)
    # without groups single rows are drawn with replacement
    assert all(len(r) == 8 for r in row_level) and any(len(set(r)) < 8 for r in row_level)


# ---------------------------------------------------------------- soft voting


def validation_samples():
    """4 validation images (labels 0, 0, 0, 1) x 3 positions.

    Position 0 is always right (BA 1); position 1 always says 0 (BA (1 + 0) / 2 = 0.5, accuracy
    0.75); position 2 misses one image of class 0 (BA (2/3 + 1) / 2 = 5/6, accuracy 0.75).
    """
    predicted = {0: [0, 0, 0, 1], 1: [0, 0, 0, 0], 2: [0, 0, 1, 1]}
    rows = []
    for s, preds in predicted.items():
        for image, (label, p) in enumerate(zip([0, 0, 0, 1], preds)):
            rows.append({"image_index": image, "sample_index": s, "true_label": label,
                         "proba_0": 0.8 if p == 0 else 0.3, "proba_1": 0.2 if p == 0 else 0.7})
    return pd.DataFrame(rows)


def test_sample_weights_balanced_accuracy_and_threshold():
    weights = sample_weights(validation_samples(), "classification")
    assert weights.index.tolist() == [0, 1, 2]
    assert weights.tolist() == pytest.approx([1.0, 0.5, 5 / 6])
    kept = sample_weights(validation_samples(), "classification", threshold=0.6)
    assert kept.tolist() == pytest.approx([1.0, 0.0, 5 / 6])
    unlabelled = validation_samples().assign(true_label=np.nan)
    mixed = pd.concat([validation_samples(), unlabelled.assign(proba_0=0.0, proba_1=1.0)])
    assert sample_weights(mixed, "classification").tolist() == pytest.approx([1.0, 0.5, 5 / 6])
    with pytest.raises(DataError, match="true label"):
        sample_weights(unlabelled, "classification")


def test_all_positions_below_threshold_fall_back_to_equal_weights(caplog):
    with caplog.at_level(logging.WARNING, logger="bidsapp_dl.evaluate.voting"):
        weights = sample_weights(validation_samples(), "classification", threshold=1.5)
    assert weights.tolist() == [1.0, 1.0, 1.0]
    assert "equal weights" in caplog.text


def test_soft_vote_ignores_positions_below_threshold():
    test = pd.DataFrame({"image_index": [7, 7, 7], "sample_index": [0, 1, 2], "true_label": [1, 1, 1],
                         "participant_id": "sub-9", "session_id": "ses-1",
                         "proba_0": [0.4, 0.9, 0.45], "proba_1": [0.6, 0.1, 0.55]})
    weights = sample_weights(validation_samples(), "classification", threshold=0.6)
    voted = quiet(soft_vote, test, weights, "classification")
    assert voted.columns.tolist() == ["image_index", "participant_id", "session_id", "true_label",
                                      "proba_0", "proba_1"]
    # position 1 (BA 0.5 < 0.6) has no say: (0.6 * 1 + 0.55 * 5/6) / (1 + 5/6)
    assert voted["proba_1"].iloc[0] == pytest.approx((0.6 + 0.55 * 5 / 6) / (1 + 5 / 6))
    assert voted["proba_0"].iloc[0] + voted["proba_1"].iloc[0] == pytest.approx(1.0)
    assert voted[["image_index", "true_label", "participant_id"]].iloc[0].tolist() == [7, 1, "sub-9"]
    equal = soft_vote(test, None, "classification")
    assert equal["proba_1"].iloc[0] == pytest.approx((0.6 + 0.1 + 0.55) / 3)
    # the test labels play no part: only the weights passed in do
    relabelled = soft_vote(test.assign(true_label=0), weights, "classification")
    assert relabelled["proba_1"].tolist() == voted["proba_1"].tolist()
    changed = validation_samples()
    changed.loc[changed["sample_index"] == 1, "true_label"] = 0  # position 1 now always right
    other = soft_vote(test, sample_weights(changed, "classification", threshold=0.6), "classification")
    assert other["proba_1"].iloc[0] != pytest.approx(voted["proba_1"].iloc[0])


def test_soft_vote_keeps_image_order_and_handles_zero_weight_images(caplog):
    samples = pd.DataFrame({"image_index": [3, 3, 1, 1], "sample_index": [0, 1, 0, 1],
                            "proba_0": [0.2, 0.6, 0.9, 0.5], "proba_1": [0.8, 0.4, 0.1, 0.5]})
    weights = pd.Series([0.0, 1.0], index=[0, 1])
    voted = soft_vote(samples, weights, "classification")
    assert voted["image_index"].tolist() == [3, 1]
    assert voted["proba_0"].tolist() == pytest.approx([0.6, 0.5])
    # scores that do not sum to 1 are renormalised after averaging: mean (0.2, 0.4) -> (1/3, 2/3)
    scores = pd.DataFrame({"image_index": [0, 0], "sample_index": [0, 1],
                           "proba_0": [0.3, 0.1], "proba_1": [0.3, 0.5]})
    assert soft_vote(scores, None, "classification").iloc[0, 1:].tolist() == pytest.approx([1 / 3, 2 / 3])
    with caplog.at_level(logging.WARNING, logger="bidsapp_dl.evaluate.voting"):
        only_zero = soft_vote(samples[samples.sample_index == 0], weights, "classification")
    assert only_zero["proba_0"].tolist() == pytest.approx([0.2, 0.9])
    assert "weight 0" in caplog.text
    with pytest.raises(DataError, match="no weight"):
        soft_vote(samples, pd.Series([1.0], index=[0]), "classification")
    with pytest.raises(DataError, match="different"):
        soft_vote(samples.assign(true_label=[0, 1, 0, 0]), None, "classification")


def test_regression_weights_and_vote():
    validation = pd.DataFrame({"image_index": [0, 1, 0, 1], "sample_index": [0, 0, 1, 1],
                               "true_label": [10.0, 20.0, 10.0, 20.0],
                               "predicted": [11.0, 20.0, 8.0, 22.0]})
    weights = sample_weights(validation, "regression")
    # position 0: MAE 0.5, position 1: MAE 2
    assert weights.tolist() == pytest.approx([1 / 0.5, 1 / 2.0], rel=1e-5)
    test = pd.DataFrame({"image_index": [5, 5], "sample_index": [0, 1], "predicted": [30.0, 40.0]})
    voted = soft_vote(test, weights, "regression")
    assert voted.columns.tolist() == ["image_index", "predicted"]
    assert voted["predicted"].iloc[0] == pytest.approx((30 * 2 + 40 * 0.5) / 2.5, rel=1e-5)
    with pytest.raises(ValueError, match="soft voting"):
        soft_vote(test, weights, "reconstruction")


# ---------------------------------------------------------------- tables


INFO = pd.DataFrame({"participant_id": ["sub-01", "sub-02", "sub-03"],
                     "session_id": ["ses-M000", "ses-M000", "ses-M006"]})


def test_classification_prediction_table():
    proba = np.array([[0.9, 0.1], [0.3, 0.7], [0.4, 0.6]])
    table = prediction_table(INFO, np.array([0, 1, np.nan]), proba, "classification", ["AD", "CN"])
    assert table.columns.tolist() == ["participant_id", "session_id", "true_label", "predicted_label",
                                      "proba_AD", "proba_CN"]
    assert table["true_label"].tolist() == ["AD", "CN", ""]
    assert table["predicted_label"].tolist() == ["AD", "CN", "CN"]
    assert table["proba_CN"].tolist() == [0.1, 0.7, 0.6]
    patches = prediction_table(INFO, None, proba, "classification", ["AD", "CN"], mode_column="patch",
                               sample_index=np.array([0, 1, 2]))
    assert patches.columns.tolist()[:4] == ["participant_id", "session_id", "patch_id", "true_label"]
    assert patches["true_label"].tolist() == ["", "", ""]
    with pytest.raises(ValueError, match="class name"):
        prediction_table(INFO, None, proba, "classification", ["AD", "CN", "MCI"])


def test_regression_and_reconstruction_tables():
    table = prediction_table(INFO, np.array([71.5, np.nan, 80.0]), np.array([70.0, 65.2, 79.1]),
                             "regression", None)
    assert table.columns.tolist() == ["participant_id", "session_id", "true_label", "predicted_label"]
    assert table["true_label"].tolist() == [71.5, "", 80.0]
    assert table["predicted_label"].tolist() == [70.0, 65.2, 79.1]
    per_image = [{"MAE": 0.1, "RMSE": 0.2, "PSNR": 30.0, "SSIM": 0.9}] * 3
    recon = reconstruction_table(INFO, per_image)
    assert recon.columns.tolist() == ["participant_id", "session_id", "MAE", "RMSE", "PSNR", "SSIM"]
    with pytest.raises(ValueError, match="reconstruction_table"):
        prediction_table(INFO, None, np.zeros(3), "reconstruction", None)


def test_metrics_table_order():
    values = {"loss": 0.42, "AUC": 0.8, "BA": 0.75, "MCC": 0.5}
    table = metrics_table(values, {"BA": (0.6, 0.9), "AUC": (0.7, 0.85)}, CLASSIFICATION_METRICS)
    assert table.columns.tolist() == ["metric", "value", "ci_lower", "ci_upper"]
    assert table["metric"].tolist() == ["BA", "MCC", "AUC", "loss"]
    assert table.iloc[0].tolist() == ["BA", 0.75, 0.6, 0.9]
    assert math.isnan(table.iloc[3]["ci_lower"]) and math.isnan(table.iloc[1]["ci_upper"])


def test_write_tsv_is_byte_stable(tmp_path):
    def build(dtype):
        frame = metrics_table({"BA": 2 / 3, "loss": 0.1}, {"BA": (0.5, 0.8)}, ("BA",))
        return frame.astype({"value": dtype})

    write_tsv(tmp_path / "a.tsv", build("float64"))
    write_tsv(tmp_path / "b.tsv", build("float64"))
    write_tsv(tmp_path / "c.tsv", build("float32"))
    text = (tmp_path / "a.tsv").read_bytes()
    assert text == (tmp_path / "b.tsv").read_bytes() == (tmp_path / "c.tsv").read_bytes()
    assert text == (b"metric\tvalue\tci_lower\tci_upper\n"
                    b"BA\t0.666667\t0.5\t0.8\n"
                    b"loss\t0.1\tn/a\tn/a\n")
    table = prediction_table(INFO, np.array([71.5, np.nan, 80.0]), np.array([70.0, 1 / 3, 79.1]),
                             "regression", None)
    write_tsv(tmp_path / "p.tsv", table)
    lines = (tmp_path / "p.tsv").read_text().split("\n")
    assert lines[2] == "sub-02\tses-M000\t\t0.333333"
    assert not list(tmp_path.glob(".*.tmp"))


def test_cross_validation_summary_by_hand():
    def split(ba, auc):
        return pd.DataFrame({"group": "test", "level": "image", "metric": ["BA", "AUC"],
                             "value": [ba, auc], "ci_lower": math.nan, "ci_upper": math.nan})

    summary = cross_validation_summary({2: split(0.7, 0.9), 0: split(0.6, math.nan), 1: split(0.8, 0.7)})
    assert summary.columns.tolist() == ["group", "level", "metric", "mean", "sd", "n_splits"]
    assert summary["metric"].tolist() == ["BA", "AUC"]
    ba, auc = summary.iloc[0], summary.iloc[1]
    assert ba["mean"] == pytest.approx(0.7)
    assert ba["sd"] == pytest.approx(math.sqrt((0.1 ** 2 + 0.1 ** 2 + 0) / 2))
    assert ba["n_splits"] == 3
    assert auc["mean"] == pytest.approx(0.8) and auc["n_splits"] == 2
    assert auc["sd"] == pytest.approx(math.sqrt((0.1 ** 2 + 0.1 ** 2) / 1))
    two_groups = cross_validation_summary({0: split(0.6, 0.9), 1: split(0.8, 0.7).assign(group="validation")})
    assert len(two_groups) == 4 and two_groups["n_splits"].tolist() == [1, 1, 1, 1]
