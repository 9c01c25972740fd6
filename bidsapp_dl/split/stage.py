"""The ``split`` stage: labelled table, duplicates, splits, and a new MAPS that records them.

The MAPS is written in a hidden folder beside its final place and renamed into place at the end,
so a MAPS either exists whole or not at all. The same command twice gives identical files.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..cli.options import Options, resolved
from ..errors import DataError, OutputError, UsageError
from ..extract.catalog import read_catalog
from ..maps.io import write_json, write_text
from ..maps.layout import MapsLayout
from ..maps.provenance import environment, files_sha256, rows_sha256
from ..seeds import derive
from ..train.experiment import check_experiment
from .demographics import group_summary
from .duplicates import find_duplicates
from .labels import attach_labels
from .splits import Splits, _holdout, _units, make_splits, split_summary

log = logging.getLogger(__name__)

# how a run was asked for, not what it computes: left out so the same experiment gives the same file
NOT_RECORDED = ("overwrite", "config")
DATA_COLUMNS = ["participant_id", "session_id", "label", "tensor", "unit", "data_sha256",
                "source_sha256"]


def write_tsv(path: Path, frame: pd.DataFrame) -> None:
    """A BIDS-style TSV: tab-separated, n/a for missing values, LF line ends, no index."""
    write_text(path, frame.to_csv(sep="\t", index=False, na_rep="n/a", lineterminator="\n"))


def _label_files(bids_dir: Path, participants: list[str]) -> list[Path]:
    files = [bids_dir / "participants.tsv"]
    files += [bids_dir / p / f"{p}_sessions.tsv" for p in participants]
    return files


def _seeded(opts: Options) -> tuple[Options, bool]:
    if opts.seed is not None:
        return opts, False
    seed = secrets.randbelow(2**31)
    log.info("no --seed given: drew %d (recorded in maps.json)", seed)
    return replace(opts, seed=seed), True


def _data_table(table: pd.DataFrame, rows) -> pd.DataFrame:
    columns = [c for c in DATA_COLUMNS if c in table.columns]
    return table.iloc[list(rows)][columns].sort_values(["participant_id", "session_id", "tensor"])


def _write_maps(root: Path, opts: Options, seed_drawn: bool, table: pd.DataFrame, info, splits,
                summary: pd.DataFrame, duplicates: pd.DataFrame, catalog: pd.DataFrame,
                command: list[str], carried: pd.DataFrame | None, search: dict | None) -> None:
    layout = MapsLayout(root)
    shapes = sorted({tuple(s) for s in table["shape"]})
    participants = sorted(table["participant_id"].unique())
    maps = {
        "neurodl_version": __version__,
        "options": {k: v for k, v in resolved(opts).items() if k not in NOT_RECORDED},
        "seed": opts.seed,
        "seed_drawn": seed_drawn,
        "label": info.as_dict(),
        "preprocessing": json.loads(catalog["preprocessing"].iloc[0]),
        "tensor_shape": list(shapes[0]) if len(shapes) == 1 else [list(s) for s in shapes],
        "tensor_affine": np.array(table["affine"].iloc[0]).reshape(4, 4).tolist(),
        "data": {
            "n_images": len(table),
            "n_participants": len(participants),
            "n_units": int(table["unit"].nunique()),
            "n_duplicate_images": len(duplicates),
            "labels_sha256": files_sha256(_label_files(opts.bids_path, participants)),
            "tensors_sha256": rows_sha256([f"{r.tensor}\t{r.source_sha256}\t{r.data_sha256}"
                                           for r in table.itertuples()]),
        },
        "splits": {"n_splits": opts.n_splits, "n_test_images": len(splits.test),
                   "n_images": [[len(t), len(v)] for t, v in splits.folds]},
    }
    if search is not None:
        maps["search"] = search
    write_json(layout.maps_json, maps)
    write_json(layout.environment_json, environment(command))
    if splits.test:
        write_tsv(layout.group_data("test"), _data_table(table, splits.test))
        write_tsv(layout.group_summary("test"), group_summary(table.iloc[list(splits.test)]))
    for i, (train, validation) in enumerate(splits.folds):
        write_tsv(layout.split_data("train", i), _data_table(table, train))
        write_tsv(layout.split_data("validation", i), _data_table(table, validation))
    seen = sorted(set(range(len(table))) - set(splits.test))
    seen_table = _data_table(table, seen)[["participant_id", "session_id", "tensor", "unit",
                                           "data_sha256", "source_sha256"]]
    if carried is not None:  # the transfer source's training data were seen too
        seen_table = pd.concat([seen_table, carried[seen_table.columns]], ignore_index=True)
        seen_table = seen_table.drop_duplicates(["participant_id", "session_id", "tensor",
                                                 "data_sha256"])
    write_tsv(layout.train_validation_tsv, seen_table)
    write_tsv(layout.split_summary_tsv, summary.round(6))
    write_tsv(layout.duplicates_tsv, duplicates)


def _test_group(path: str) -> pd.DataFrame:
    layout = MapsLayout(Path(path).expanduser().absolute())
    if not layout.group_data("test").is_file():
        raise UsageError(f"--reserve-test-of {path}: no test group there (is it a MAPS split "
                         "with --test-size > 0?)")
    return pd.read_csv(layout.group_data("test"), sep="\t", dtype=str, keep_default_na=False)


def _touched(table: pd.DataFrame, other: pd.DataFrame | None) -> set[str]:
    """Units of ``table`` sharing a participant ID or image content with ``other``."""
    if other is None or other.empty:
        return set()
    hashes = set(other["data_sha256"]) | set(other["source_sha256"])
    hit = (table["participant_id"].isin(set(other["participant_id"]))
           | table["data_sha256"].isin(hashes) | table["source_sha256"].isin(hashes))
    return set(table.loc[hit, "unit"])


def _make_splits(table: pd.DataFrame, opts: Options, carried: pd.DataFrame | None,
                 reserved: pd.DataFrame | None = None) -> Splits:
    """The splits, with two guards for tasks that build on each other (ClinicaDL's Figure 2).

    ``carried``: what a --transfer-from source trained on; never in this test group, or the
    source's weights would have seen the test. ``reserved``: the test groups of --reserve-test-of
    MAPS (e.g. a child task split first); always in this test group, never trained on, so this
    experiment can later be a transfer source for them.
    """
    never, always = _touched(table, carried), _touched(table, reserved)
    if not never and not always:
        return make_splits(table, opts.task, opts.n_splits, opts.test_size, opts.validation_size,
                           opts.seed)
    both = sorted(never & always)
    if both:
        raise DataError(f"{', '.join(both[:10])}: in the test group of a --reserve-test-of MAPS "
                        "and in the training data of the --transfer-from MAPS at once; that "
                        "transfer would leak")
    if never:
        log.info("%d participant(s) seen by the transfer source are kept out of the test group",
                 len(never))
    if always:
        log.info("%d participant(s) of reserved test groups are kept in the test group",
                 len(always))
    units = table["unit"]
    test_units = set(always)
    free = np.flatnonzero(~units.isin(never | always).to_numpy())
    if opts.test_size > 0:
        if len(free) == 0:
            raise DataError("no participant is left for a test group drawn from those the "
                            "--transfer-from MAPS never saw; use --test-size 0")
        free_table = table.iloc[free]
        candidates = _units(free_table, opts.task)
        wanted = opts.test_size if opts.test_size >= 1 else opts.test_size * units.nunique()
        if wanted >= len(candidates):  # every participant the source never saw is tested
            log.info("the test group holds all %d participant(s) the transfer source never saw",
                     len(candidates))
            test_units |= set(candidates.index)
        else:
            _, held = _holdout(candidates, int(round(wanted)) or 1, opts.task,
                               derive(opts.seed, "guarded-test"), "test group", "the rest",
                               "--test-size", " not already placed")
            test_units |= set(held)
    test = np.flatnonzero(units.isin(test_units).to_numpy())
    rest = np.setdiff1d(np.arange(len(table)), test)
    inner = make_splits(table.iloc[rest], opts.task, opts.n_splits, 0, opts.validation_size,
                        opts.seed)
    folds = tuple((tuple(int(rest[i]) for i in tr), tuple(int(rest[i]) for i in va))
                  for tr, va in inner.folds)
    return Splits(test=tuple(int(i) for i in test), folds=folds)


def _replace_dir(new: Path, final: Path) -> None:
    """Move ``new`` onto ``final``; an old ``final`` is removed only once ``new`` is in place."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
    new.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_split(opts: Options, command: list[str], search: dict | None = None) -> MapsLayout:
    """Label, find duplicates, split, and write the MAPS; returns its layout."""
    layout = MapsLayout.under(opts.output_path, opts.maps_name)
    if layout.root.exists() and not opts.overwrite:
        if opts.resume and layout.exists():  # a run killed after its split stage, run again
            log.info("MAPS %s already split: kept (--resume)", layout.root)
            return layout
        raise UsageError(f"the MAPS {layout.root} already exists; choose another --maps-name, "
                         "run later stages with --stages train evaluate, continue an interrupted "
                         "run with --resume, or replace it with --overwrite")
    catalog = read_catalog(opts.output_path, opts.participant_label, opts.session_label)
    if opts.mode == "roi" and opts.roi_mask and catalog["affine"].nunique() > 1:
        raise DataError(
            "--roi-mask needs every tensor on one grid (images in a template space, extracted "
            "with --preprocessing none), but these tensors have "
            f"{catalog['affine'].nunique()} different grids (minimal preprocessing centres each "
            "image on its own head); use template-space derivatives, or --mode patch/slice/image")
    check_experiment(opts, tuple(catalog["shape"].iloc[0]),
                     np.array(catalog["affine"].iloc[0]).reshape(4, 4))
    units, duplicates = find_duplicates(catalog)
    catalog = catalog.assign(unit=units)
    table, info = attach_labels(catalog, opts.bids_path, opts.label, opts.task,
                                opts.drop_invalid_labels)
    table = table.reset_index(drop=True)
    opts, drawn = _seeded(opts)
    carried = reserved = None
    if opts.transfer_from:
        from ..train.transfer import source_seen

        carried = source_seen(opts.transfer_from)
    if opts.reserve_test_of:
        reserved = pd.concat([_test_group(path) for path in opts.reserve_test_of],
                             ignore_index=True)
    splits = _make_splits(table, opts, carried, reserved)
    summary = split_summary(table, splits, opts.task)
    try:
        layout.root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{layout.root.name}.", dir=layout.root.parent))
    except OSError as exc:
        raise OutputError(f"cannot create {layout.root.parent} ({exc.strerror})") from exc
    try:
        os.chmod(tmp, 0o755)
        _write_maps(tmp, opts, drawn, table, info, splits, summary, duplicates, catalog, command,
                    carried, search)
        _replace_dir(tmp, layout.root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("MAPS %s: %d images of %d participants; %d test image(s); %d split(s) of "
             "train/validation images %s", layout.root, len(table), table["participant_id"].nunique(),
             len(splits.test), len(splits.folds),
             ", ".join(f"{len(t)}/{len(v)}" for t, v in splits.folds))
    return layout
