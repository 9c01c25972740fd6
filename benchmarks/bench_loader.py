"""Loader throughput on stored 1 mm tensors: in the process, worker processes, worker threads.

``python bench_loader.py OUTPUT_DIR [--workers N] [--batch-size B] [--epochs E] [--repeat R]``
prints one JSON line: the best epoch's samples/s of each way of loading (the first epoch,
which fills the page cache and the maps, is left out). Every way gives the same batches; only
who reads them differs. The loop does nothing with a batch: this is the loader alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=4, help="each tensor this many times")
    args = parser.parse_args()

    import bidsapp_dl.data.loader as loader_module
    from bidsapp_dl.data.dataset import TensorDataset
    from bidsapp_dl.extract.modes import make_extractor
    from bidsapp_dl.memory import keep_freed_memory

    keep_freed_memory()  # as the group level does
    root = args.output_dir
    tensors = sorted(str(p.relative_to(root)) for p in root.rglob("*_desc-tensor_T1w.npy"))
    table = pd.DataFrame({"tensor": tensors * args.repeat})
    table["label"] = ["a", "b"] * (len(table) // 2) + ["a"] * (len(table) % 2)
    dataset = TensorDataset(root, table, make_extractor("image"), "classification")
    ways = {"in-process": (0, None), "processes": (args.workers, 1 << 62),
            "threads": (args.workers, 0)}
    result = {"samples": len(dataset), "sample_mb": dataset[0]["image"].numel() * 4 / 1e6}
    for name, (workers, threshold) in ways.items():
        if threshold is not None:
            loader_module.THREADS_FROM_BYTES = threshold
        loader = loader_module.make_loader(dataset, args.batch_size, train=True,
                                           num_workers=workers)
        rates = []
        for epoch in range(args.epochs):
            loader.sampler.set_epoch(epoch)
            start = time.perf_counter()
            n = sum(len(batch["label"]) for batch in loader)
            rates.append(n / (time.perf_counter() - start))
        result[name] = max(rates[1:])
        result[f"{name}_epochs"] = [round(r, 1) for r in rates]
        del loader
    print(json.dumps(result))


if __name__ == "__main__":
    main()
