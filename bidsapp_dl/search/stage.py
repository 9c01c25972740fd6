"""Random search on the command line: one trial per job, then a summary of all trials."""

from __future__ import annotations

import logging
from dataclasses import replace

from ..cli.options import Options, check
from ..evaluate.tables import write_tsv
from .space import load_search_space, trial_name
from .summary import summarize_trials

log = logging.getLogger(__name__)


def trial_options(opts: Options) -> tuple[Options, dict]:
    """This job's options: the trial's values over the command line's, in its own MAPS."""
    space = load_search_space(opts.search_space)
    values = space.sample(opts.trial, opts.seed)
    name = trial_name(opts.maps_name, opts.trial)
    log.info("search trial %d -> MAPS %s: %s", opts.trial, name,
             ", ".join(f"{k}={v}" for k, v in space.sampled_values(opts.trial, opts.seed).items()))
    return check(replace(opts, **values, maps_name=name)), space.record(opts.trial, opts.seed)


def run_search_summary(opts: Options) -> None:
    """Rank the finished trials of ``--maps-name`` by their validation metric (never test)."""
    maps_root = opts.output_path / "maps"
    table = summarize_trials(maps_root, opts.maps_name)
    path = maps_root / f"{opts.maps_name}-search_summary.tsv"
    write_tsv(path, table)
    best = table.iloc[0]
    log.info("%d trial(s) ranked in %s; best: trial %s (%s)", len(table), path, best["trial"],
             best["maps"])
