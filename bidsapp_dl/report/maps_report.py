"""``maps/<NAME>/report.html``: one self-contained page that shows a whole MAPS.

Every section reads files of the MAPS and shows what exists; what is missing (a split not
trained yet, a stage not run) is said, never guessed. A section that cannot be drawn shows why,
and the others are still written.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..maps.io import read_json, write_text
from ..maps.layout import TRAINING_GROUPS, MapsLayout
from . import html
from .evidence import (
    confusion,
    groups_of,
    interpretations,
    levels_of,
    read_tsv,
    roc_points,
    selections_of,
    splits_of,
)

log = logging.getLogger(__name__)
MAX_SALIENCY_SPLITS = 5
MAX_MEAN_IMAGES = 20


class Context:
    """What every section needs: the layout, maps.json, environment.json, the current command."""

    def __init__(self, layout: MapsLayout, command: list[str] | None):
        self.layout = layout
        self.maps = read_json(layout.maps_json) or {}
        self.env = read_json(layout.environment_json) or {}
        self.options = self.maps.get("options", {})
        self.task = self.options.get("task", "classification")
        self.mode = self.options.get("mode", "image")
        self.classes = list((self.maps.get("label") or {}).get("classes") or [])
        self.command = command
        self.splits = splits_of(layout, self.maps)
        self.selections = selections_of(self.options)
        self.groups = groups_of(layout)
        self.levels = levels_of(self.mode)

    @property
    def output_dir(self) -> Path:
        return self.layout.root.parent.parent


def write_maps_report(layout: MapsLayout, command: list[str] | None = None) -> Path:
    """Write ``report.html`` of the MAPS at ``layout`` (atomically); returns its path."""
    start = time.perf_counter()
    ctx = Context(layout, command)
    sections = []
    for anchor, title, builder in SECTIONS:
        try:
            body = builder(ctx)
        except Exception as exc:  # one broken file must not hide the rest of the report
            log.debug("report section %s failed", anchor, exc_info=True)
            body = html.paragraph(f"This section could not be drawn: {type(exc).__name__}: {exc}",
                                  "problem")
        sections.append((anchor, title, body))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    intro = html.paragraph(f"MAPS {layout.root} - task {ctx.task}, mode {ctx.mode} - report written "
                           f"by neurodl {__version__} on {stamp}")
    text = html.page(f"neurodl report: {layout.root.name}", sections, intro)
    write_text(layout.report_html, text)
    log.info("report: %s (%.1f s)", layout.report_html, time.perf_counter() - start)
    return layout.report_html


# --- command and options ------------------------------------------------------------------------
def _command(ctx: Context) -> str:
    if not ctx.maps:
        return html.missing("maps.json is missing or unreadable: this is not a complete MAPS "
                            "(run --stages split first).")
    out = ""
    made = ctx.env.get("command")
    if made:
        out += "<h3>The command that made this MAPS</h3>\n" + f"<pre>{html.esc(shlex.join(made))}</pre>\n"
    if ctx.command and ctx.command != made:
        out += "<h3>The latest command on this MAPS</h3>\n" + \
            f"<pre>{html.esc(shlex.join(ctx.command))}</pre>\n"
    for group in ctx.groups:
        record = read_json(ctx.layout.group_json(group)) or {}
        if record.get("command"):
            out += f"<h3>The command that added the data group '{html.esc(group)}'</h3>\n" + \
                f"<pre>{html.esc(shlex.join(record['command']))}</pre>\n"
    elsewhere = _participant_options()
    rows = [(k, json.dumps(v) if isinstance(v, (list, dict)) else v)
            for k, v in ctx.options.items() if k not in elsewhere]
    out += "<h3>Resolved options (maps.json, defaults included)</h3>\n" + html.key_values(rows, 3)
    out += html.paragraph("The participant-level options (" + ", ".join(sorted(elsewhere)) + ") do "
                          "not apply here: how the tensors were made is under Dataset and "
                          "demographics (preprocessing).")
    return out


def _participant_options() -> set[str]:
    from dataclasses import fields

    from ..cli.options import Options

    return {f.name for f in fields(Options) if f.metadata.get("group") == "participant"}


# --- data and demographics -----------------------------------------------------------------------
def _data(ctx: Context) -> str:
    data, label = ctx.maps.get("data") or {}, ctx.maps.get("label") or {}
    pairs = [("images", data.get("n_images")), ("participants", data.get("n_participants")),
             ("units (participants kept together)", data.get("n_units")),
             ("images with duplicated content", data.get("n_duplicate_images")),
             ("label column", label.get("column")), ("label source", label.get("source")),
             ("classes", ", ".join(map(str, ctx.classes)) or None),
             ("dropped labels", ", ".join(map(str, label.get("dropped") or [])) or "none"),
             ("tensor shape", json.dumps(ctx.maps.get("tensor_shape"))),
             ("preprocessing", json.dumps(ctx.maps.get("preprocessing"), sort_keys=True)),
             ("BIDS_DIR", ctx.options.get("bids_dir")), ("OUTPUT_DIR", ctx.output_dir)]
    out = html.key_values(pairs)
    out += "<h3>Demographics per split</h3>\n"
    summary = read_tsv(ctx.layout.split_summary_tsv)
    if summary is None:
        out += html.missing(f"{ctx.layout.split_summary_tsv} is missing.")
    else:
        summary["split"] = summary["split"].map(lambda s: "test" if s == -1 else s)
        out += html.table(summary, ["split", "group"])
        out += html.paragraph("age_p, sex_p, label_p: balance between train and validation "
                              "(t-test, chi-square); a small p-value flags an imbalanced split.")
    for group in ctx.groups:
        frame = read_tsv(ctx.layout.group_summary(group))
        out += f"<h3>Data group '{html.esc(group)}'</h3>\n"
        out += html.table(frame) if frame is not None else html.missing(
            f"{ctx.layout.group_summary(group)} is missing.")
    return out


# --- learning curves ----------------------------------------------------------------------------
def _training(ctx: Context) -> str:
    from . import figures

    out = ""
    metrics = ["loss"] + [m for m in ctx.selections if m != "loss"]
    for split in ctx.splits:
        path = ctx.layout.training_tsv(split)
        out += f"<h3>Split {split}</h3>\n"
        frame = read_tsv(path)
        if frame is None or frame.empty:
            out += html.missing(f"split {split} is not trained yet ({path.name} is missing): run "
                                f"--stages train --splits {split}.")
            continue
        best, rows = {}, []
        for metric in ctx.selections:
            chosen = read_json(ctx.layout.selection_json(split, metric))
            if chosen:
                best[metric] = chosen.get("epoch")
                rows.append((f"best-{metric}", f"epoch {chosen.get('epoch')}, validation "
                             f"{metric} {html.esc(chosen.get('value'))}"))
            else:
                rows.append((f"best-{metric}", "no model kept yet"))
        image = figures.learning_curves(frame, metrics, best, f"split {split}: train vs validation")
        out += html.png(image, f"learning curves of split {split}",
                        f"{len(frame)} epoch(s); dashed lines: the epochs whose weights were kept",
                        {"split": split, "epochs": len(frame)})
        out += html.key_values(rows)
    return out or html.missing("no split in this MAPS.")


# --- metrics tables -----------------------------------------------------------------------------
def _cell(row) -> str:
    value = html.esc(row.value)
    if pd.isna(row.ci_lower) and pd.isna(row.ci_upper):
        return value
    return f"{value} [{html.esc(row.ci_lower)}, {html.esc(row.ci_upper)}]"


def _metrics(ctx: Context) -> str:
    out = html.paragraph("Value [95 % bootstrap interval over participants] per split and group.")
    for selection in ctx.selections:
        for level in ctx.levels:
            rows = []
            for group in [*TRAINING_GROUPS, *ctx.groups]:
                for split in ctx.splits:
                    frame = read_tsv(ctx.layout.metrics_tsv(split, selection, group, level))
                    if frame is None:
                        continue
                    rows.append({"group": group, "split": split,
                                 **{r.metric: _cell(r) for r in frame.itertuples()}})
            out += f"<h3>best-{html.esc(selection)}, {html.esc(level)} level</h3>\n"
            if rows:
                out += html.table(pd.DataFrame(rows).fillna("n/a"), ["group", "split"])
            else:
                out += html.missing("no metrics yet: run --stages evaluate.")
    out += "<h3>Cross-validation summary (summary.tsv)</h3>\n"
    summary = read_tsv(ctx.layout.summary_tsv)
    if summary is None:
        out += html.missing("summary.tsv is missing: run --stages evaluate.")
    else:
        most = int(summary["n_splits"].max()) if len(summary) else 0
        summary["cell"] = [_summary_cell(m, sd, n, most) for m, sd, n in
                           zip(summary["mean"], summary["sd"], summary["n_splits"])]
        wide = summary.pivot_table(index=["selection", "level", "group"], columns="metric",
                                   values="cell", aggfunc="first", sort=False).reset_index()
        wide.columns.name = None
        out += html.paragraph(f"Mean ± SD over {most} split(s); (n=k): defined in k splits only.")
        out += html.table(wide.fillna("n/a"), ["selection", "level", "group"])
    return out


def _summary_cell(mean: float, sd: float, n: float, most: int) -> str:
    if pd.isna(mean):
        return "n/a"
    text = f"{html.esc(float(mean))} ± {html.esc(float(sd)) if pd.notna(sd) else 'n/a'}"
    return text + (f" (n={int(n)})" if int(n) < most else "")


# --- results figures ----------------------------------------------------------------------------
def _results(ctx: Context) -> str:
    if ctx.task == "classification":
        return _classification(ctx)
    if ctx.task == "regression":
        return _regression(ctx)
    return _reconstruction(ctx)


def _predictions(ctx: Context, selection: str, group: str) -> dict[int, pd.DataFrame]:
    found = {}
    for split in ctx.splits:
        frame = read_tsv(ctx.layout.prediction_tsv(split, selection, group, "image"))
        if frame is not None:
            found[split] = frame
    return found


def _classification(ctx: Context) -> str:
    from . import figures

    out, any_found = "", False
    for selection in ctx.selections:
        for group in [*TRAINING_GROUPS, *ctx.groups]:
            tables = _predictions(ctx, selection, group)
            if not tables:
                continue
            any_found = True
            out += f"<h3>best-{html.esc(selection)}, {html.esc(group)} (image level)</h3>\n"
            curves, aucs, notes = [], [], []
            for split, frame in tables.items():
                points = roc_points(frame, ctx.classes)
                if points is None:
                    notes.append(f"split {split}: no ROC curve (one class only, or no labels)")
                    continue
                split_curves, auc = points
                curves += [(f"split {split}{name}", fpr, tpr, a) for name, fpr, tpr, a in split_curves]
                aucs.append(f"{split}:{auc:.6f}")
            for note in notes:
                out += html.missing(note)
            out += '<div class="grid">'
            if curves:
                positive = ctx.classes[1] if len(ctx.classes) == 2 else "each class vs rest"
                image = figures.roc(curves, f"best-{selection}, {group}: positive class {positive}")
                out += html.png(image, f"ROC curves, best-{selection}, {group}",
                                f"ROC curves (positive class: {positive})",
                                {"selection": selection, "group": group, "aucs": " ".join(aucs)})
            for split, frame in tables.items():
                out += _confusion_html(frame, ctx.classes, split, selection, group)
            out += "</div>\n"
    return out if any_found else html.missing("no predictions yet: run --stages evaluate.")


def _confusion_html(frame: pd.DataFrame, classes: list[str], split: int, selection: str,
                    group: str) -> str:
    matrix = confusion(frame, classes)
    if matrix is None:
        return html.missing(f"split {split}: no known labels, no confusion matrix")
    top = max(int(matrix.to_numpy().max()), 1)
    head = "".join(f"<th>{html.esc(c)}</th>" for c in matrix.columns)
    rows = ""
    for name, counts in matrix.iterrows():
        cells = "".join(
            f'<td style="background: rgba(40, 90, 160, {0.1 + 0.7 * int(v) / top:.2f})">{int(v)}</td>'
            for v in counts)
        rows += f'<tr><th class="text">{html.esc(name)}</th>{cells}</tr>'
    attrs = (f'data-selection="{html.esc(selection)}" data-group="{html.esc(group)}" '
             f'data-split="{split}"')
    return (f'<table class="confusion" {attrs}><caption>split {split}: rows true, columns '
            f'predicted</caption><thead><tr><th class="text">true \\ predicted</th>{head}</tr>'
            f"</thead><tbody>{rows}</tbody></table>\n")


def _regression(ctx: Context) -> str:
    from . import figures

    out, any_found = "", False
    label = (ctx.maps.get("label") or {}).get("column") or "label"
    for selection in ctx.selections:
        for group in [*TRAINING_GROUPS, *ctx.groups]:
            tables = _predictions(ctx, selection, group)
            points, maes = [], []
            for split, frame in tables.items():
                true = pd.to_numeric(frame["true_label"], errors="coerce").to_numpy(dtype=float)
                predicted = frame["predicted_label"].to_numpy(dtype=float)
                known = np.isfinite(true)
                if known.any():
                    points.append((f"split {split}", true[known], predicted[known]))
                    maes.append(f"{split}:{np.mean(np.abs(predicted[known] - true[known])):.6f}")
            if not points:
                continue
            any_found = True
            out += f"<h3>best-{html.esc(selection)}, {html.esc(group)} (image level)</h3>\n"
            image = figures.scatter(points, f"best-{selection}, {group}", label)
            out += html.png(image, f"predicted vs true, best-{selection}, {group}",
                            "predicted against true values; dashed: the identity line",
                            {"selection": selection, "group": group, "maes": " ".join(maes)})
    return out if any_found else html.missing("no predictions with known labels yet: run "
                                              "--stages evaluate.")


def _reconstruction(ctx: Context) -> str:
    from . import figures
    from .evidence import reconstruct_one

    out = ""
    for selection in ctx.selections:
        for split in ctx.splits:
            if not ctx.layout.model(split, selection).is_file():
                out += html.missing(f"split {split}: no best-{selection} model yet.")
                continue
            inputs, outputs, what = reconstruct_one(ctx.layout, ctx.maps, split, selection)
            image = figures.reconstruction(inputs, outputs, f"split {split}, best-{selection}: {what}")
            out += html.png(image, f"input and reconstruction, split {split}",
                            f"split {split}, best-{selection}: {what} (top: input, bottom: output)",
                            {"split": split, "selection": selection})
            break  # one split per selection metric is enough to see what the network does
    return out or html.missing("no split in this MAPS.")


# --- interpretation -----------------------------------------------------------------------------
def _interpretation(ctx: Context) -> str:
    from . import figures
    from .evidence import load_nifti, mean_image

    found = interpretations(ctx.layout, ctx.splits, ctx.selections, [*ctx.groups])
    if not found:
        return html.missing("no saliency maps: run --stages interpret (--group-name test or a "
                            "predicted group).")
    out, means = "", {}
    for (group, method, selection), splits in found.items():
        out += f"<h3>{html.esc(method)}, best-{html.esc(selection)}, group {html.esc(group)}</h3>\n"
        if group not in means:
            means[group] = mean_image(ctx.layout, group, MAX_MEAN_IMAGES)
        background, n_images = means[group]
        for split, path in splits[:MAX_SALIENCY_SPLITS]:
            saliency = load_nifti(path)
            image = figures.overlay(background, saliency, f"split {split}: mean map over the mean "
                                    f"of {n_images} image(s)")
            out += html.png(image, f"saliency, split {split}", f"split {split}: {path.name}",
                            {"split": split, "group": group, "method": method})
        if len(splits) > MAX_SALIENCY_SPLITS:
            out += html.paragraph(f"{len(splits) - MAX_SALIENCY_SPLITS} more split(s) not shown.")
    return out


# --- leakage checks -----------------------------------------------------------------------------
def _checks(ctx: Context) -> str:
    from .evidence import split_checks

    out = "<h3>Duplicates by content</h3>\n"
    duplicates = read_tsv(ctx.layout.duplicates_tsv)
    if duplicates is None:
        out += html.missing("groups/duplicates.tsv is missing: the duplicate check did not run.")
    elif duplicates.empty:
        out += html.paragraph("Checked: no two images have identical content (stored voxels or "
                              "source file).", "ok")
    else:
        n_sets = duplicates["duplicate_set"].nunique()
        out += html.paragraph(f"Found {len(duplicates)} image(s) in {n_sets} set(s) with identical "
                              "content; their participants are kept on one side of every split.",
                              "problem")
        shown = duplicates[["duplicate_set", "participant_id", "session_id", "tensor"]].head(200)
        out += html.table(shown, ["participant_id", "session_id", "tensor"])
    out += "<h3>Splits</h3>\n"
    rows = split_checks(ctx.layout, ctx.splits)
    if rows.empty:
        out += html.missing("no split tables to check.")
    else:
        out += html.table(rows, ["check", "result"])
    transfer = ctx.options.get("transfer_from")
    reserved = ctx.options.get("reserve_test_of") or []
    if transfer or reserved:
        out += "<h3>Nested tasks</h3>\n"
        if transfer:
            out += html.paragraph(f"--transfer-from {transfer}: its training participants were "
                                  "carried into groups/train+validation.tsv and kept out of the "
                                  "test group.")
        if reserved:
            out += html.paragraph(f"--reserve-test-of {' '.join(map(str, reserved))}: their test "
                                  "participants were kept in this test group.")
    for group in ctx.groups:
        record = read_json(ctx.layout.group_json(group))
        if record is None:
            continue
        out += f"<h3>Leakage guard of data group '{html.esc(group)}'</h3>\n"
        ids, images = record.get("shared_participants") or [], record.get("shared_images") or []
        status = record.get("leak_check", "unknown")
        kind = "ok" if status == "passed" and not ids and not images else "problem"
        out += html.paragraph(f"check {status}: {len(ids)} participant(s) and {len(images)} image(s) "
                              "shared with the training data", kind)
        if ids or images:
            out += html.key_values([("shared participants", ", ".join(ids) or "none"),
                                    ("shared images", ", ".join(images) or "none")])
    return out


# --- provenance ---------------------------------------------------------------------------------
def _provenance(ctx: Context) -> str:
    env, data = ctx.env, ctx.maps.get("data") or {}
    if not env:
        out = html.missing("environment.json is missing or unreadable.")
    else:
        torch = env.get("torch") or {}
        git = env.get("git") or {}
        container = env.get("container") or {}
        pairs = [("neurodl", env.get("neurodl")), ("Python", env.get("python")),
                 ("platform", env.get("platform")), ("CPUs", env.get("cpu_count")),
                 ("torch", torch.get("version")), ("CUDA", torch.get("cuda")),
                 ("cuDNN", torch.get("cudnn")), ("GPUs", ", ".join(torch.get("gpus") or []) or "none"),
                 ("container", " ".join(f"{k}={v}" for k, v in container.items()) or "none"),
                 ("git commit", (git.get("commit") or "none") + (" (uncommitted changes)"
                                                                  if git.get("dirty") else ""))]
        out = html.key_values(pairs)
        packages = env.get("packages") or {}
        out += "<h3>Packages</h3>\n" + html.key_values(sorted(packages.items()))
    out += "<h3>Seeds and hashes</h3>\n"
    out += html.key_values([
        ("master seed", ctx.maps.get("seed")),
        ("seed drawn (no --seed given)", ctx.maps.get("seed_drawn")),
        ("labels SHA-256 (participants.tsv, sessions.tsv)", data.get("labels_sha256")),
        ("tensors SHA-256 (paths and data hashes)", data.get("tensors_sha256")),
    ])
    out += "<h3>To reproduce</h3>\n" + _reproduce(ctx)
    return out


def _reproduce(ctx: Context) -> str:
    name = ctx.layout.root.name
    bids = str(ctx.options.get("bids_dir", "BIDS_DIR"))
    config = str(ctx.layout.maps_json)
    command = ["neurodl", bids, str(ctx.output_dir), "group", "--config", config, "--maps-name",
               f"{name}-rerun"]
    out = html.paragraph("The recorded options re-run this experiment into a new MAPS (same seed, "
                         "same splits; on the CPU, identical prediction and metric tables):")
    out += f"<pre>{html.esc(shlex.join(command))}</pre>\n"
    container = (ctx.env.get("container") or {})
    if container.get("tag") and container.get("tag") != "unknown":
        docker = ["docker", "run", "--rm", "-v", f"{bids}:/data:ro", "-v", f"{ctx.output_dir}:/out",
                  f"neurodl:{container['tag']}", "/data", "/out", "group", "--config",
                  f"/out/maps/{name}/maps.json", "--maps-name", f"{name}-rerun"]
        out += html.paragraph("In the same container image:")
        out += f"<pre>{html.esc(shlex.join(docker))}</pre>\n"
    git = ctx.env.get("git") or {}
    if git.get("commit"):
        out += html.paragraph(f"From a checkout: git checkout {git['commit']}"
                              + (" (the run had uncommitted changes)" if git.get("dirty") else ""))
    return out


SECTIONS = [
    ("command", "Command and options", _command),
    ("data", "Dataset and demographics", _data),
    ("training", "Learning curves", _training),
    ("metrics", "Metrics", _metrics),
    ("results", "Results", _results),
    ("interpretation", "Interpretation", _interpretation),
    ("checks", "Duplicates and leakage checks", _checks),
    ("provenance", "Provenance", _provenance),
]
