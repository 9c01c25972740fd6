"""Training of one split: epochs, best models per selection metric, early stopping, checkpoints.

Every random draw of epoch ``e`` (shuffling, augmentation, dropout) comes from generators seeded
from (seed, split, e). A run resumed at epoch ``e`` therefore replays exactly what an
uninterrupted run does; the checkpoint holds the rest (weights, optimizer, scheduler,
early-stopping counter, best values, the rows of training.tsv).
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..data import make_loader
from ..errors import DeviceError, UsageError
from ..evaluate.metrics import metric_direction
from ..maps.io import write_json
from ..maps.weights import load_weights, save_weights
from ..seeds import derive, seed_everything
from . import distributed
from .experiment import Experiment
from .passes import eval_pass, loss_function, train_pass

log = logging.getLogger(__name__)


@dataclass
class State:
    """What a checkpoint restores besides the weights and optimizer."""

    epoch: int = 0                                  # next epoch to run
    best: dict[str, float] = field(default_factory=dict)
    best_loss: float = math.inf                     # early stopping
    stale: int = 0
    stopped: bool = False
    rows: list[dict] = field(default_factory=list)


def make_optimizer(opts, params):
    kind = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW, "SGD": torch.optim.SGD,
            "RMSprop": torch.optim.RMSprop}[opts.optimizer]
    extra = {"momentum": 0.9} if opts.optimizer in ("SGD", "RMSprop") else {}
    return kind(params, lr=opts.learning_rate, weight_decay=opts.weight_decay, **extra)


def make_scheduler(opts, optimizer):
    if opts.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)
    if opts.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opts.epochs)
    if opts.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(opts.epochs // 3, 1),
                                               gamma=0.1)
    return None


def device_of(opts) -> torch.device:
    if opts.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"--device {opts.device}: no CUDA device is available here (in a "
                          "container, run it with --gpus all, or apptainer --nv); use --device "
                          "auto or cpu to run on the CPU")
    if opts.device.startswith("cuda:") and int(opts.device[5:]) >= torch.cuda.device_count():
        raise DeviceError(f"--device {opts.device}: only {torch.cuda.device_count()} CUDA "
                          "device(s) are visible")
    return torch.device(opts.device)


def _improved(metric: str, value: float | None, best: float | None) -> bool:
    """Better than the best so far; the first epoch always counts, so a model always exists."""
    if value is None or math.isnan(value):
        return best is None
    if best is None or math.isnan(best):
        return True
    return value < best if metric_direction(metric) == "min" else value > best


def _save_checkpoint(path, model, optimizer, scheduler, scaler, state: State) -> None:
    payload = {
        "model": distributed.unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler else None,
        "scaler": scaler.state_dict() if scaler else None,
        "epoch": state.epoch, "best": state.best, "best_loss": state.best_loss,
        "stale": state.stale, "stopped": state.stopped, "rows": state.rows,
        "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                "numpy": np.random.get_state()[1].tolist()},
    }
    save_weights(payload, path)


def _load_checkpoint(path, model, optimizer, scheduler, scaler) -> State:
    payload = load_weights(path)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler and payload["scheduler"]:
        scheduler.load_state_dict(payload["scheduler"])
    if scaler and payload["scaler"]:
        scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["rng"]["torch"])
    return State(payload["epoch"], payload["best"], payload["best_loss"], payload["stale"],
                 payload["stopped"], payload["rows"])


def _write_log(exp: Experiment, split: int, rows: list[dict]) -> None:
    from ..evaluate.tables import write_tsv

    write_tsv(exp.layout.training_tsv(split), pd.DataFrame(rows))


def train_split(exp: Experiment, split: int) -> State:
    """Train (or resume, or skip when done) one split of the experiment."""
    opts, layout = exp.opts, exp.layout
    device = distributed.local_device(device_of(opts))
    main = distributed.is_main()
    checkpoint = layout.checkpoint(split)
    if checkpoint.exists() and not opts.resume:
        if not opts.overwrite:
            raise UsageError(f"split {split} of {layout.root} was already trained or started; "
                             "continue it with --resume, or start again with --overwrite")
        if main:
            shutil.rmtree(layout.split_dir(split))
        distributed.barrier()
    base = derive(exp.seed, "split", split)
    seed_everything(derive(base, "init"))
    train_ds = exp.dataset(exp.table("train", split), train=True)
    val_ds = exp.dataset(exp.table("validation", split), train=False)
    model = exp.model(train_ds.sample_shape)
    if opts.transfer_from and not checkpoint.exists():
        from .transfer import transfer_weights

        transfer_weights(model, opts.transfer_from, split, opts.transfer_selection, opts.freeze)
    elif opts.transfer_from and opts.freeze == "features":
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(not name.startswith("features."))
    model = model.to(device)
    if device.type == "cuda" and len(train_ds.sample_shape) == 4:
        model = model.to(memory_format=torch.channels_last_3d)  # faster 3D convolutions
    optimizer = make_optimizer(opts, [p for p in model.parameters() if p.requires_grad])
    scheduler = make_scheduler(opts, optimizer)
    use_scaler = opts.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    state = State()
    if checkpoint.exists():
        state = _load_checkpoint(checkpoint, model, optimizer, scheduler, scaler)
        log.info("split %d: resuming at epoch %d", split, state.epoch)
    if state.stopped or state.epoch >= opts.epochs:
        log.info("split %d: already trained (%d epochs)", split, state.epoch)
        return state
    criterion = loss_function(exp.task)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(layout.tensorboard_dir(split)), purge_step=state.epoch) if main \
        else None
    model = distributed.wrap(model, device)
    if opts.compile:
        model = torch.compile(model)
    pin = device.type == "cuda"
    # one loader per run, re-seeded per epoch: workers persist across epochs
    loader = distributed.shard_loader(make_loader(
        train_ds, opts.batch_size, train=True, sampler=opts.sampler, seed=base, epoch=state.epoch,
        num_workers=opts.num_workers, pin_memory=pin))
    val_loader = make_loader(val_ds, opts.batch_size, train=False, num_workers=opts.num_workers,
                             pin_memory=pin)
    try:
        while state.epoch < opts.epochs and not state.stopped:
            epoch = state.epoch
            start = time.perf_counter()
            seed_everything(derive(base, "epoch", epoch))  # dropout, VAE sampling
            loader.sampler.set_epoch(epoch)
            train = distributed.gather(train_pass(
                model, loader, optimizer, criterion, exp.task, device, opts.accumulation_steps,
                opts.amp, scaler, f"epoch {epoch}"))
            if opts.evaluate_train:
                train = eval_pass(model, make_loader(exp.dataset(exp.table("train", split), False),
                                                     opts.batch_size, train=False,
                                                     num_workers=opts.num_workers,
                                                     pin_memory=pin),
                                  criterion, exp.task, device, opts.amp)
            val = eval_pass(model, val_loader, criterion, exp.task, device, opts.amp)
            train_m, val_m = train.metrics(exp.task), val.metrics(exp.task)
            row = {"epoch": epoch, "time": round(time.perf_counter() - start, 3),
                   "learning_rate": optimizer.param_groups[0]["lr"],
                   **{f"train_{k}": v for k, v in train_m.items()},
                   **{f"validation_{k}": v for k, v in val_m.items()}}
            state.rows.append(row)
            for key, value in row.items():
                if writer is not None and key.startswith(("train_", "validation_")):
                    group, metric = key.split("_", 1)
                    writer.add_scalar(f"{metric}/{group}", value, epoch)
            for metric in opts.selection_metrics:
                value = float(val_m.get(metric, math.nan))
                if _improved(metric, value, state.best.get(metric)):
                    state.best[metric] = value
                    if main:
                        save_weights(distributed.unwrap(model).state_dict(),
                                     layout.model(split, metric))
                        write_json(layout.selection_json(split, metric),
                                   {"metric": metric, "epoch": epoch, "value": value})
            if val.loss < state.best_loss - opts.tolerance:
                state.best_loss, state.stale = val.loss, 0
            else:
                state.stale += 1
            state.stopped = bool(opts.patience and state.stale >= opts.patience)
            if scheduler is not None:
                scheduler.step(val.loss) if opts.scheduler == "plateau" else scheduler.step()
            state.epoch = epoch + 1
            if main:
                _write_log(exp, split, state.rows)
                _save_checkpoint(checkpoint, model, optimizer, scheduler, scaler, state)
            distributed.barrier()
            log.info("split %d epoch %d: train loss %.4f, validation loss %.4f%s (%.1f s)", split,
                     epoch, train.loss, val.loss,
                     "".join(f", {m} {val_m[m]:.3f}" for m in opts.selection_metrics if m != "loss"),
                     row["time"])
            if state.stopped:
                log.info("split %d: early stop after %d epochs without improvement", split,
                         state.stale)
    finally:
        if writer is not None:
            writer.close()
    return state
