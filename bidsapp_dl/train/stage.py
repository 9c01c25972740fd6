"""The ``train`` stage: every requested split of a MAPS, one after the other."""

from __future__ import annotations

import logging

import torch

from .experiment import check_selection_metrics, load_experiment
from .trainer import train_split

log = logging.getLogger(__name__)


def run_train(opts) -> None:
    exp = load_experiment(opts)
    check_selection_metrics(exp.opts)
    torch.use_deterministic_algorithms(exp.opts.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not exp.opts.deterministic
    if exp.opts.amp and not torch.cuda.is_available():
        log.warning("--amp works on CUDA devices only: training in float32")
    for split in exp.splits():
        log.info("training split %d of %s", split, exp.layout.root)
        train_split(exp, split)
