"""Several processes (GPUs or nodes) training one split with DDP, launched by ``torchrun``.

Every rank runs the same command. Only rank 0 writes (the MAPS, logs, checkpoints); the other
ranks wait for it where it matters. Each rank trains on its shard of the epoch's sample order,
gradients are averaged by DDP, and the outputs of the training pass are gathered so that every
rank computes the same metrics and takes the same decisions (best model, early stopping).
"""

from __future__ import annotations

import logging
import math
import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

log = logging.getLogger(__name__)


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return world()[0] == 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def start(device_kind: str) -> None:
    """Join the process group when launched by torchrun with several processes."""
    rank, size = world()
    if size > 1 and not active():
        backend = "nccl" if device_kind == "cuda" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        log.info("rank %d of %d (%s)", rank, size, backend)


def stop(clean: bool = True) -> None:
    """Leave the process group (after the others, unless this rank is failing)."""
    if active():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def local_device(device: torch.device) -> torch.device:
    """cuda -> this rank's GPU (LOCAL_RANK); anything else unchanged."""
    if device.type == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


class Shard(Sampler):
    """This rank's share of another sampler's order (padded by wrapping so all ranks match)."""

    def __init__(self, base):
        self.base = base
        self.rank, self.size = world()

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.base) / self.size)

    def __iter__(self):
        items = list(iter(self.base))
        total = len(self) * self.size
        items += items[: total - len(items)]
        return iter(items[self.rank:total:self.size])


def shard_loader(loader: DataLoader) -> DataLoader:
    """The same loader, over this rank's shard (unchanged with one process)."""
    if not active():
        return loader
    from ..data.loader import ThreadLoader

    if isinstance(loader, ThreadLoader):
        return ThreadLoader(loader.dataset, loader.batch_size, Shard(loader.sampler),
                            loader.num_workers, loader.pin_memory, loader.drop_last)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=Shard(loader.sampler),
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      drop_last=loader.drop_last, worker_init_fn=loader.worker_init_fn,
                      generator=loader.generator, persistent_workers=loader.num_workers > 0)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The network itself, out of DDP and torch.compile wrappers (whose state dicts differ)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def gather(result):
    """The training pass of every rank, merged (so that every rank sees the same metrics)."""
    if not active():
        return result
    import numpy as np

    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, result)
    n = sum(p.n for p in parts)
    merged = type(result)(
        loss=sum(p.loss * p.n for p in parts) / max(n, 1),
        targets=np.concatenate([p.targets for p in parts]),
        outputs=np.concatenate([p.outputs for p in parts]),
        image_index=np.concatenate([p.image_index for p in parts]),
        sample_index=np.concatenate([p.sample_index for p in parts]),
        abs_error=sum(p.abs_error for p in parts), sq_error=sum(p.sq_error for p in parts),
        n_voxels=sum(p.n_voxels for p in parts), n=n)
    return merged
