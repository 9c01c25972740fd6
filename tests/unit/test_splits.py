"""Splits over units: leakage, coverage, stratification, sizes, seeding, errors, and the split summary."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy import stats

from bidsapp_dl.errors import DataError, UsageError
from bidsapp_dl.split import splits as splits_module
from bidsapp_dl.split.splits import Splits, make_splits, split_summary

# derandomized and without a database, so that every run tries the same examples
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLASSES = ("AD", "CN", "MCI")


@st.composite
def cohorts(draw, task: str, min_per_class: int = 0, consistent: bool = True) -> pd.DataFrame:
    """Images of units of 1-3 participants, 1-4 sessions each, rows in random order.

    With ``consistent`` every participant has a strict majority of its unit's label, so each unit has
    one label; otherwise session labels are free and units' labels come from ties and majorities.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if task == "classification":
        n_classes = draw(st.integers(2, 3))
        top = min_per_class + 15 if consistent else 12
        counts = [draw(st.integers(min_per_class, top)) for _ in range(n_classes)]
        unit_labels = [c for c, n in zip(CLASSES, counts) for _ in range(n)]
    else:
        unit_labels = [None] * draw(st.integers(max(min_per_class, 2), 40))
    merge_weights = draw(st.sampled_from([(1.0, 0, 0), (0.7, 0.2, 0.1), (0.4, 0.3, 0.3)]))
    names = rng.permutation(10_000)[: 3 * len(unit_labels)]
    rows, used = [], 0
    for main in unit_labels:
        size = int(rng.choice([1, 2, 3], p=merge_weights))
        people = [f"sub-{n:04d}" for n in names[used:used + size]]
        used += size
        value = rng.normal(50, 10)
        for person in people:
            n_sessions = int(rng.integers(1, 5))
            others = set(rng.choice(n_sessions, size=int(rng.integers(0, (n_sessions - 1) // 2 + 1)),
                                    replace=False).tolist())
            age, sex = rng.normal(70, 8), rng.choice(["F", "M", None])
            for s in range(n_sessions):
                if task == "classification" and not consistent:
                    label = rng.choice(CLASSES[:n_classes])
                elif task == "classification":
                    label = rng.choice([c for c in CLASSES[:n_classes] if c != main]) if s in others else main
                elif task == "regression":
                    label = value + rng.normal(0, 2)
                else:
                    label = np.nan
                session = f"ses-M{s:03d}" if n_sessions > 1 else ""
                rows.append({"participant_id": person, "session_id": session, "label": label,
                             "unit": min(people), "age": age + s if s != 2 else np.nan, "sex": sex})
    return pd.DataFrame(rows).sample(frac=1, random_state=rng.integers(2**31)).reset_index(drop=True)


def sizes(k_max: int = 5):
    """(n_splits, test_size, validation_size) as fractions or counts."""
    return st.tuples(st.integers(1, k_max),
                     st.one_of(st.just(0), st.floats(0.15, 0.3), st.integers(3, 5)),
                     st.one_of(st.floats(0.2, 0.4), st.integers(3, 4)))


def unit_sets(table: pd.DataFrame, result: Splits):
    """The assignment as sets of unit ids, independent of row positions."""
    unit = table["unit"].to_numpy()

    def units(rows):
        return frozenset(unit[list(rows)])

    return units(result.test), [(units(tr), units(va)) for tr, va in result.folds]


def expected_count(size: float, n: int) -> int:
    return 0 if size == 0 else (math.ceil(round(size * n, 9)) if size < 1 else int(size))


def check_no_leakage(table: pd.DataFrame, result: Splits, n_splits: int) -> None:
    n = len(table)
    test, folds = unit_sets(table, result)
    assert len(result.folds) == n_splits
    validated = np.zeros(n, int)
    for (train_rows, val_rows), (train, val) in zip(result.folds, folds):
        assert not train & val and not train & test and not val & test
        assert sorted(train_rows + val_rows + result.test) == list(range(n))
        assert list(train_rows) == sorted(train_rows) and val_rows and train_rows
        validated[list(val_rows)] += 1
    if n_splits >= 2:
        rest = np.setdiff1d(np.arange(n), result.test)
        assert (validated[rest] == 1).all() and (validated[list(result.test)] == 0).all()


def check_sizes(table: pd.DataFrame, result: Splits, n_splits, test_size, validation_size) -> None:
    test, folds = unit_sets(table, result)
    n_units = table["unit"].nunique()
    assert len(test) == expected_count(test_size, n_units)
    assert abs(len(test) - (test_size if test_size >= 1 else test_size * n_units)) < 1
    if n_splits == 1:
        n_rest = n_units - len(test)
        assert len(folds[0][1]) == expected_count(validation_size, n_rest)


def check_reproducible(table, task, args, result) -> None:
    assert make_splits(table, task, *args) == result
    shuffled = table.sample(frac=1, random_state=1).reset_index(drop=True)
    assert unit_sets(shuffled, make_splits(shuffled, task, *args)) == unit_sets(table, result)


@SETTINGS
@given(data=st.data(), shape=sizes(), seed=st.integers(0, 2**20))
def test_classification_splits_keep_units_whole_balanced_and_sized(data, shape, seed):
    n_splits, test_size, validation_size = shape
    table = data.draw(cohorts("classification", min_per_class=2 * n_splits + 4))
    args = (n_splits, test_size, validation_size, seed)
    result = make_splits(table, "classification", *args)
    check_no_leakage(table, result, n_splits)
    check_sizes(table, result, *shape)
    check_reproducible(table, "classification", args, result)
    if n_splits >= 2:
        unit_label = table.groupby("unit")["label"].agg(lambda v: v.value_counts().idxmax())
        _, folds = unit_sets(table, result)
        for label in unit_label.unique():
            per_fold = [sum(unit_label[u] == label for u in val) for _, val in folds]
            assert max(per_fold) - min(per_fold) <= 1, (label, per_fold)


@SETTINGS
@given(data=st.data(), task=st.sampled_from(["regression", "reconstruction"]), shape=sizes(),
       seed=st.integers(0, 2**20))
def test_regression_and_reconstruction_splits_keep_units_whole_and_sized(data, task, shape, seed):
    n_splits, test_size, validation_size = shape
    table = data.draw(cohorts(task, min_per_class=12))
    if task == "reconstruction" and data.draw(st.booleans()):
        table = table.drop(columns="label")
    args = (n_splits, test_size, validation_size, seed)
    result = make_splits(table, task, *args)
    check_no_leakage(table, result, n_splits)
    check_sizes(table, result, *shape)
    check_reproducible(table, task, args, result)


BAD = {"n_splits": (-1, 0, 2.5, "5"), "test_size": (-0.5, 1.5, math.nan, math.inf, True, "0.2"),
       "validation_size": (-1, 2.5, math.nan, None)}


@settings(SETTINGS, max_examples=150)
@given(data=st.data(), task=st.sampled_from(["classification", "regression", "reconstruction"]),
       n_splits=st.integers(1, 6), test_size=st.sampled_from((0, 0.1, 0.3, 0.5, 0.9, 0.99, 1, 3, 50)),
       validation_size=st.sampled_from((0, 0.2, 0.7, 2, 30)),
       bad=st.sampled_from([None] * 6 + ["n_splits", "test_size", "validation_size"]),
       seed=st.integers(0, 100))
def test_any_cohort_is_split_cleanly_or_refused_with_the_right_error(data, task, n_splits, test_size,
                                                                     validation_size, bad, seed):
    table = data.draw(cohorts(task, consistent=False))
    options = {"n_splits": n_splits, "test_size": test_size, "validation_size": validation_size}
    if bad is not None:
        options[bad] = data.draw(st.sampled_from(BAD[bad]))
    bad_options = bad is not None or (n_splits == 1 and validation_size == 0)
    n_splits, test_size, validation_size = options.values()
    try:
        result = make_splits(table, task, n_splits, test_size, validation_size, seed)
    except UsageError as error:
        event("usage error")
        assert bad_options and "\n" not in str(error)
    except DataError as error:
        event("data error")
        assert not bad_options and "\n" not in str(error)
    else:
        event("split")
        assert not bad_options
        check_no_leakage(table, result, n_splits)
        check_sizes(table, result, n_splits, test_size, validation_size)


def simple_table(n_per_class=(10, 10), sessions=2) -> pd.DataFrame:
    rows = []
    for label, n in zip(CLASSES, n_per_class):
        for i in range(n):
            for s in range(sessions):
                rows.append({"participant_id": f"sub-{label}{i:02d}", "session_id": f"ses-{s}",
                             "label": label, "unit": f"sub-{label}{i:02d}"})
    return pd.DataFrame(rows)


def split_participant() -> pd.DataFrame:
    table = simple_table((10, 10))
    table.loc[1, "unit"] = "sub-CN05"
    return table


def test_different_seeds_give_different_splits():
    table = simple_table((20, 20))
    results = {make_splits(table, "classification", 5, 0.2, seed=seed) for seed in range(5)}
    assert len(results) == 5


def test_merged_participants_go_together():
    table = simple_table((10, 10), sessions=1)
    table.loc[table["participant_id"].isin(["sub-AD00", "sub-AD01", "sub-AD02"]), "unit"] = "sub-AD00"
    for seed in range(10):
        result = make_splits(table, "classification", 3, 0.25, seed=seed)
        for rows in [result.test, *[v for _, v in result.folds]]:
            inside = set(table["participant_id"].iloc[list(rows)])
            assert len(inside & {"sub-AD00", "sub-AD01", "sub-AD02"}) in (0, 3)


def test_regression_folds_are_stratified_on_quantile_bins():
    table = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(50)], "session_id": "",
                          "label": np.arange(50.0)[::-1]})
    table["unit"] = table["participant_id"]
    result = make_splits(table, "regression", 5, 0, seed=3)
    for _, val in result.folds:
        bins = np.bincount((table["label"].iloc[list(val)] // 10).astype(int), minlength=5)
        assert bins.tolist() == [2] * 5


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"task": "segmentation"}, UsageError, ["segmentation"]),
    ({"n_splits": 0}, UsageError, ["--n-splits"]),
    ({"test_size": 1.5}, UsageError, ["--test-size"]),
    ({"test_size": -0.1}, UsageError, ["--test-size"]),
    ({"n_splits": 1, "validation_size": 0}, UsageError, ["--validation-size"]),
    ({"seed": -3}, UsageError, ["--seed"]),
    ({"table": simple_table((5, 0))}, DataError, ["two classes"]),
    ({"table": simple_table((12, 3)), "test_size": 0}, DataError, ["'CN'", "3 participant", "--n-splits"]),
    ({"table": simple_table((12, 1))}, DataError, ["'CN'", "--test-size 0"]),
    ({"table": simple_table((2, 2)), "test_size": 0}, DataError, ["4 participant", "--n-splits"]),
    ({"test_size": 20}, DataError, ["--test-size"]),
    ({"table": simple_table((10, 10)).assign(label="x"), "task": "regression"}, DataError, ["numeric"]),
    ({"table": simple_table((10, 10)).assign(label=None)}, DataError, ["no label"]),
    ({"table": split_participant()}, DataError, ["'sub-AD00'", "several units"]),
    ({"table": simple_table((1, 0)), "task": "reconstruction"}, DataError, ["one participant"]),
    ({"table": simple_table((10, 10)).drop(columns="unit")}, DataError, ["'unit'"]),
])
def test_bad_inputs_raise_one_line_errors(kwargs, error, words):
    args = {"table": simple_table((10, 10)), "task": "classification", **kwargs}
    with pytest.raises(error) as caught:
        make_splits(**args)
    assert "\n" not in str(caught.value)
    assert all(w in str(caught.value) for w in words), str(caught.value)


def test_a_scikit_learn_value_error_becomes_a_data_error(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("something inside scikit-learn")

    monkeypatch.setattr(splits_module, "train_test_split", broken)
    with pytest.raises(DataError, match="test group"):
        make_splits(simple_table(), "classification", 2, 0.2)


def hand_table() -> tuple[pd.DataFrame, Splits]:
    """20 participants: sub-01..10 male with 2 sessions (train), 11..18 female (validation), 19-20 (test)."""
    rows = []
    for k in range(1, 21):
        label = "AD" if k <= 6 or 11 <= k <= 14 or k == 19 else "CN"
        for s in range(2 if k <= 10 else 1):
            rows.append({"participant_id": f"sub-{k:02d}", "session_id": f"ses-{s}",
                         "label": "CN" if (k, s) == (1, 1) else label, "unit": f"sub-{k:02d}",
                         "age": 60.0 + k + 2 * s, "sex": "M" if k <= 10 else "F"})
    table = pd.DataFrame(rows)
    ids = table["participant_id"].str[4:].astype(int)

    def rows_of(lo, hi):
        return tuple(np.flatnonzero((ids >= lo) & (ids <= hi)).tolist())

    return table, Splits(test=rows_of(19, 20), folds=((rows_of(1, 10), rows_of(11, 18)),))


def test_summary_counts_and_balance_tests_on_a_hand_made_split(caplog):
    table, result = hand_table()
    with caplog.at_level(logging.WARNING, logger="bidsapp_dl.split.splits"):
        summary = split_summary(table, result, "classification")
    assert list(summary.columns) == ["split", "group", "n_participants", "n_images", "label_AD", "label_CN",
                                     "age_mean", "age_sd", "sex_F", "sex_M", "age_p", "sex_p", "label_p"]
    assert summary[["split", "group"]].values.tolist() == [[0, "train"], [0, "validation"], [-1, "test"]]
    counts = ["n_participants", "n_images", "label_AD", "label_CN", "sex_F", "sex_M"]
    assert summary[counts].values.tolist() == [[10, 20, 11, 9, 0, 10], [8, 8, 4, 4, 8, 0], [2, 2, 1, 1, 2, 0]]
    assert summary["age_mean"].tolist() == pytest.approx([66.5, 74.5, 79.5])
    assert summary["age_sd"].tolist() == pytest.approx([np.std(np.arange(62, 72), ddof=1),
                                                       np.std(np.arange(71, 79), ddof=1), np.sqrt(0.5)])
    train, val = summary.iloc[0], summary.iloc[1]
    assert train["sex_p"] == val["sex_p"] == pytest.approx(stats.chi2_contingency([[0, 10], [8, 0]]).pvalue)
    assert train["sex_p"] < 0.001
    # participant-level labels: sub-01 has one AD and one CN session, and the tie goes to AD
    assert train["label_p"] == pytest.approx(stats.chi2_contingency([[6, 4], [4, 4]]).pvalue)
    assert train["age_p"] == pytest.approx(stats.ttest_ind(np.arange(62, 72), np.arange(71, 79),
                                                           equal_var=False).pvalue)
    test = summary.iloc[2]
    assert test["sex_p"] == pytest.approx(stats.chi2_contingency([[2, 0], [8, 10]]).pvalue)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("split 0" in m and "sex" in m and f"{train['sex_p']:.3g}" in m for m in warned), warned
    assert not any("label" in m for m in warned)


def test_summary_of_balanced_splits_has_no_warning_and_nan_when_untestable(caplog):
    table = simple_table((10, 10)).assign(sex="F", age=70.0)
    result = make_splits(table, "classification", 2, 0.2, seed=0)
    with caplog.at_level(logging.WARNING, logger="bidsapp_dl.split.splits"):
        summary = split_summary(table, result, "classification")
    assert len(summary) == 5 and summary["sex_p"].isna().all() and summary["age_p"].isna().all()
    assert (summary["label_p"] > 0.05).all() and not caplog.records
    rest = summary[summary["group"] != "test"]
    assert rest.groupby("split")["n_images"].sum().tolist() == [len(table) - len(result.test)] * 2


def test_summary_for_regression_and_reconstruction():
    table, result = hand_table()
    table["label"] = np.arange(len(table), dtype=float)
    summary = split_summary(table, result, "regression")
    assert {"label_mean", "label_sd", "label_p"} <= set(summary.columns)
    assert not any(c.startswith("label_A") for c in summary.columns)
    assert summary["label_mean"].tolist() == pytest.approx([9.5, 23.5, 28.5])
    assert summary["label_sd"].iloc[1] == pytest.approx(np.std(np.arange(20, 28), ddof=1))
    plain = split_summary(table.drop(columns=["label", "age", "sex"]), result, "reconstruction")
    assert list(plain.columns) == ["split", "group", "n_participants", "n_images"]
