"""Floors: the least work each measured step has to do, run in a fresh process.

``floors.py io`` decompresses NIfTI files with nibabel (optionally also writing a tensor of the
output size per image, as the participant level must); ``floors.py compute`` trains a network on
samples already in memory (cut from the stored tensors, or random). Each prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _load(path: str) -> int:
    import nibabel as nib
    import numpy as np

    return int(np.asanyarray(nib.load(path).dataobj).size)


def _load_and_write(path: str, shape: tuple[int, int, int], folder: str) -> int:
    import numpy as np

    n = _load(path)
    target = Path(folder) / (Path(path).name.split(".")[0] + ".npy")
    # the tensor's bytes must reach the disk, as the participant level's atomic writer ensures
    with open(target, "wb") as fh:
        np.save(fh, np.zeros(shape, dtype=np.float32))
        fh.flush()
        os.fsync(fh.fileno())
    target.unlink()
    return n


def _timed_map(function, jobs: list[tuple], nprocs: int) -> float:
    start = time.perf_counter()
    if nprocs <= 1:
        for job in jobs:
            function(*job)
    else:
        with ProcessPoolExecutor(max_workers=min(nprocs, len(jobs))) as pool:
            for future in [pool.submit(function, *job) for job in jobs]:
                future.result()
    return time.perf_counter() - start


def io_floor(args: argparse.Namespace) -> dict:
    """Seconds to decompress every file, and to do so while writing one tensor per file."""
    import nibabel  # noqa: F401  (imported before timing, as the measured run has it already)
    import numpy  # noqa: F401

    result = {"seconds": _timed_map(_load, [(f,) for f in args.files], args.nprocs)}
    if args.write_shape:
        with tempfile.TemporaryDirectory(dir=args.write_dir) as folder:
            jobs = [(f, tuple(args.write_shape), folder) for f in args.files]
            result["seconds_with_write"] = _timed_map(_load_and_write, jobs, args.nprocs)
    return result


def compute_floor(args: argparse.Namespace) -> dict:
    """Seconds per epoch: the optimizer steps of the training set, the forward passes of the
    validation set, on samples already in memory, with the model the command line would build."""
    import torch

    from bidsapp_dl.extract.modes import make_extractor
    from bidsapp_dl.models import build_model

    params = {"patch": {"patch_size": args.patch_size, "stride": args.stride},
              "slice": {"axis": args.slice_axis}}.get(args.mode, {})
    extractor = make_extractor(args.mode, **params)
    shape = tuple(args.shape)
    per_image = extractor.n_samples(shape)
    sample = tuple(extractor.sample_shape(shape))
    torch.manual_seed(0)
    model = build_model(args.architecture, "classification", sample, 2, dropout=0.5)
    # the command line's defaults: Adam, learning rate 1e-4, weight decay 1e-4
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()

    def batches(n: int) -> list[int]:
        return [min(args.batch_size, n - k) for k in range(0, n, args.batch_size)]

    n_train, n_val = args.n_train * per_image, args.n_val * per_image
    train_x, val_x = _samples(args, extractor, shape, per_image, n_train, n_val)
    generator = torch.Generator().manual_seed(0)
    train_y = torch.randint(0, 2, (n_train,), generator=generator)
    val_y = torch.randint(0, 2, (n_val,), generator=generator)
    train_sizes, val_sizes = batches(n_train), batches(n_val)
    epochs = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.train()
        total = 0.0
        order = torch.randperm(n_train, generator=generator)
        for k in range(0, n_train, args.batch_size):
            # gathering a batch out of memory is the least a data loader can do
            index = order[k:k + args.batch_size]
            x, y = train_x[index], train_y[index]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        model.eval()
        with torch.no_grad():
            for k in range(0, n_val, args.batch_size):
                x, y = val_x[k:k + args.batch_size], val_y[k:k + args.batch_size]
                total += float(criterion(model(x), y))
        if not math.isfinite(total):
            raise RuntimeError("the loss is not finite")
        epochs.append(time.perf_counter() - start)
    return {"epochs": epochs, "sample_shape": list(sample), "samples_per_image": per_image,
            "train_steps": len(train_sizes), "validation_batches": len(val_sizes)}


def _samples(args, extractor, shape, per_image: int, n_train: int, n_val: int):
    """Training and validation samples, in memory: cut from stored tensors, or random."""
    import numpy as np
    import torch

    if not args.tensors:
        sample = tuple(extractor.sample_shape(shape))
        return torch.rand(n_train, *sample), torch.rand(n_val, *sample)
    wanted = args.n_train + args.n_val
    if len(args.tensors) < wanted:
        raise SystemExit(f"floors.py: {wanted} tensors needed, {len(args.tensors)} given")
    cut = []
    for path in args.tensors[:wanted]:
        volume = np.load(path)  # read whole: in memory, not mapped
        if volume.shape != shape:
            raise SystemExit(f"floors.py: {path} has shape {volume.shape}, not {shape}")
        cut += [np.array(extractor.extract(volume, i), dtype=np.float32) for i in range(per_image)]
    stacked = torch.from_numpy(np.stack(cut))
    return stacked[:n_train].clone(), stacked[n_train:].clone()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="which", required=True)
    io = sub.add_parser("io", help="decompress NIfTI files with nibabel")
    io.add_argument("files", nargs="+")
    io.add_argument("--nprocs", type=int, default=1)
    io.add_argument("--write-shape", type=int, nargs=3, default=None)
    io.add_argument("--write-dir", default=None)
    comp = sub.add_parser("compute", help="train on random tensors in memory")
    comp.add_argument("--architecture", required=True)
    comp.add_argument("--mode", choices=("image", "patch", "slice"), required=True)
    comp.add_argument("--shape", type=int, nargs=3, required=True, help="stored tensor shape")
    comp.add_argument("--n-train", type=int, required=True, help="training images")
    comp.add_argument("--n-val", type=int, required=True, help="validation images")
    comp.add_argument("--batch-size", type=int, default=8)
    comp.add_argument("--epochs", type=int, default=3)
    comp.add_argument("--patch-size", type=int, default=50)
    comp.add_argument("--stride", type=int, default=50)
    comp.add_argument("--slice-axis", type=int, default=0)
    comp.add_argument("--tensors", nargs="*", default=[],
                      help="stored tensors (.npy) to take the samples from: the first N-TRAIN "
                           "for training, the next N-VAL for validation (default: random data)")
    return parser


def steady_malloc() -> bool:
    """Fix glibc's malloc thresholds, so that memory freed after a step serves the next one.

    With its dynamic thresholds, glibc may give freed memory back to the system and fault it
    in again at every step (millions of page faults, seconds of system time per epoch),
    depending on the heap's history. A floor is the least work: it never pays for that. The
    thresholds are the ones neurodl itself sets (``bidsapp_dl.memory``), so that both sides
    allocate alike.
    """
    from bidsapp_dl.memory import keep_freed_memory

    return keep_freed_memory()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    steady = steady_malloc()
    result = io_floor(args) if args.which == "io" else compute_floor(args)
    print(json.dumps({**result, "steady_malloc": steady}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
