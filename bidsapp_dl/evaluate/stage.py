"""The ``evaluate`` stage: predictions and metrics of every split's best models on every group.

For each split and selection metric, the best model predicts the train, validation and test
groups. Patch, slice and roi predictions are assembled per image by soft voting whose weights
come from the validation group only (SPEC section 4, rule 4). Metrics carry seeded bootstrap
intervals that resample whole participants.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..data import make_loader
from ..maps.weights import load_weights
from ..seeds import derive
from ..train.experiment import Experiment, check_selection_metrics, load_experiment
from ..train.passes import eval_pass, loss_function
from ..train.trainer import device_of
from .metrics import (
    CLASSIFICATION_METRICS,
    RECONSTRUCTION_METRICS,
    REGRESSION_METRICS,
    bootstrap_ci,
    classification_metrics,
    image_reconstruction_metrics,
    regression_metrics,
)
from .tables import (
    cross_validation_summary,
    metrics_table,
    prediction_table,
    reconstruction_table,
    write_tsv,
)
from .voting import sample_weights, soft_vote

log = logging.getLogger(__name__)
N_BOOTSTRAP = 1000


def _groups(exp: Experiment, split: int) -> dict[str, pd.DataFrame]:
    groups = {"train": exp.table("train", split), "validation": exp.table("validation", split)}
    if exp.layout.group_data("test").is_file():
        groups["test"] = exp.table("test")
    return groups


def predict_samples(exp: Experiment, model, table: pd.DataFrame, device,
                    root=None) -> tuple[pd.DataFrame, float]:
    """Sample-level predictions of ``model`` on the images of ``table``, and the mean loss.

    Tensors are under ``root`` (default: the MAPS's OUTPUT_DIR). Unknown labels (NaN) give
    NaN targets: the loss is then meaningless and the caller leaves metrics out.
    """
    dataset = exp.dataset(table, train=False, root=root)
    loader = make_loader(dataset, exp.opts.batch_size, train=False,
                         num_workers=exp.opts.num_workers, pin_memory=device.type == "cuda")
    recon: list[dict] = []

    def keep(batch, out):
        if exp.task == "reconstruction":
            for target, output in zip(batch["label"].numpy(), out.numpy()):
                recon.append(image_reconstruction_metrics(target, output))

    result = eval_pass(model, loader, loss_function(exp.task), exp.task, device,
                       exp.opts.amp, keep_outputs=keep)
    frame = pd.DataFrame({"image_index": result.image_index, "sample_index": result.sample_index})
    frame["participant_id"] = table["participant_id"].to_numpy()[frame["image_index"]]
    frame["session_id"] = table["session_id"].to_numpy()[frame["image_index"]]
    if exp.task == "classification":
        frame["true_label"] = result.targets.astype(int)
        for k in range(result.outputs.shape[1]):
            frame[f"proba_{k}"] = result.outputs[:, k]
    elif exp.task == "regression":
        frame["true_label"] = result.targets
        frame["predicted"] = result.outputs
    else:
        frame = frame.join(pd.DataFrame(recon))
    return frame, result.loss


def _values(task: str):
    if task == "classification":
        return lambda t, p: classification_metrics(t, p)
    if task == "regression":
        return regression_metrics
    return lambda *cols: {m: float(np.mean(c)) for m, c in zip(RECONSTRUCTION_METRICS, cols)}


def _arrays(task: str, frame: pd.DataFrame) -> tuple[np.ndarray, ...]:
    if task == "classification":
        proba = frame[[c for c in frame.columns if c.startswith("proba_")]].to_numpy()
        true = frame["true_label"].to_numpy(dtype=float)
        return (true if np.isnan(true).any() else true.astype(int)), proba
    if task == "regression":
        return frame["true_label"].to_numpy(), frame["predicted"].to_numpy()
    return tuple(frame[m].to_numpy() for m in RECONSTRUCTION_METRICS)


def _image_loss(task: str, frame: pd.DataFrame) -> float:
    """The loss of image-level predictions (cross-entropy of voted probabilities, or MSE)."""
    if task == "classification":
        true, proba = _arrays(task, frame)
        picked = np.clip(proba[np.arange(len(true)), true], 1e-12, 1.0)
        return float(-np.mean(np.log(picked)))
    if task == "regression":
        true, pred = _arrays(task, frame)
        return float(np.mean((true - pred) ** 2))
    return float(np.mean(frame["RMSE"].to_numpy() ** 2))  # the mean squared error per voxel


def _metrics(exp: Experiment, frame: pd.DataFrame, loss: float, seed: int) -> pd.DataFrame:
    arrays = _arrays(exp.task, frame)
    fn = _values(exp.task)
    values = {**fn(*arrays), "loss": loss}
    cis = bootstrap_ci(fn, arrays, n_resamples=N_BOOTSTRAP, seed=seed,
                       groups=frame["participant_id"].to_numpy())
    order = {"classification": CLASSIFICATION_METRICS, "regression": REGRESSION_METRICS,
             "reconstruction": RECONSTRUCTION_METRICS}[exp.task]
    return metrics_table(values, cis, order)


def _table(exp: Experiment, frame: pd.DataFrame, level: str) -> pd.DataFrame:
    info = frame[["participant_id", "session_id"]]
    if exp.task == "reconstruction":
        table = reconstruction_table(info, frame[list(RECONSTRUCTION_METRICS)].to_dict("records"))
        if level != "image":
            table.insert(2, f"{level}_id", frame["sample_index"].to_numpy())
        return table
    true, values = _arrays(exp.task, frame)
    sample = frame["sample_index"].to_numpy() if level != "image" else None
    return prediction_table(info, true, values, exp.task, exp.classes or None,
                            mode_column=level if level != "image" else None, sample_index=sample)


def _image_level(exp: Experiment, samples: pd.DataFrame, weights) -> pd.DataFrame:
    if exp.opts.mode == "image":
        return samples
    if exp.task == "reconstruction":
        keys = ["image_index", "participant_id", "session_id"]
        return samples.groupby(keys, sort=False)[list(RECONSTRUCTION_METRICS)].mean().reset_index()
    return soft_vote(samples, weights, exp.task)


def evaluate_split(exp: Experiment, split: int, device) -> list[pd.DataFrame]:
    """Write the predictions and metrics of one split; returns its long metric tables."""
    layout, frames = exp.layout, []
    groups = _groups(exp, split)
    for selection in exp.opts.selection_metrics:
        path = layout.model(split, selection)
        if not path.is_file():
            log.warning("split %d has no best-%s model (not trained?): skipped", split, selection)
            continue
        sample_shape = exp.dataset(groups["validation"], train=False).sample_shape
        model = exp.model(sample_shape).to(device)
        model.load_state_dict(load_weights(path, device))
        predicted = {g: predict_samples(exp, model, t, device) for g, t in groups.items()}
        weights = None
        if exp.opts.mode != "image" and exp.task != "reconstruction":
            # weights from the validation group only: the test group never shapes its own vote
            weights = sample_weights(predicted["validation"][0], exp.task,
                                     exp.opts.selection_threshold)
            write_tsv(layout.voting_weights(split, selection),
                      weights.rename("weight").rename_axis("sample_index").reset_index())
        for group, (samples, loss) in predicted.items():
            levels = {"image": (_image_level(exp, samples, weights), None)}
            if exp.opts.mode != "image":
                levels[exp.opts.mode] = (samples, loss)
            for level, (frame, level_loss) in levels.items():
                if level_loss is None:
                    level_loss = loss if exp.opts.mode == "image" else _image_loss(exp.task, frame)
                seed = derive(exp.seed, "bootstrap", split, selection, group, level)
                metrics = _metrics(exp, frame, level_loss, seed)
                write_tsv(layout.prediction_tsv(split, selection, group, level),
                          _table(exp, frame, level))
                write_tsv(layout.metrics_tsv(split, selection, group, level), metrics)
                frames.append(metrics.assign(group=group, selection=selection, level=level))
        log.info("split %d, best-%s: evaluated on %s", split, selection, ", ".join(predicted))
    return frames


def run_evaluate(opts) -> None:
    exp = load_experiment(opts)
    check_selection_metrics(exp.opts)
    device = device_of(exp.opts)
    per_split = {}
    for split in exp.splits():
        frames = evaluate_split(exp, split, device)
        if frames:
            per_split[split] = pd.concat(frames, ignore_index=True)
    # the summary covers every evaluated split of the MAPS, not only this job's
    for split in exp.layout.splits_written():
        if split not in per_split:
            tables = _read_split_metrics(exp, split)
            if tables is not None:
                per_split[split] = tables
    if per_split:
        write_tsv(exp.layout.summary_tsv, cross_validation_summary(per_split))
        _report(exp)


def _read_split_metrics(exp: Experiment, split: int) -> pd.DataFrame | None:
    frames = []
    groups = ["train", "validation"] + (["test"] if exp.layout.group_data("test").is_file() else [])
    levels = ["image"] + ([exp.opts.mode] if exp.opts.mode != "image" else [])
    for selection in exp.opts.selection_metrics:
        for group in groups:
            for level in levels:
                path = exp.layout.metrics_tsv(split, selection, group, level)
                if path.is_file():
                    frame = pd.read_csv(path, sep="\t", na_values=["n/a"])
                    frames.append(frame.assign(group=group, selection=selection, level=level))
    return pd.concat(frames, ignore_index=True) if frames else None


def _report(exp: Experiment) -> None:
    summary = pd.read_csv(exp.layout.summary_tsv, sep="\t", na_values=["n/a"])
    headline = "BA" if exp.task == "classification" else "MAE"
    group = "test" if (summary["group"] == "test").any() else "validation"
    rows = summary[(summary["group"] == group) & (summary["level"] == "image") &
                   (summary["metric"] == headline)]
    for row in rows.itertuples():
        log.info("%s %s (image level, best-%s): %.3f +/- %.3f over %d split(s)", group, headline,
                 row.selection, row.mean, 0.0 if pd.isna(row.sd) else row.sd, row.n_splits)
