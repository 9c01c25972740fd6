"""The group level: run the requested stages, in order, on one MAPS."""

from __future__ import annotations

import logging

from .cli.options import Options
from .errors import UsageError

log = logging.getLogger(__name__)

AVAILABLE = ("split", "train", "evaluate", "predict", "interpret", "search-summary")


def run_group(opts: Options, command: list[str]) -> None:
    """Run ``opts.stages`` in order (each stage reads what the ones before it wrote).

    ``command`` is the command line as typed, recorded in the MAPS.
    """
    missing = [s for s in opts.stages if s not in AVAILABLE]
    if missing:
        raise UsageError(f"stage(s) {', '.join(missing)} not available in this version of "
                         f"neurodl; available: {', '.join(AVAILABLE)} (e.g. --stages split)")
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
    log.info("MAPS: %s", opts.maps or opts.output_path / "maps" / opts.maps_name)


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
        elif stage == "search-summary":
            from .search.stage import run_search_summary

            run_search_summary(opts)
        if stage != "train":
            distributed.barrier()
