"""Samplers and DataLoaders whose batches depend on (seed, epoch) only.

Design. The sampler, in the main process, decides everything random about an epoch: the order
of the samples and, when the dataset augments, one augmentation seed per draw, both from
generators seeded with (seed, epoch). Items are then asked for as ``dataset[(i, seed)]``, so a
sample's augmentation does not depend on which worker serves it, on how many workers there
are, nor on the global random state of the training process. Hence:

- epoch ``e`` gives the same batches, augmentations included, with 0 or N workers, and whether
  training ran in one go or resumed at ``e``;
- workers are persistent (started once per loader): create one loader per run and call
  ``loader.sampler.set_epoch(e)`` before each epoch, or create ``make_loader(..., epoch=e)``
  afresh; both give the same batches. (Re-creating a loader per epoch also works, at the cost
  of starting the workers again.)

``seed_worker`` still seeds ``random``, numpy and torch in each worker, for any other code that
draws random numbers there.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from bidsapp_dl.errors import UsageError

SAMPLERS = ("random", "weighted")
# Samples this large (a 1 mm image is 25 MB) are read by threads of the training process, not
# by worker processes: a worker hands each batch over through a fresh shared-memory segment,
# whose pages are faulted in on both sides, which made loading several times slower than the
# copy from the page cache itself. Small samples (patches, slices) keep worker processes,
# where Python's per-sample work runs in parallel.
THREADS_FROM_BYTES = 4 << 20
_ORDER, _AUGMENT, _WORKERS = 0, 1, 2  # independent random streams of one epoch


def epoch_generator(seed: int, epoch: int, stream: int = _ORDER) -> torch.Generator:
    """A torch generator that depends on (seed, epoch, stream) only."""
    state = np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed ``random`` and numpy from the seed torch gave this worker."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class EpochSampler(Sampler):
    """Sample order (and augmentation seeds) of one epoch, a function of (seed, epoch).

    Parameters
    ----------
    n
        Dataset length.
    kind
        "sequential", "random" (a permutation) or "weighted" (``n`` draws with replacement,
        probability proportional to ``weights``, as ``WeightedRandomSampler``).
    weights
        Per-sample weights for "weighted".
    with_seeds
        Yield ``(index, augmentation_seed)`` pairs instead of indices.
    """

    def __init__(self, n: int, kind: Literal["sequential", "random", "weighted"] = "random", *,
                 weights: np.ndarray | None = None, seed: int = 0, epoch: int = 0,
                 with_seeds: bool = False) -> None:
        if kind == "weighted" and (weights is None or len(weights) != n):
            raise UsageError("the weighted sampler needs one weight per sample")
        self.n = int(n)
        self.kind = kind
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.with_seeds = with_seeds

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration that of epoch ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def indices(self) -> torch.Tensor:
        """Dataset indices of this epoch, in order."""
        g = epoch_generator(self.seed, self.epoch, _ORDER)
        if self.kind == "random":
            return torch.randperm(self.n, generator=g)
        if self.kind == "weighted":
            return torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        return torch.arange(self.n)

    def __iter__(self) -> Iterator:
        order = self.indices().tolist()
        if not self.with_seeds:
            return iter(order)
        # one seed per draw, from its own stream: the order does not depend on augmenting
        seeds = torch.randint(0, 2**62, (self.n,), dtype=torch.int64,
                              generator=epoch_generator(self.seed, self.epoch, _AUGMENT))
        return zip(order, seeds.tolist())


def class_weights(labels: np.ndarray) -> np.ndarray:
    """Weight 1 / (number of samples of its class) for each sample: classes drawn equally."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


def make_loader(dataset, batch_size: int, *, train: bool, sampler: str = "random", seed: int = 0,
                epoch: int = 0, num_workers: int = 0, pin_memory: bool = False,
                drop_last: bool = False) -> DataLoader:
    """DataLoader over ``dataset`` whose batches depend on (``seed``, ``epoch``) only.

    ``train=True`` draws samples with ``sampler`` ("random": a permutation; "weighted": classes
    equally likely, with replacement, ``len(dataset)`` draws) and augments them when the
    dataset has an ``augment``. ``train=False`` goes through the samples in order and refuses a
    dataset that augments. With workers, they are persistent: reuse the loader across epochs
    with ``loader.sampler.set_epoch(e)``. Workers are processes for small samples and threads
    (a :class:`ThreadLoader`, same batches) for samples of ``THREADS_FROM_BYTES`` or more.
    """
    if int(batch_size) < 1:
        raise UsageError(f"batch_size must be at least 1, found {batch_size}")
    if int(num_workers) < 0:
        raise UsageError(f"num_workers must be 0 or more, found {num_workers}")
    if int(seed) < 0 or int(epoch) < 0:
        raise UsageError(f"seed and epoch must be 0 or more, found seed {seed}, epoch {epoch}")
    augments = getattr(dataset, "augment", None) is not None
    weights = None
    if not train:
        if augments:
            raise UsageError("evaluation must not augment: build the evaluation dataset "
                             "without augment")
        kind = "sequential"
    elif sampler == "random":
        kind = "random"
    elif sampler == "weighted":
        task = getattr(dataset, "task", "classification")
        if task != "classification":
            raise UsageError(f"the weighted sampler balances classes: it does not apply to "
                             f"{task}; use --sampler random")
        kind, weights = "weighted", class_weights(dataset.sample_labels())
    else:
        close = difflib.get_close_matches(str(sampler), SAMPLERS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown sampler {sampler!r}: choose one of {list(SAMPLERS)}{hint}")
    order = EpochSampler(len(dataset), kind, weights=weights, seed=seed, epoch=epoch,
                         with_seeds=train and augments)
    if int(num_workers) > 0 and _sample_bytes(dataset) >= THREADS_FROM_BYTES:
        return ThreadLoader(dataset, int(batch_size), order, int(num_workers), pin_memory,
                            drop_last)
    return DataLoader(
        dataset, batch_size=int(batch_size), sampler=order, num_workers=int(num_workers),
        pin_memory=pin_memory, drop_last=drop_last, worker_init_fn=seed_worker,
        generator=epoch_generator(seed, epoch, _WORKERS),
        persistent_workers=int(num_workers) > 0,
    )


def _sample_bytes(dataset) -> int:
    shape = getattr(dataset, "sample_shape", None)
    return int(np.prod(shape)) * 4 if shape else 0


def _pinned(batch):
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {key: _pinned(value) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_pinned(value) for value in batch)
    return batch


class ThreadLoader:
    """Batches of large samples, built ahead by ``num_workers`` threads of this process.

    Iterates like a DataLoader over the same sampler (``loader.sampler.set_epoch(e)``) and
    gives the same batches in the same order: each batch is made of ``dataset[key]`` for its
    keys, collated as a DataLoader does, and pinned when asked. Reading a sample is a read of
    its file or a copy out of a memory map (numpy and torch release the GIL), so threads read
    in parallel without the hand-over costs of worker processes; ``2 * num_workers`` batches
    are kept in flight.
    """

    def __init__(self, dataset, batch_size: int, sampler, num_workers: int,
                 pin_memory: bool = False, drop_last: bool = False) -> None:
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.num_workers, self.pin_memory, self.drop_last = num_workers, pin_memory, drop_last
        self.worker_init_fn, self.generator = None, None  # as read by distributed.shard_loader
        self._pool = None

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self) -> Iterator[list]:
        keys = []
        for key in self.sampler:
            keys.append(key)
            if len(keys) == self.batch_size:
                yield keys
                keys = []
        if keys and not self.drop_last:
            yield keys

    def _make(self, keys: list):
        from torch.utils.data import default_collate

        batch = default_collate([self.dataset[key] for key in keys])
        return _pinned(batch) if self.pin_memory else batch

    def __iter__(self):
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        if self._pool is None:  # the threads persist across epochs, like persistent workers
            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="neurodl-loader")
        batches = self._batches()
        # range first: zip stops on it without drawing one more batch from the sampler
        pending = deque(self._pool.submit(self._make, keys)
                        for _, keys in zip(range(2 * self.num_workers), batches))
        try:
            while pending:
                batch = pending.popleft().result()
                keys = next(batches, None)
                if keys is not None:
                    pending.append(self._pool.submit(self._make, keys))
                yield batch
        finally:
            for future in pending:
                future.cancel()

    def __del__(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
