"""The ``train`` stage: every requested split of a MAPS, one after the other."""

from __future__ import annotations

import logging
import os

import torch

from ..errors import DataError
from ..maps.io import folder_lock
from ..memory import keep_freed_memory, release_freed_memory
from . import distributed
from .experiment import check_selection_metrics, load_experiment
from .trainer import train_split

log = logging.getLogger(__name__)


def run_train(opts) -> None:
    exp = load_experiment(opts)
    check_selection_metrics(exp.opts)
    keep_freed_memory()  # the same activation buffers every step: no faulting them in again
    release_freed_memory()  # but not what the stages before training left
    if exp.opts.deterministic:  # the call itself imports torch's compiler (~1 s): only if asked
        # cuBLAS needs a fixed workspace to be deterministic; set before CUDA starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not exp.opts.deterministic
    if exp.opts.amp and not torch.cuda.is_available():
        log.warning("--amp works on CUDA devices only: training in float32")
    if exp.opts.transfer_from:
        _check_transfer(exp)
    for split in exp.splits():
        log.info("training split %d of %s", split, exp.layout.root)
        if distributed.world()[1] > 1:  # the ranks of one job train the split together
            train_split(exp, split)
            continue
        # jobs training the same split take turns: the second resumes where the first ended
        folder = exp.layout.split_dir(split)
        folder.mkdir(parents=True, exist_ok=True)
        with folder_lock(folder, f"split {split}: another job is training it; waiting for it"):
            train_split(exp, split)


def _check_transfer(exp) -> None:
    """Refuse a transfer whose source was trained on this experiment's test participants.

    The split stage keeps the source's participants out of the test group, but the source may
    have been retrained (or replaced) since: check again before its weights are used.
    """
    import pandas as pd

    from ..split.guard import overlap
    from .transfer import source_seen

    if not exp.layout.group_data("test").is_file():
        return
    test = pd.read_csv(exp.layout.group_data("test"), sep="\t", dtype=str, keep_default_na=False)
    ids, images = overlap(test, source_seen(exp.opts.transfer_from))
    if ids or images:
        shown = ", ".join((ids + images)[:10])
        raise DataError(f"--transfer-from {exp.opts.transfer_from} was trained on participants or "
                        f"images of this experiment's test group ({shown}): transferring its "
                        "weights would leak; split again (--overwrite) or use another source")
