"""Seeded, stratified splits of a cohort into test, train and validation groups, made over units.

A unit is the indivisible group an image belongs to: its participant, or several participants merged
because they share identical images (SPEC section 4). Every splitter here runs over a table with one row
per unit, sorted by unit id, and each image then follows its unit; the splits are therefore group-aware by
construction, and reordering the rows of the image table does not change which units go where.

The splitters are scikit-learn's: ``train_test_split`` for the held-out groups (exact sizes) and
``StratifiedKFold``/``KFold`` for the folds, so the number of units of each class differs by at most one
between folds. ``StratifiedGroupKFold`` is not used because it balances images, not participants: a
participant with four sessions would weigh four times as much as one with a single session.

Stratification: classification units by their most frequent label (ties go to the first in sorted
order); regression units by quantile bins of their mean label (at most five bins, each with enough units
for the folds); reconstruction is not stratified.
"""

from __future__ import annotations

import logging
import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from bidsapp_dl.errors import DataError, UsageError

TASKS = ("classification", "regression", "reconstruction")
MAX_BINS = 5
TEST_SPLIT = -1  # the ``split`` value of the test group's row in the summary
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    """Row positions (``iloc``) of the held-out test group and, per split, of (train, validation)."""

    test: tuple[int, ...]
    folds: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]


def _size(value, option: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
        raise UsageError(f"{option} must be 0, a fraction in (0, 1) or a whole number of participants, "
                         f"found {value!r}")
    if value >= 1 and value != int(value):
        raise UsageError(f"{option} {value} is neither a fraction below 1 nor a whole number of participants")
    return float(value)


def _count(size: float, n: int) -> int:
    # fractions round up, as scikit-learn does; the rounding guards against 0.1 * 30 = 3.0000000000000004
    return math.ceil(round(size * n, 9)) if size < 1 else int(size)


def _check_options(task, n_splits, test_size, validation_size, seed) -> None:
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if isinstance(n_splits, bool) or not isinstance(n_splits, numbers.Integral) or n_splits < 1:
        raise UsageError(f"--n-splits must be a whole number >= 1 (1 = a single split), found {n_splits!r}")
    _size(test_size, "--test-size")
    if _size(validation_size, "--validation-size") == 0 and n_splits == 1:
        raise UsageError("--n-splits 1 needs a validation group: give --validation-size > 0")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise UsageError(f"--seed must be a whole number >= 0, found {seed!r}")


def _missing(values: pd.Series) -> pd.Series:
    return values.isna() | values.map(str).str.strip().isin(["", "n/a", "nan", "None"])


def _modes(values: pd.Series, keys: pd.Series) -> pd.Series:
    """Most frequent value per key, ties going to the first in sorted order; keys without values left out."""
    pairs = pd.DataFrame({"key": keys.to_numpy(), "value": values.to_numpy()}).dropna()
    counts = pairs.value_counts().rename("n").reset_index()
    counts = counts.sort_values(["key", "n", "value"], ascending=[True, False, True], kind="stable")
    return counts.drop_duplicates("key").set_index("key")["value"]


def _units(table: pd.DataFrame, task: str) -> pd.Series:
    """One stratification value per unit (index: unit ids, sorted); None values when unstratified."""
    for column in ("participant_id", "unit"):
        if column not in table.columns:
            raise DataError(f"the image table has no {column!r} column; it cannot be split")
    if len(table) == 0:
        raise DataError("the image table is empty: there is nothing to split")
    if _missing(table["unit"]).any():
        raise DataError("some images have no unit id; every image needs the participant group it belongs to")
    units = table["unit"].map(str)
    spread = units.groupby(table["participant_id"].map(str)).nunique()
    if (spread > 1).any():
        raise DataError(f"participant {spread.index[spread > 1][0]!r} belongs to several units; "
                        "all images of a participant must stay together")
    if task == "reconstruction":
        return pd.Series(None, index=pd.Index(sorted(units.unique())), dtype=object)
    if "label" not in table.columns or _missing(table["label"]).any():
        n = len(table) if "label" not in table.columns else int(_missing(table["label"]).sum())
        raise DataError(f"{n} image(s) have no label; the {task} task needs a label for every image: "
                        "add them or leave those images out")
    if task == "classification":
        labels = table["label"].map(str)
        if labels.nunique() < 2:
            raise DataError("classification needs at least two classes, but every image is "
                            f"{labels.iloc[0]!r}; check --label or choose another --task")
        return _modes(labels, units)
    values = pd.to_numeric(table["label"], errors="coerce")
    if values.isna().any():
        raise DataError(f"regression needs numeric labels, found {table['label'][values.isna()].iloc[0]!r}; "
                        "check --label or use --task classification")
    # summing in sorted order makes the mean independent of the order of the rows
    order = np.argsort(values.to_numpy(), kind="stable")
    return pd.Series(values.to_numpy()[order]).groupby(units.to_numpy()[order]).mean()


def _bins(values: pd.Series, min_count: int, max_bins: int) -> np.ndarray | None:
    """Quantile bins of equal size (ties broken by unit order), each with at least ``min_count`` units."""
    n_bins = min(MAX_BINS, max_bins, len(values) // min_count)
    if n_bins < 2:
        return None
    return pd.qcut(values.rank(method="first"), n_bins, labels=False).to_numpy()


def _holdout(units: pd.Series, size: float, task: str, seed: int, held: str, rest: str, option: str,
             where: str):
    """Split units into (rest, held) with ``train_test_split``; each is an array of unit ids."""
    n = len(units)
    n_held = _count(size, n)
    if n_held >= n:
        raise DataError(f"{option} {size:g} puts all {n} participants{where} in the {held}, "
                        f"leaving none for {rest}; lower {option}")
    strata = None
    if task == "classification":
        counts = units.value_counts().sort_index()
        if (counts < 2).any():
            fix = "use --test-size 0" if held == "test group" else "lower --test-size"
            raise DataError(f"class {counts.index[counts < 2][0]!r} has only 1 participant{where}, too few "
                            f"to appear in both the {held} and {rest}; add participants or {fix}")
        if min(n_held, n - n_held) < len(counts):
            raise DataError(f"{option} {size:g} gives {n_held} participant(s) to the {held} and "
                            f"{n - n_held} to {rest}, but each side needs one of each of the "
                            f"{len(counts)} classes; change {option}")
        strata = units.to_numpy()
    elif task == "regression":
        strata = _bins(units, 2, min(n_held, n - n_held))
    try:
        kept, taken = train_test_split(units.index.to_numpy(), test_size=n_held, random_state=seed,
                                       shuffle=True, stratify=strata)
    except ValueError as error:
        reason = " ".join(str(error).split())
        raise DataError(f"cannot make the {held} ({reason}); change {option} or add participants") from None
    return kept, taken


def _folds(units: pd.Series, n_splits: int, task: str, seed: int, after_test: bool):
    """(train, validation) unit ids for each of ``n_splits`` folds."""
    where = " outside the test group" if after_test else ""
    if len(units) < n_splits:
        raise DataError(f"only {len(units)} participant(s){where}, fewer than --n-splits {n_splits}; "
                        "lower --n-splits" + (" or --test-size" if after_test else ""))
    strata = None
    if task == "classification":
        counts = units.value_counts().sort_index()
        if (counts < n_splits).any():
            small = counts.index[counts < n_splits][0]
            hint = " or --test-size" if after_test else ""
            raise DataError(f"class {small!r} has {counts[small]} participant(s){where}, fewer than "
                            f"--n-splits {n_splits}; lower --n-splits{hint}")
        strata = units.to_numpy()
    elif task == "regression":
        strata = _bins(units, n_splits, MAX_BINS)
    ids = units.index.to_numpy()
    try:
        if strata is None:
            parts = KFold(n_splits, shuffle=True, random_state=seed).split(ids)
        else:
            parts = StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(ids, strata)
        return [(ids[train], ids[val]) for train, val in parts]
    except ValueError as error:
        reason = " ".join(str(error).split())
        raise DataError(f"cannot make {n_splits} folds ({reason}); lower --n-splits") from None


def make_splits(table: pd.DataFrame, task: str, n_splits: int = 5, test_size: float = 0.2,
                validation_size: float = 0.2, seed: int = 0) -> Splits:
    """Seeded, stratified test holdout then K folds (or one train/validation split), made over units.

    Parameters
    ----------
    table : one row per image: ``participant_id``, ``session_id``, ``label``, ``unit`` [, ``age``, ``sex``].
    task : classification, regression or reconstruction.
    n_splits : K >= 2 for K-fold cross-validation, 1 for one train/validation split.
    test_size, validation_size : a fraction of units when below 1 (rounded up), a count of units when
        a whole number >= 1, none when 0. ``validation_size`` is used only when ``n_splits`` is 1.
    seed : the same seed and table give identical splits.

    Returns
    -------
    Splits with row positions (``iloc``) in ascending order.
    """
    _check_options(task, n_splits, test_size, validation_size, seed)
    table = table.reset_index(drop=True)  # positions are what counts; a duplicated index would misalign
    units = _units(table, task)
    if len(units) < 2:
        raise DataError("all images belong to one participant (or one group of identical images): "
                        "there is nothing to split; add participants")
    test_seed, fold_seed = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2))
    needed = max(n_splits, 2)
    test_ids: np.ndarray = np.array([], dtype=object)
    rest = units
    if test_size > 0:
        n_rest = len(units) - _count(test_size, len(units))
        if 0 < n_rest < needed:
            purpose = f"--n-splits {n_splits}" if n_splits > 1 else "training and validation"
            raise DataError(f"--test-size {test_size:g} leaves {n_rest} of the {len(units)} participants, "
                            f"too few for {purpose}; lower --test-size")
        kept, test_ids = _holdout(units, test_size, task, test_seed, "test group", "the rest", "--test-size",
                                  "")
        rest = units.loc[np.sort(kept)]
    if n_splits == 1:
        train, val = _holdout(rest, validation_size, task, fold_seed, "validation group", "training",
                              "--validation-size", " outside the test group" if test_size > 0 else "")
        folds = [(train, val)]
    else:
        folds = _folds(rest, n_splits, task, fold_seed, after_test=test_size > 0)
    row_units = pd.Index(table["unit"].map(str))

    def rows(ids) -> tuple[int, ...]:
        return tuple(int(i) for i in np.flatnonzero(row_units.isin(ids)))

    return Splits(test=rows(test_ids), folds=tuple((rows(tr), rows(va)) for tr, va in folds))


def _per_participant(part: pd.DataFrame, task: str) -> pd.DataFrame:
    """Age (mean), sex and label (most frequent, or mean for regression) of each participant."""
    people = part["participant_id"].map(str)
    out = pd.DataFrame(index=pd.Index(sorted(people.unique())))
    if "age" in part.columns:
        out["age"] = pd.to_numeric(part["age"], errors="coerce").groupby(people).mean()
    if "sex" in part.columns:
        out["sex"] = _modes(part["sex"].map(str).mask(_missing(part["sex"])), people)
    if task == "classification":
        out["label"] = _modes(part["label"].map(str).mask(part["label"].isna()), people)
    elif task == "regression":
        out["label"] = pd.to_numeric(part["label"], errors="coerce").groupby(people).mean()
    return out


def _welch(a: pd.Series, b: pd.Series) -> float:
    a, b = a.dropna().to_numpy(float), b.dropna().to_numpy(float)
    if min(len(a), len(b)) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _chi2(a: pd.Series, b: pd.Series) -> float:
    """Chi-square test on the 2 x categories table of counts (not proportions)."""
    counts = pd.concat([a.dropna().value_counts(), b.dropna().value_counts()], axis=1).fillna(0)
    if len(counts) < 2 or (counts.sum(axis=0) == 0).any():
        return math.nan
    try:
        return float(stats.chi2_contingency(counts.to_numpy().T).pvalue)
    except ValueError:
        return math.nan


def _balance(table: pd.DataFrame, a: list[int], b: list[int], task: str, what: str) -> dict[str, float]:
    """p-values of the differences between two groups of rows, computed over participants."""
    pa, pb = _per_participant(table.iloc[a], task), _per_participant(table.iloc[b], task)
    tests = {"age": _welch, "sex": _chi2, "label": _chi2 if task == "classification" else _welch}
    out = {}
    for name, test in tests.items():
        if name in pa.columns:
            out[f"{name}_p"] = p = test(pa[name], pb[name])
            if p < 0.05:
                logger.warning("%s: %s differs between the groups (p = %.3g)", what, name, p)
    return out


def _describe(table: pd.DataFrame, rows: list[int], task: str, classes, sexes) -> dict[str, float]:
    part = table.iloc[rows]
    people = _per_participant(part, task)
    out: dict[str, float] = {"n_participants": len(people), "n_images": len(part)}
    if task == "classification":
        counts = part["label"].dropna().map(str).value_counts()
        out.update({f"label_{c}": int(counts.get(c, 0)) for c in classes})
    elif task == "regression":
        values = pd.to_numeric(part["label"], errors="coerce")
        out.update(label_mean=values.mean(), label_sd=values.std())
    if "age" in people.columns:
        out.update(age_mean=people["age"].mean(), age_sd=people["age"].std())
    if "sex" in people.columns:
        counts = people["sex"].value_counts()
        out.update({f"sex_{s}": int(counts.get(s, 0)) for s in sexes})
    return out


def split_summary(table: pd.DataFrame, splits: Splits, task: str) -> pd.DataFrame:
    """One row per (split, group) with sizes, label counts or statistics, age, sex and balance tests.

    ``split`` is the split index for train and validation rows and -1 for the single test row (left out
    when the test group is empty). Label counts and label mean/SD are over images; age and sex are over
    participants (a participant's mean age, most frequent sex). ``age_p`` (Welch t-test), ``sex_p``
    (chi-square on counts) and ``label_p`` (chi-square, or Welch t-test for regression) compare one value
    per participant between train and validation (written on both rows of the split) and between the test
    group and everything else (on the test row); NaN when not computable. p < 0.05 logs a warning.
    """
    table = table.reset_index(drop=True)
    has_label = task != "reconstruction" and "label" in table.columns
    task = task if has_label else "reconstruction"
    classes = sorted(table["label"].dropna().map(str).unique()) if task == "classification" else []
    sexes = sorted(table["sex"][~_missing(table["sex"])].map(str).unique()) if "sex" in table else []
    records = []
    for i, (train, val) in enumerate(splits.folds):
        p = _balance(table, list(train), list(val), task, f"split {i}, train vs validation")
        for group, rows in (("train", train), ("validation", val)):
            described = _describe(table, list(rows), task, classes, sexes)
            records.append({"split": i, "group": group, **described, **p})
    if splits.test:
        rest = sorted(set(range(len(table))) - set(splits.test))
        p = _balance(table, list(splits.test), rest, task, "test group vs the rest")
        records.append({"split": TEST_SPLIT, "group": "test",
                        **_describe(table, list(splits.test), task, classes, sexes), **p})
    return pd.DataFrame.from_records(records)
