"""The ``predict`` stage: a trained MAPS predicts a new data group, labelled or not.

The group's tensors come from this run's OUTPUT_DIR (this dataset, or another cohort extracted
with the same preprocessing). Before anything is predicted, the group is checked against
everything the MAPS was trained on, by participant ID and by image content.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from ..bids.tables import participants_table, sessions_table
from ..errors import DataError, InputMissingError, UsageError
from ..extract.catalog import read_catalog
from ..maps.io import write_json
from ..maps.weights import load_weights
from ..seeds import derive
from ..split.demographics import group_summary
from ..split.guard import check_leakage
from ..split.labels import attach_labels
from ..train.experiment import Experiment, load_experiment
from ..train.trainer import device_of
from .stage import _image_level, _image_loss, _metrics, _table, predict_samples
from .tables import write_tsv

log = logging.getLogger(__name__)
RESERVED = ("train", "validation", "test")


def _group_name(opts, exp: Experiment) -> str:
    name = opts.group_name
    if not name:
        raise UsageError("--stages predict needs --group-name NAME (the data group to write)")
    if name in RESERVED:
        raise UsageError(f"--group-name {name} is reserved for the MAPS's own groups; choose "
                         "another name (e.g. the cohort's)")
    exp.layout.group_data(name)  # refuses names that cannot be a folder
    if exp.layout.group_data(name).exists() and not opts.overwrite:
        raise UsageError(f"the data group '{name}' already exists in {exp.layout.root}; choose "
                         "another --group-name or replace it with --overwrite")
    return name


def _check_preprocessing(exp: Experiment, catalog: pd.DataFrame, where) -> None:
    wanted = json.dumps(exp.maps["preprocessing"], sort_keys=True)
    found = catalog["preprocessing"].iloc[0]
    if found != wanted:
        raise DataError(f"the tensors in {where} were made with {found}, but the MAPS "
                        f"{exp.layout.root} was trained on {wanted}; run the participant level "
                        "again with the MAPS's settings")


def _labels(exp: Experiment, catalog: pd.DataFrame, bids_dir) -> pd.DataFrame:
    """The catalogue with the label where the group has one (NaN elsewhere)."""
    column = exp.opts.label
    table = catalog.copy()
    participants = participants_table(bids_dir)
    sessions = sessions_table(bids_dir, sorted(catalog["participant_id"].unique()))
    if exp.task == "reconstruction" or column is None or (
            column not in participants.columns and column not in sessions.columns):
        log.info("no '%s' column in this group: predictions without metrics", column)
        table["label"] = np.nan
        return table
    labelled, _ = attach_labels(catalog, bids_dir, column, exp.task)
    table = table.merge(labelled[["tensor", "label", "age", "sex"]], on="tensor", how="left")
    if exp.task == "classification":
        unseen = sorted(set(table["label"].dropna()) - set(exp.classes))
        if unseen:
            raise DataError(f"label(s) {', '.join(unseen)} in column '{column}' were never seen in "
                            f"training (classes: {', '.join(exp.classes)}); leave those "
                            "participants out (--participant-label) or map them to known classes")
    return table


def predict_group(opts, command: list[str]) -> None:
    exp = load_experiment(opts)
    name = _group_name(opts, exp)
    catalog = read_catalog(opts.output_path, opts.participant_label, opts.session_label)
    _check_preprocessing(exp, catalog, opts.output_path)
    table = _labels(exp, catalog, opts.bids_path)
    seen = pd.read_csv(exp.layout.train_validation_tsv, sep="\t", dtype=str,
                       keep_default_na=False)
    record = check_leakage(table, seen, name, opts.skip_leak_check)
    layout = exp.layout
    columns = [c for c in ("participant_id", "session_id", "label", "tensor", "data_sha256",
                           "source_sha256") if c in table.columns]
    write_tsv(layout.group_data(name), table[columns])
    write_tsv(layout.group_summary(name), group_summary(table))
    write_json(layout.group_json(name), {"output_dir": str(opts.output_path),
                                         "bids_dir": str(opts.bids_path), "command": command,
                                         "n_images": len(table), **record})
    known = table["label"].notna().to_numpy()
    model_table = table
    if exp.task != "reconstruction" and not known.all():
        # the Dataset needs a label per image: a placeholder, hidden again below
        filler = exp.classes[0] if exp.task == "classification" else 0.0
        model_table = table.assign(label=table["label"].where(known, filler))
    device = device_of(exp.opts)
    selections = opts.best or exp.opts.selection_metrics
    missing = [m for m in selections if m not in exp.opts.selection_metrics]
    if missing:
        raise UsageError(f"--best {' '.join(missing)}: the MAPS keeps best models for "
                         f"{' '.join(exp.opts.selection_metrics)}")
    for split in exp.splits():
        for selection in selections:
            _predict_one(exp, split, selection, name, model_table, known, device)
    log.info("data group '%s': %d image(s) of %d participant(s) predicted%s", name, len(table),
             table["participant_id"].nunique(),
             "" if known.any() else " (no labels: no metrics)")


def _weights(exp: Experiment, split: int, selection: str):
    if exp.opts.mode == "image" or exp.task == "reconstruction":
        return None
    path = exp.layout.voting_weights(split, selection)
    if not path.is_file():
        raise InputMissingError(f"{path} is missing: run --stages evaluate on the MAPS first (the "
                                "image-level vote is weighted by validation results)")
    weights = pd.read_csv(path, sep="\t")
    return weights.set_index("sample_index")["weight"]


def _predict_one(exp: Experiment, split: int, selection: str, name: str, table: pd.DataFrame,
                 known: np.ndarray, device) -> None:
    path = exp.layout.model(split, selection)
    if not path.is_file():
        raise InputMissingError(f"{path} is missing: train split {split} first")
    samples, _ = predict_samples(exp, _load(exp, path, table, device), table, device,
                                 root=exp.opts.output_path)
    if exp.task != "reconstruction":
        samples.loc[~known[samples["image_index"].to_numpy()], "true_label"] = np.nan
    levels = {"image": _image_level(exp, samples, _weights(exp, split, selection))}
    if exp.opts.mode != "image":
        levels[exp.opts.mode] = samples
    for level, frame in levels.items():
        write_tsv(exp.layout.prediction_tsv(split, selection, name, level), _table(exp, frame, level))
        labelled = frame if exp.task == "reconstruction" else frame[frame["true_label"].notna()]
        if len(labelled):
            seed = derive(exp.seed, "bootstrap", split, selection, name, level)
            write_tsv(exp.layout.metrics_tsv(split, selection, name, level),
                      _metrics(exp, labelled, _image_loss(exp.task, labelled), seed))


def _load(exp: Experiment, path, table: pd.DataFrame, device):
    sample_shape = exp.dataset(table.head(1), train=False, root=exp.opts.output_path).sample_shape
    model = exp.model(sample_shape).to(device)
    model.load_state_dict(load_weights(path, device))
    return model
