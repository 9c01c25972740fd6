"""Random search: the search-space file, deterministic trials, and the ranking of trials."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bidsapp_dl.errors import InputMissingError, UsageError
from bidsapp_dl.search import (
    SearchSpace,
    load_search_space,
    search_space_from_dict,
    summarize_trials,
    trial_name,
)

SPACE = """
[fixed]
epochs = 20
selection-metrics = ["loss", "BA"]
optimizer = "AdamW"

[sample.learning-rate]
distribution = "log-uniform"
low = 1e-5
high = 1e-2
[sample.batch_size]
distribution = "choice"
values = [4, 8, 16]
[sample.architecture]
distribution = "choice"
values = ["Conv5_FC3", "Conv4_FC3", "ResNet3D"]
[sample.dropout]
distribution = "uniform"
low = 0.0
high = 0.6
[sample.patience]
distribution = "int-uniform"
low = 2
high = 5
[sample.data_augmentation]
distribution = "choice"
values = [[], ["noise"], ["noise", "affine"]]
"""


def write(tmp_path: Path, text: str, name: str = "space.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def space(tmp_path) -> SearchSpace:
    return load_search_space(write(tmp_path, SPACE))


def test_load_normalises_names_and_keeps_specs(space):
    assert space.fixed == {"epochs": 20, "selection_metrics": ["loss", "BA"], "optimizer": "AdamW"}
    assert list(space.sampled) == ["learning_rate", "batch_size", "architecture", "dropout",
                                   "patience", "data_augmentation"]
    assert space.sampled["learning_rate"] == {"distribution": "log-uniform", "low": 1e-5, "high": 1e-2}
    assert space.sampled["data_augmentation"]["values"] == [[], ["noise"], ["noise", "affine"]]


def test_same_seed_and_trial_give_the_same_values(space, tmp_path):
    assert space.sample(5, 42) == space.sample(5, 42)
    # a fresh space that never drew trials 0-2 gives trial 3 the same values
    for trial in range(3):
        space.sample(trial, 42)
    fresh = load_search_space(write(tmp_path, SPACE, "again.toml"))
    assert fresh.sample(3, 42) == space.sample(3, 42)
    assert space.sample(3, 42) != space.sample(3, 43)


def test_trials_differ(space):
    configs = [json.dumps(space.sample(trial, 7), sort_keys=True) for trial in range(50)]
    assert len(set(configs)) == 50
    # every choice shows up: the trials explore the whole space
    assert {space.sample(t, 7)["architecture"] for t in range(50)} == {"Conv5_FC3", "Conv4_FC3", "ResNet3D"}
    assert {space.sample(t, 7)["patience"] for t in range(100)} == {2, 3, 4, 5}


def test_sample_returns_fixed_and_sampled_and_copies(space):
    values = space.sample(0, 1)
    assert set(values) == set(space.fixed) | set(space.sampled)
    values["selection_metrics"].append("AUC")
    values["data_augmentation"].append("blur")
    assert space.fixed["selection_metrics"] == ["loss", "BA"]
    assert "blur" not in json.dumps(space.as_dict())


def test_adding_an_option_leaves_the_others_unchanged(space):
    data = space.as_dict()
    data["sample"]["weight_decay"] = {"distribution": "log-uniform", "low": 1e-6, "high": 1e-3}
    bigger = search_space_from_dict(data, "test")
    for trial in range(5):
        assert {k: v for k, v in bigger.sample(trial, 3).items() if k != "weight_decay"} == \
            space.sample(trial, 3)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**63), trial=st.integers(0, 100_000))
def test_values_in_range_and_of_the_right_type(seed, trial):
    space = search_space_from_dict(_parsed(), "space.toml")
    values = space.sample(trial, seed)
    assert type(values["learning_rate"]) is float and 1e-5 <= values["learning_rate"] <= 1e-2
    assert type(values["batch_size"]) is int and values["batch_size"] in (4, 8, 16)
    assert type(values["architecture"]) is str
    assert type(values["dropout"]) is float and 0.0 <= values["dropout"] < 0.6
    assert type(values["patience"]) is int and 2 <= values["patience"] <= 5
    augment = values["data_augmentation"]
    assert type(augment) is list and all(type(a) is str for a in augment)
    assert values["epochs"] == 20
    assert json.loads(json.dumps(values)) == values


def _parsed() -> dict:
    import tomllib

    return tomllib.loads(SPACE)


def test_log_uniform_is_spread_in_log_space(space):
    draws = [space.sample(t, 11)["learning_rate"] for t in range(2000)]
    geometric_mean = math.sqrt(1e-5 * 1e-2)
    # a plain uniform draw would put the median near 5e-3, about 1.2 decades higher
    assert abs(math.log10(statistics.median(draws)) - math.log10(geometric_mean)) < 0.25
    assert min(draws) < 3e-5 and max(draws) > 3e-3


def test_int_choice_for_float_option_becomes_float(tmp_path):
    space = load_search_space(write(tmp_path, '[sample.dropout]\ndistribution = "choice"\n'
                                              'values = [0, 0.5]\n'))
    assert all(type(space.sample(t, 0)["dropout"]) is float for t in range(10))


def test_as_dict_is_json_and_round_trips(space):
    data = json.loads(json.dumps(space.as_dict()))
    assert set(data) == {"fixed", "sample"}
    again = search_space_from_dict(data, "maps.json")
    assert again == space
    assert again.sample(9, 2) == space.sample(9, 2)


def test_record_holds_the_sampled_values(space):
    record = space.record(4, 8)
    assert record["trial"] == 4 and record["seed"] == 8
    assert set(record["values"]) == set(space.sampled)
    assert record["values"] == {k: v for k, v in space.sample(4, 8).items() if k in space.sampled}


def test_trial_name():
    assert trial_name("search", 7) == "search-trial-007"
    assert trial_name("lr-search", 1234) == "lr-search-trial-1234"
    with pytest.raises(ValueError):
        trial_name("search", -1)
    with pytest.raises(UsageError):
        trial_name("../escape", 1)


def test_sample_refuses_a_missing_seed(space):
    with pytest.raises(ValueError, match="seed"):
        space.sample(0, None)


def _sample(option: str, **spec) -> str:
    lines = [f"[sample.{option}]"] + [f"{k} = {json.dumps(v)}" for k, v in spec.items()]
    return "\n".join(lines) + "\n"


OK = _sample("dropout", distribution="uniform", low=0.1, high=0.5)

BAD = {
    "unknown option": ("[fixed]\nlearning_rat = 0.1\n" + OK, "learning_rat", "did you mean 'learning_rate'"),
    "unknown sampled option": (_sample("optimiser", distribution="choice", values=["SGD"]),
                               "optimiser", "did you mean 'optimizer'"),
    "unknown distribution": (_sample("dropout", distribution="normal", low=0, high=1), "dropout",
                             "normal"),
    "missing distribution": (_sample("dropout", low=0, high=1), "dropout", "distribution"),
    "missing low": (_sample("dropout", distribution="uniform", high=0.5), "dropout.low", "missing"),
    "missing high": (_sample("learning-rate", distribution="log-uniform", low=1e-4),
                     "learning-rate.high", "missing"),
    "low not a number": (_sample("dropout", distribution="uniform", low="a", high=0.5), "dropout.low",
                         "number"),
    "low above high": (_sample("dropout", distribution="uniform", low=0.5, high=0.1), "dropout",
                       "below high"),
    "low equals high": (_sample("patience", distribution="int-uniform", low=3, high=3), "patience",
                        "below high"),
    "log-uniform from zero": (_sample("weight_decay", distribution="log-uniform", low=0, high=1e-3),
                              "weight_decay.low", "low > 0"),
    "log-uniform negative": (_sample("learning_rate", distribution="log-uniform", low=-1, high=1),
                             "learning_rate.low", "low > 0"),
    "int-uniform float bound": (_sample("epochs", distribution="int-uniform", low=1.5, high=4),
                                "epochs.low", "integer"),
    "uniform on an int option": (_sample("batch_size", distribution="uniform", low=2, high=9),
                                 "batch_size", "int-uniform"),
    "int-uniform on a float option": (_sample("dropout", distribution="int-uniform", low=0, high=1),
                                      "dropout", "uniform"),
    "uniform on a str option": (_sample("optimizer", distribution="uniform", low=0, high=1),
                                "optimizer", "choice"),
    "extra key": (_sample("dropout", distribution="uniform", low=0, high=1, values=[0.1]), "dropout",
                  "values"),
    "empty choice": (_sample("batch_size", distribution="choice", values=[]), "batch_size", "non-empty"),
    "choice without values": (_sample("batch_size", distribution="choice"), "batch_size", "non-empty"),
    "choice str for int": (_sample("batch_size", distribution="choice", values=[4, "8"]),
                           "batch_size", "integer"),
    "choice float for int": (_sample("batch_size", distribution="choice", values=[4, 8.5]),
                             "batch_size", "integer"),
    "choice bool for int": (_sample("epochs", distribution="choice", values=[True]), "epochs", "integer"),
    "choice bool for literal int": (_sample("slice_axis", distribution="choice", values=[True]),
                                    "slice_axis", "one of 0, 1, 2"),
    "choice bad literal": (_sample("optimizer", distribution="choice", values=["Adam", "Adamm"]),
                           "optimizer", "one of Adam"),
    "choice str for float": (_sample("learning_rate", distribution="choice", values=["fast"]),
                             "learning_rate", "number"),
    "choice str for list": (_sample("data_augmentation", distribution="choice", values=["noise"]),
                            "data_augmentation", "list"),
    "choice int in list": (_sample("data_augmentation", distribution="choice", values=[[1]]),
                           "data_augmentation", "list of a string"),
    "choice list of wrong size": (_sample("roi_box", distribution="choice", values=[[8, 8]]),
                                  "roi_box", "3 values"),
    "fixed wrong type": ('[fixed]\nepochs = "20"\n' + OK, "epochs", "integer"),
    "fixed bad literal": ('[fixed]\nscheduler = "cosin"\n' + OK, "scheduler", "one of none"),
    "fixed and sampled": ("[fixed]\ndropout = 0.2\n" + OK, "dropout", "twice"),
    "fixed and sampled, dash and underscore": (
        "[fixed]\nlearning-rate = 0.1\n" + _sample("learning_rate", distribution="choice",
                                                   values=[0.1]), "learning", "twice"),
    "unknown section": ("[sampled.dropout]\nlow = 0\n" + OK, "sampled", "unknown section"),
    "nothing sampled": ("[fixed]\nepochs = 3\n", "sample", "nothing to sample"),
}
FORBIDDEN = ["bids_dir", "output-dir", "analysis_level", "stages", "maps_name", "splits", "resume",
             "overwrite", "config", "participant_label", "session-label", "derivatives", "n_splits",
             "test_size", "label", "task", "seed", "num_workers", "work_dir", "voxel_size"]


@pytest.mark.parametrize("text, key, words", BAD.values(), ids=list(BAD))
def test_invalid_spaces_are_refused_naming_file_and_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as info:
        load_search_space(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and key in message and words in message
    assert info.value.exit_code == 64


@pytest.mark.parametrize("option", FORBIDDEN)
@pytest.mark.parametrize("section", ["fixed", "sample"])
def test_options_outside_the_experiment_cannot_be_searched(tmp_path, option, section):
    text = (f"[fixed]\n{option} = 1\n" + OK if section == "fixed" else
            OK + _sample(option, distribution="choice", values=[1]))
    with pytest.raises(UsageError, match=f"option '{option}' cannot be set") as info:
        load_search_space(write(tmp_path, text))
    assert f"{section}.{option}" in str(info.value)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(UsageError, match="cannot parse") as info:
        load_search_space(write(tmp_path, "[fixed\nepochs = 3\n"))
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match="no such file"):
        load_search_space(tmp_path / "absent.toml")


def test_json_space_is_accepted(tmp_path, space):
    path = write(tmp_path, json.dumps(space.as_dict()), "space.json")
    assert load_search_space(path) == space


# --- ranking the trials ------------------------------------------------------------------------

TRIAL_SEED = 4  # trials 0-4 of this seed draw every data_augmentation choice


def make_trial(root: Path, space: SearchSpace, trial: int, validation: float | None, test: float,
               metric: str = "BA", task: str = "classification", base: str = "search",
               full_values: bool = False) -> Path:
    """A MAPS with maps.json and, unless ``validation`` is None, a summary.tsv.

    Decoys that ranking must ignore: train rows, patch-level rows and rows of the model selected
    on the loss, all ordered against the validation rows of the selected metric.
    """
    folder = root / trial_name(base, trial)
    folder.mkdir(parents=True)
    record = space.record(trial, TRIAL_SEED)
    if full_values:
        record["values"] = space.sample(trial, TRIAL_SEED)
    (folder / "maps.json").write_text(json.dumps({"options": {"task": task}, "search": record}))
    if validation is None:
        return folder
    rows = []
    for selection in ("loss", metric):
        for group, value in (("train", -validation), ("validation", validation), ("test", test)):
            for level in ("patch", "image"):  # decoys first: a missing filter would take them
                decoy = level == "patch" or (selection == "loss" and metric != "loss")
                rows.append([group, selection, level, metric, -value if decoy else value, 0.01, 5])
    frame = pd.DataFrame(rows, columns=["group", "selection", "level", "metric", "mean", "sd",
                                        "n_splits"])
    frame.to_csv(folder / "summary.tsv", sep="\t", index=False)
    return folder


@pytest.fixture
def trials(tmp_path, space) -> Path:
    root = tmp_path / "maps"
    # trial 2 is the worst on validation but by far the best on test
    for trial, (validation, test) in enumerate([(0.7, 0.6), (0.9, 0.5), (0.6, 0.99), (0.8, 0.55)]):
        make_trial(root, space, trial, validation, test, full_values=trial == 0)
    make_trial(root, space, 4, None, 0.0)
    # not trials of this search
    make_trial(root, space, 5, 0.95, 0.95, base="other")
    (root / "search-trial-07").mkdir()
    return root


def test_ranking_uses_validation_only(trials, space):
    table = summarize_trials(trials, "search")
    assert table["trial"].tolist() == [1, 3, 0, 2, 4]
    assert table["rank"].tolist() == [1, 2, 3, 4, "n/a"]
    assert table["maps"].tolist()[0] == "search-trial-001"
    assert table["BA_validation_mean"].tolist()[:4] == [0.9, 0.8, 0.7, 0.6]
    assert table["selection"].tolist()[:4] == ["BA"] * 4
    assert table["BA_test_mean"].tolist()[:4] == [0.5, 0.55, 0.6, 0.99]
    assert table["status"].tolist() == ["finished"] * 4 + ["unfinished"]
    last = table.iloc[-1]
    assert last["trial"] == 4 and math.isnan(last["BA_validation_mean"])


def test_test_results_do_not_change_the_order(tmp_path, space):
    orders = []
    for name, tests in (("a", [0.1, 0.2, 0.3, 0.4]), ("b", [0.4, 0.3, 0.2, 0.1])):
        for trial, (validation, test) in enumerate(zip([0.7, 0.9, 0.6, 0.8], tests)):
            make_trial(tmp_path / name, space, trial, validation, test)
        orders.append(summarize_trials(tmp_path / name, "search")["trial"].tolist())
    assert orders[0] == orders[1] == [1, 3, 0, 2]


def test_columns_hold_the_sampled_values(trials, space):
    table = summarize_trials(trials, "search")
    sampled = list(space.sampled)
    assert table.columns.tolist() == ["rank", "trial", "maps", "BA_validation_mean", "BA_validation_sd",
                                      *sampled, "selection", "BA_test_mean", "BA_test_sd", "status"]
    assert "epochs" not in table.columns  # fixed for every trial, even when recorded with the values
    for row in table.itertuples():
        values = space.sample(row.trial, TRIAL_SEED)
        assert row.learning_rate == values["learning_rate"]
        assert row.architecture == values["architecture"]
        assert row.data_augmentation == ("+".join(values["data_augmentation"]) or "none")
    # this seed draws both a two-item list and an empty one among these trials
    assert {"noise+affine", "none"} <= set(table["data_augmentation"])


def test_lower_is_better_for_mae(tmp_path, space):
    root = tmp_path / "maps"
    for trial, mae in enumerate([5.0, 3.0, 8.0, 4.0]):
        make_trial(root, space, trial, mae, 1.0, metric="MAE", task="regression")
    table = summarize_trials(root, "search")
    assert "MAE_validation_mean" in table.columns
    assert table["trial"].tolist() == [1, 3, 0, 2]
    assert table["MAE_validation_mean"].tolist() == [3.0, 4.0, 5.0, 8.0]


def test_falls_back_to_the_loss_selected_model(tmp_path, space):
    root = tmp_path / "maps"
    for trial, ba in enumerate([0.6, 0.8, 0.7]):
        folder = make_trial(root, space, trial, ba, 0.5)
        frame = pd.read_csv(folder / "summary.tsv", sep="\t")
        frame = frame[frame["selection"] == "loss"].copy()  # only the loss-selected model was kept
        frame.loc[frame["group"] == "validation", "mean"] = ba
        frame.to_csv(folder / "summary.tsv", sep="\t", index=False)
    table = summarize_trials(root, "search")
    assert table["trial"].tolist() == [1, 2, 0]
    assert table["selection"].tolist() == ["loss"] * 3


def test_explicit_metric_and_unknown_metric(trials):
    table = summarize_trials(trials, "search", metric="AUC")
    assert table["status"].tolist()[:4] == ["no validation AUC"] * 4
    assert (table["rank"] == "n/a").all()
    with pytest.raises(UsageError, match="foo"):
        summarize_trials(trials, "search", metric="foo")


def test_nothing_finished_is_an_error(tmp_path, space):
    root = tmp_path / "maps"
    with pytest.raises(InputMissingError) as info:
        summarize_trials(root, "search")
    assert str(root) in str(info.value) and "search" in str(info.value)
    make_trial(root, space, 0, None, 0.0)
    make_trial(root, space, 1, 0.9, 0.9, base="other")
    with pytest.raises(InputMissingError, match="1 unfinished") as info:
        summarize_trials(root, "search")
    assert str(root) in str(info.value)
