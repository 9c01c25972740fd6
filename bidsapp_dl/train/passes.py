"""One pass over a loader: the training step, the evaluation step, and what they collect.

A pass returns its mean loss and the per-sample outputs needed for metrics, so that training
metrics come from the training pass itself (no second pass over the training set per epoch).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..evaluate.metrics import classification_metrics, regression_metrics


@dataclass
class PassOutput:
    """Mean loss, and per sample: targets and outputs (probabilities or values)."""

    loss: float
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0))
    outputs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    image_index: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    sample_index: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    abs_error: float = 0.0        # reconstruction: sums over voxels, for MAE and RMSE
    sq_error: float = 0.0
    n_voxels: int = 0
    n: int = 0                    # samples seen

    def metrics(self, task: str) -> dict[str, float]:
        if task == "classification":
            values = classification_metrics(self.targets.astype(int), self.outputs)
        elif task == "regression":
            values = regression_metrics(self.targets, self.outputs)
        else:
            n = max(self.n_voxels, 1)
            values = {"MAE": self.abs_error / n, "RMSE": float(np.sqrt(self.sq_error / n))}
        return {"loss": self.loss, **values}


def loss_function(task: str) -> nn.Module:
    return nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()


def _compute_loss(model: nn.Module, criterion: nn.Module, task: str, out: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
    if task == "regression":
        out = out.reshape(-1)
    loss = criterion(out.float(), target)
    regularization = getattr(getattr(model, "module", model), "regularization", None)
    if task == "reconstruction" and callable(regularization):
        loss = loss + regularization()
    return loss


def _autocast(device: torch.device, amp: bool):
    if not amp or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class Collector:
    """Accumulates what a pass produced, batch by batch."""

    def __init__(self, task: str):
        self.task = task
        self.loss_sum, self.n = 0.0, 0
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in ("t", "o", "i", "s")}
        self.abs_error = self.sq_error = 0.0
        self.n_voxels = 0

    def add(self, batch: dict, out: torch.Tensor, loss: torch.Tensor) -> None:
        size = out.shape[0]
        self.loss_sum += float(loss.detach()) * size
        self.n += size
        self.parts["i"].append(batch["image_index"].numpy())
        self.parts["s"].append(batch["sample_index"].numpy())
        out = out.detach().float()
        if self.task == "classification":
            self.parts["o"].append(torch.softmax(out, dim=1).cpu().numpy())
            self.parts["t"].append(batch["label"].numpy())
        elif self.task == "regression":
            self.parts["o"].append(out.reshape(-1).cpu().numpy())
            self.parts["t"].append(batch["label"].numpy())
        else:
            diff = out.cpu() - batch["label"].float()
            self.abs_error += float(diff.abs().sum())
            self.sq_error += float((diff**2).sum())
            self.n_voxels += diff.numel()

    def result(self) -> PassOutput:
        def cat(key):
            return np.concatenate(self.parts[key]) if self.parts[key] else np.zeros(0)

        return PassOutput(self.loss_sum / max(self.n, 1), cat("t"), cat("o"), cat("i").astype(int),
                          cat("s").astype(int), self.abs_error, self.sq_error, self.n_voxels,
                          self.n)


def _progress(label: str, k: int, n: int, loss: float) -> None:
    if sys.stderr.isatty():
        end = "\n" if k == n else ""
        print(f"\r  {label} [{k}/{n}] loss {loss:.4f}", end=end, file=sys.stderr, flush=True)


def train_pass(model: nn.Module, loader, optimizer, criterion: nn.Module, task: str,
               device: torch.device, accumulation: int = 1, amp: bool = False,
               scaler=None, label: str = "train") -> PassOutput:
    """One epoch of training; gradients summed over ``accumulation`` batches per step."""
    model.train()
    collect = Collector(task)
    optimizer.zero_grad(set_to_none=True)
    n = len(loader)
    for k, batch in enumerate(loader, start=1):
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        with _autocast(device, amp):
            out = model(x)
            loss = _compute_loss(model, criterion, task, out, y)
        scaled = loss / accumulation
        (scaler.scale(scaled) if scaler else scaled).backward()
        if k % accumulation == 0 or k == n:
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        collect.add(batch, out, loss)
        _progress(label, k, n, collect.loss_sum / collect.n)
    return collect.result()


@torch.no_grad()
def eval_pass(model: nn.Module, loader, criterion: nn.Module, task: str, device: torch.device,
              amp: bool = False, keep_outputs=None) -> PassOutput:
    """One pass without gradients (model in eval mode); ``keep_outputs(batch, out)`` sees each batch."""
    model.eval()
    collect = Collector(task)
    for batch in loader:
        x = batch["image"].to(device, non_blocking=True)
        y = batch["label"].to(device, non_blocking=True)
        with _autocast(device, amp):
            out = model(x)
            loss = _compute_loss(model, criterion, task, out, y)
        collect.add(batch, out, loss)
        if keep_outputs is not None:
            keep_outputs(batch, out.detach().float().cpu())
    return collect.result()
