"""The group level: run the requested stages, in order, on one MAPS."""

from __future__ import annotations

import logging
from pathlib import Path

from .cli.options import Options
from .errors import UsageError

log = logging.getLogger(__name__)

AVAILABLE = ("split", "train", "evaluate", "predict", "interpret", "report", "search-summary")


def run_group(opts: Options, command: list[str]) -> None:
    """Run ``opts.stages`` in order (each stage reads what the ones before it wrote).

    ``command`` is the command line as typed, recorded in the MAPS.
    """
    missing = [s for s in opts.stages if s not in AVAILABLE]
    if missing:
        raise UsageError(f"stage(s) {', '.join(missing)} not available in this version of "
                         f"neurodl; available: {', '.join(AVAILABLE)} (e.g. --stages split)")
    from .memory import keep_freed_memory

    keep_freed_memory()  # every stage loops over batches of the same size
    if (opts.output_path / "maps").is_dir():
        from .maps.io import remove_stale_temporaries

        remove_stale_temporaries([opts.output_path / "maps"])
    if opts.device != "cpu" and set(opts.stages) & {"train", "evaluate", "predict", "interpret"}:
        from .train.trainer import device_of

        device_of(opts)  # an unavailable GPU is refused before any work
    search = None
    if opts.search_space and opts.trial is not None and set(opts.stages) - {"search-summary"}:
        from .search.stage import trial_options

        opts, search = trial_options(opts)
    from .train import distributed

    if distributed.world()[1] > 1:
        distributed.start("cpu" if opts.device == "cpu" else "cuda")
    try:
        _run_stages(opts, command, search)
    except BaseException:
        distributed.stop(clean=False)
        raise
    distributed.stop()
    if "report" not in opts.stages and distributed.is_main():
        _report_quietly(opts, command)
    log.info("MAPS: %s", opts.maps or opts.output_path / "maps" / opts.maps_name)


def _layout(opts: Options):
    from .maps.layout import MapsLayout

    return (MapsLayout(Path(opts.maps).expanduser().absolute()) if opts.maps
            else MapsLayout.under(opts.output_path, opts.maps_name))


def _report(opts: Options, command: list[str]) -> None:
    """``--stages report``: write maps/<NAME>/report.html; a failure fails the run."""
    from .errors import InputMissingError
    from .report.maps_report import write_maps_report

    layout = _layout(opts)
    if not layout.exists():
        raise InputMissingError(f"no MAPS at {layout.root} to report on: run --stages split "
                                "first (or check --maps-name / --maps)")
    write_maps_report(layout, command)


def _report_quietly(opts: Options, command: list[str]) -> None:
    """The report at the end of a successful run: a failure to draw it only warns."""
    layout = _layout(opts)
    if not layout.exists():  # e.g. a search summary, which has no MAPS of its own
        return
    from .report.maps_report import write_maps_report

    try:
        write_maps_report(layout, command)
    except Exception as exc:  # the stages succeeded: their results stand without the report
        log.debug("report failed", exc_info=True)
        log.warning("could not write %s (%s: %s); the results are complete; retry with "
                    "--stages report", layout.report_html, type(exc).__name__, exc)


def _run_stages(opts: Options, command: list[str], search: dict | None) -> None:
    from .train import distributed

    for stage in opts.stages:
        # with several processes (torchrun) only training is shared; rank 0 does the rest
        if stage != "train" and not distributed.is_main():
            distributed.barrier()
            continue
        log.info("stage %s, MAPS %s", stage, opts.maps_name)
        if stage == "split":
            from .split.stage import run_split

            run_split(opts, command, search)
        elif stage == "train":
            from .train.stage import run_train

            run_train(opts)
        elif stage == "evaluate":
            from .evaluate.stage import run_evaluate

            run_evaluate(opts)
        elif stage == "predict":
            from .evaluate.predict import predict_group

            predict_group(opts, command)
        elif stage == "interpret":
            from .evaluate.explain import interpret_group

            interpret_group(opts)
        elif stage == "report":
            _report(opts, command)
        elif stage == "search-summary":
            from .search.stage import run_search_summary

            run_search_summary(opts)
        if stage != "train":
            distributed.barrier()
