#!/usr/bin/env python3
"""neurodl benchmarks: each measure beside a floor measured in the same run.

``python benchmarks/run.py [--quick] [--out DIR] [--only SECTION...] [--keep-data] [--time-limit S]``

Writes ``DIR/results.tsv`` (measure, value, unit, floor, ratio, target, verdict), ``DIR/details.json``
and the output of every command under ``DIR/logs/``; prints the table. Without ``--out``, DIR is a
new temporary folder. Exit status 1 when a target fails or a section could not run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import bench_data
import bench_procs
from bench_procs import PYTHON, REPO, RUN_PY, log_events, neurodl, when

SECTIONS = ("participant", "loader", "training", "startup", "demo")
# the participant level's default grid (1 mm, 169 x 208 x 179): the tensor it writes per image
DEFAULT_TARGET_SHAPE = (169, 208, 179)


@dataclass(frozen=True)
class Plan:
    """Sizes of everything the benchmarks run."""

    participant_images: int = 12
    participant_nprocs: tuple[int, ...] = (1, 2)
    participant_repeats: int = 5
    loader_images: int = 8
    train_subjects: int = 40
    train_voxel: float = 2.0
    train_shape: tuple[int, int, int] = (64, 80, 64)
    train_epochs: int = 7
    batch_size: int = 8
    patch_size: int = 32
    startup_counts: tuple[int, int] = (100, 1000)
    startup_base: int = 20
    startup_voxel: float = 4.0
    startup_shape: tuple[int, int, int] = (32, 40, 32)
    startup_architecture: str = "Conv4_FC3"
    demo: bool = True


QUICK = Plan(participant_images=4, participant_repeats=1, loader_images=4, train_subjects=10, train_voxel=4.0,
             train_shape=(32, 40, 32), train_epochs=3, patch_size=16, startup_base=10,
             startup_voxel=8.0, startup_shape=(16, 20, 16), demo=False)

# mode, architecture, ratio target against the compute floor
TRAINING_MODES = (("image", "Conv5_FC3", 1.15), ("patch", "Conv4_FC3", 1.15), ("slice", "CNN2D", 1.3))
PARTICIPANT_TARGET = 1.5
STARTUP_TARGET_S = 5.0
RSS_TARGET = 1.2


@dataclass
class Row:
    """One line of results.tsv."""

    measure: str
    value: float | None
    unit: str
    floor: float | None = None
    ratio: float | None = None
    target: str = ""
    verdict: str = "info"


@dataclass
class Context:
    plan: Plan
    work: Path
    logs: Path
    details: dict = field(default_factory=dict)


def _verdict(number: float, limit: float) -> str:
    return "PASS" if number <= limit else "FAIL"


def _floor(kind: str, args: list, name: str, ctx: Context) -> dict:
    done = bench_procs.run([PYTHON, str(bench_procs.HERE / "floors.py"), kind, *map(str, args)],
                           name, ctx.logs)
    result = json.loads(done.stdout.read_text().strip().splitlines()[-1])
    return {**result, "process": bench_procs.cpu_usage(done)}


def _group_args(maps: str, mode: str, architecture: str, epochs: int, batch_size: int) -> list:
    return ["group", "--stages", "split", "train", "--maps-name", maps, "--task", "classification",
            "--label", "diagnosis", "--mode", mode, "--architecture", architecture,
            "--n-splits", 1, "--validation-size", 0.2, "--test-size", 0, "--epochs", epochs,
            "--batch-size", batch_size, "--seed", 1, "--device", "cpu"]


def _split_sizes(n_images: int) -> tuple[int, int]:
    """Training and validation images of ``--n-splits 1 --validation-size 0.2 --test-size 0``."""
    n_val = math.ceil(round(0.2 * n_images, 9))  # fractions round up, as the split stage does
    return n_images - n_val, n_val


def _tsv_column(path: Path, column: str) -> list[str]:
    with open(path, encoding="utf-8", newline="") as fh:
        return [row[column] for row in csv.DictReader(fh, delimiter="\t")]


# 1. participant level --------------------------------------------------------------------------
def participant_level(ctx: Context) -> list[Row]:
    """Images/s of the extraction against decompressing the same files, same processes."""
    plan, root = ctx.plan, ctx.work / "participant"
    start = time.perf_counter()
    files = bench_data.generate(root / "bids", plan.participant_images, 1.2, kind="shepplogan")
    info = ctx.details.setdefault("participant", {"generate_s": time.perf_counter() - start})
    n = len(files)
    rows = []
    for nprocs in plan.participant_nprocs:
        runs = []
        for rep in range(plan.participant_repeats):
            # floor and command alternate, so that a busy spell of the machine hits both
            floor = _floor("io", ["--nprocs", nprocs, "--write-shape", *DEFAULT_TARGET_SHAPE,
                                  "--write-dir", root, *files], f"floor-io-n{nprocs}-{rep}", ctx)
            out = root / f"out-n{nprocs}-{rep}"
            done = neurodl([root / "bids", out, "participant", "--nprocs", nprocs],
                           f"participant-n{nprocs}-{rep}", ctx.logs)
            events = log_events(out, done.pid)
            finished = [m for _, m in events if m.startswith("participant level done")]
            if not finished or f": {n} extracted" not in finished[0]:
                raise RuntimeError(f"participant level did not extract {n} images: {finished}")
            span = when(events, r"participant level done") - when(events, r"image\(s\) selected")
            runs.append({"extraction_s": span, "whole_run_s": done.wall,
                         "floor_read_s": floor["seconds"],
                         "floor_read_write_s": floor["seconds_with_write"]})
            shutil.rmtree(out)
        info[f"nprocs={nprocs}"] = runs
        best = {k: min(r[k] for r in runs) for k in runs[0]}
        read, extract = best["floor_read_s"], best["extraction_s"]
        rows.append(Row(f"participant --nprocs {nprocs}: extraction", n / extract, "images/s",
                        n / read, extract / read, f"<={PARTICIPANT_TARGET}x",
                        _verdict(extract / read, PARTICIPANT_TARGET)))
        rows.append(Row(f"participant --nprocs {nprocs}: whole run", n / best["whole_run_s"],
                        "images/s", n / read, best["whole_run_s"] / read))
        rows.append(Row(f"participant --nprocs {nprocs}: vs read+write floor", n / extract,
                        "images/s", n / best["floor_read_write_s"],
                        extract / best["floor_read_write_s"]))
    return rows


# 1b. loader ------------------------------------------------------------------------------------
def loader(ctx: Context) -> list[Row]:
    """Samples/s of the loader on 1 mm tensors (25 MB): in the process, 2 processes, 2 threads."""
    plan, root = ctx.plan, ctx.work / "loader"
    bench_data.generate(root / "bids", plan.loader_images, 1.2, kind="shepplogan", seed=3)
    out = root / "out"
    neurodl([root / "bids", out, "participant", "--nprocs", 2], "loader-participant", ctx.logs)
    done = bench_procs.run([PYTHON, str(bench_procs.HERE / "bench_loader.py"), str(out),
                            "--workers", "2"], "loader", ctx.logs)
    result = json.loads(done.stdout.read_text().strip().splitlines()[-1])
    ctx.details["loader"] = result
    base = result["in-process"]
    size = f"{result['sample_mb']:.0f} MB samples"
    return [Row(f"loader, {size}, in the training process", base, "samples/s"),
            Row(f"loader, {size}, 2 worker processes", result["processes"], "samples/s", base,
                base / result["processes"]),
            Row(f"loader, {size}, 2 worker threads (chosen)", result["threads"], "samples/s",
                base, base / result["threads"])]


# 2. training -----------------------------------------------------------------------------------
def training(ctx: Context) -> list[Row]:
    """Seconds per epoch of the command line against training on tensors in memory."""
    plan, root = ctx.plan, ctx.work / "training"
    bids, out = root / "bids", root / "bids" / "derivatives" / "neurodl"
    bench_data.generate(bids, plan.train_subjects, plan.train_voxel, kind="trivial", seed=1)
    neurodl([bids, out, "participant", "--nprocs", 2, "--voxel-size", plan.train_voxel,
             "--target-shape", *plan.train_shape, "--skip-bids-validation"],
            "training-participant", ctx.logs)
    tensors = sorted(out.glob("sub-*/anat/*_desc-tensor_T1w.npy"))
    info = ctx.details.setdefault("training", {})
    rows = []
    for mode, architecture, limit in TRAINING_MODES:
        extra = {"patch": ["--patch-size", plan.patch_size, "--stride", plan.patch_size],
                 "slice": ["--slice-axis", 0]}.get(mode, [])
        maps = f"bench-{mode}"
        # the samples of these images, not random ones: on the CPU the speed of a network can
        # depend on the values it computes with (random floors ran up to 25 % slower)
        floor_args = ["--architecture", architecture, "--mode", mode, "--shape", *plan.train_shape,
                      "--batch-size", plan.batch_size, "--patch-size", plan.patch_size,
                      "--stride", plan.patch_size, "--slice-axis", 0, "--tensors", *tensors]
        # the floor runs before and after the command, half of the measured epochs each, so
        # that a busy spell of the machine weighs on both sides alike
        floor_epochs = 1 + plan.train_epochs // 2
        n_train, n_val = _split_sizes(plan.train_subjects)
        before = _floor("compute", [*floor_args, "--n-train", n_train, "--n-val", n_val,
                                    "--epochs", floor_epochs], f"floor-compute-{mode}-0", ctx)
        done = neurodl([bids, out, *_group_args(maps, mode, architecture, plan.train_epochs,
                                                plan.batch_size), *extra],
                       f"training-{mode}", ctx.logs)
        layout = out / "maps" / maps
        epochs = [float(t) for t in _tsv_column(
            layout / "split-0" / "training_logs" / "training.tsv", "time")]
        sizes = (len(_tsv_column(layout / "groups" / g / "split-0" / "data.tsv", "tensor"))
                 for g in ("train", "validation"))
        if tuple(sizes) != (n_train, n_val):
            raise RuntimeError(f"the split is not {n_train}/{n_val} images: the floor would "
                               "not do the same steps")
        after = _floor("compute", [*floor_args, "--n-train", n_train, "--n-val", n_val,
                                   "--epochs", floor_epochs], f"floor-compute-{mode}-1", ctx)
        # the first epoch of each run warms up (allocator, kernels, page cache)
        floors = before["epochs"][1:] + after["epochs"][1:]
        measured, floor_s = min(epochs[1:]), min(floors)
        info[mode] = {"architecture": architecture, "epochs_s": epochs,
                      "floor_epochs_s": [before["epochs"], after["epochs"]],
                      "median_ratio": statistics.median(epochs[1:]) / statistics.median(floors),
                      "train_images": n_train, "validation_images": n_val,
                      "sample_shape": before["sample_shape"],
                      "samples_per_image": before["samples_per_image"],
                      "train_steps": before["train_steps"],
                      # many page faults and much system time: memory given back to the
                      # system and taken again at every step
                      "process": bench_procs.cpu_usage(done),
                      "floor_processes": [before["process"], after["process"]]}
        rows.append(Row(f"train {mode} ({architecture}, {before['train_steps']} steps/epoch)",
                        measured,
                        "s/epoch", floor_s, measured / floor_s, f"<={limit}x",
                        _verdict(measured / floor_s, limit)))
    return rows


# 3, 4. group start-up and memory ---------------------------------------------------------------
def startup_memory(ctx: Context) -> list[Row]:
    """Seconds to the first training step, and peak RSS, with 100 and 1,000 stored images."""
    plan, root = ctx.plan, ctx.work / "startup"
    base = root / "base"
    bench_data.generate(base, plan.startup_base, plan.startup_voxel, kind="trivial", seed=2)
    neurodl([base, base / "derivatives" / "neurodl", "participant", "--nprocs", 2,
             "--voxel-size", plan.startup_voxel, "--target-shape", *plan.startup_shape,
             "--skip-bids-validation"], "startup-participant", ctx.logs)
    start = time.perf_counter()
    bids = root / "bids"
    outputs = bench_data.replicate(base, base / "derivatives" / "neurodl", bids,
                                   plan.startup_counts)
    info = ctx.details.setdefault("startup", {"replicate_s": time.perf_counter() - start})
    measured = {}
    for count in sorted(outputs):
        stamp = root / f"first-step-{count}.txt"
        args = _group_args("startup", "image", plan.startup_architecture, 1, plan.batch_size)
        done = bench_procs.run([PYTHON, str(bench_procs.HERE / "probe.py"), str(stamp),
                                str(RUN_PY), str(bids), str(outputs[count]), *map(str, args)],
                               f"startup-{count}", ctx.logs, sample_rss=True)
        first_step = float(stamp.read_text())
        events = log_events(outputs[count], done.pid)
        phases = {
            "to_first_log_line_s": events[0][0] - done.started,
            "split_stage_s": when(events, r"^stage train") - when(events, r"^stage split"),
            "train_stage_to_first_step_s": first_step - when(events, r"^stage train"),
            "training_split_to_first_step_s": first_step - when(events, r"^training split 0"),
        }
        measured[count] = {"startup_s": first_step - done.started, "maxrss_mib": done.maxrss_mib,
                           "sampled_peaks_mib": done.peaks_mib, "phases": phases,
                           "process": bench_procs.cpu_usage(done)}
    info.update({str(k): v for k, v in measured.items()})
    small, large = sorted(measured)
    rows = [
        Row(f"group start-up, {large} images", measured[large]["startup_s"], "s", None, None,
            f"<={STARTUP_TARGET_S:g} s", _verdict(measured[large]["startup_s"], STARTUP_TARGET_S)),
        Row(f"group start-up, {small} images", measured[small]["startup_s"], "s"),
    ]
    rss_small, rss_large = measured[small]["maxrss_mib"], measured[large]["maxrss_mib"]
    rows.append(Row(f"peak RSS, training {large} vs {small} images", rss_large, "MiB", rss_small,
                    rss_large / rss_small, f"<={RSS_TARGET}x", _verdict(rss_large / rss_small,
                                                                        RSS_TARGET)))
    # the kernel's peak does not say what grew: anonymous memory, or mapped tensor files
    for key, what in (("RssAnon", "anonymous"), ("RssFile", "file-backed")):
        small_mib = measured[small]["sampled_peaks_mib"].get(key)
        large_mib = measured[large]["sampled_peaks_mib"].get(key)
        if small_mib and large_mib:
            rows.append(Row(f"  of which {what} (sampled peak)", large_mib, "MiB", small_mib,
                            large_mib / small_mib))
    return rows


# 5. end to end ---------------------------------------------------------------------------------
def demo_commands(demo_dir: Path) -> list[str]:
    """The shell commands of the Makefile's ``demo`` recipe, with this Python and ``demo_dir``."""
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^demo:[^\n]*\n((?:\t[^\n]*\n?)+)", text, flags=re.M)
    if not match:
        raise RuntimeError("no demo target in the Makefile")
    recipe = re.sub(r"\\\n\s*", " ", match.group(1))
    venv = Path(PYTHON).parent.parent
    values = {"VENV": str(venv), "PY": PYTHON, "DEMO": str(demo_dir)}
    commands = []
    for line in recipe.splitlines():
        line = line.strip().lstrip("@")
        if not line or line.startswith("echo"):
            continue
        line = re.sub(r"\$\((\w+)\)", lambda m: values.get(m.group(1), m.group(0)), line)
        if "$(" in line:
            raise RuntimeError(f"unknown make variable in the demo recipe: {line}")
        commands.append(line.replace("$$", "$"))
    return commands


def end_to_end(ctx: Context) -> list[Row]:
    """Wall time of ``make demo``'s commands (generate, participant, group, accuracy)."""
    steps = []
    for k, command in enumerate(demo_commands(ctx.work / "demo")):
        done = bench_procs.run(["bash", "-c", command], f"demo-{k}", ctx.logs, cwd=REPO,
                               timeout=1200)
        steps.append({"command": command[:80], "wall_s": done.wall,
                      "stdout": done.stdout.read_text().strip()[-200:]})
    ctx.details["demo"] = steps
    rows = [Row("demo end to end (make demo)", sum(s["wall_s"] for s in steps), "s")]
    names = ("generate", "participant", "group")
    for name, step in zip(names, steps):
        rows.append(Row(f"demo: {name}", step["wall_s"], "s"))
    accuracy = re.search(r"accuracy[^:]*: ([0-9.]+)", steps[-1]["stdout"]) if steps else None
    if accuracy:
        rows.append(Row("demo test balanced accuracy", float(accuracy.group(1)), "BA"))
    return rows


# table -----------------------------------------------------------------------------------------
def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def write_results(rows: list[Row], path: Path) -> None:
    lines = ["measure\tvalue\tunit\tfloor\tratio\ttarget\tverdict"]
    for r in rows:
        cells = [r.measure, _fmt(r.value), r.unit, _fmt(r.floor), _fmt(r.ratio), r.target,
                 r.verdict]
        lines.append("\t".join(cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def print_table(rows: list[Row]) -> None:
    table = [("measure", "value", "floor", "ratio", "target", "verdict")]
    for r in rows:
        value = f"{_fmt(r.value)} {r.unit}".strip()
        floor = f"{_fmt(r.floor)} {r.unit}" if r.floor is not None else ""
        ratio = f"{_fmt(r.ratio)}x" if r.ratio is not None else ""
        table.append((r.measure, value, floor, ratio, r.target, r.verdict))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for k, row in enumerate(table):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="neurodl benchmarks against floors measured "
                                                 "in the same run")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for results and data (default: a new temporary folder)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=None,
                        help="run these sections only (default: all; --quick: all but demo)")
    parser.add_argument("--keep-data", action="store_true", help="keep the generated data")
    parser.add_argument("--time-limit", type=float, default=570, metavar="S",
                        help="stop commands and skip sections after S seconds (default: "
                             "%(default)s); a busy machine can slow everything several times")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    out = (args.out.absolute() if args.out else
           Path(tempfile.mkdtemp(prefix="neurodl-bench-")))
    work = out / "data"
    if work.exists():
        shutil.rmtree(work)
    ctx = Context(plan, work, out / "logs")
    ctx.details["plan"] = {k: getattr(plan, k) for k in plan.__dataclass_fields__}
    sections = {"participant": participant_level, "loader": loader, "training": training,
                "startup": startup_memory, "demo": end_to_end}
    # --quick leaves the demo out unless asked for by name
    only = args.only or [s for s in SECTIONS if plan.demo or s != "demo"]
    print(f"neurodl benchmarks ({'quick' if args.quick else 'full'}), results in {out}",
          flush=True)
    started = time.perf_counter()
    bench_procs.deadline = time.monotonic() + args.time_limit
    rows: list[Row] = []
    for name in only:
        t0 = time.perf_counter()
        print(f"- {name} ...", end=" ", flush=True)
        load = os.getloadavg()[0]
        if time.monotonic() >= bench_procs.deadline:
            print("skipped (time limit)", flush=True)
            rows.append(Row(f"{name}: skipped (time limit)", None, "", verdict="ERROR"))
            continue
        try:
            rows += sections[name](ctx)
            # other work on the machine shows here: figures of a busy spell are rougher
            ctx.details.setdefault("load_average", {})[name] = [load, os.getloadavg()[0]]
            print(f"{time.perf_counter() - t0:.0f} s (load average {load:.1f} before, "
                  f"{os.getloadavg()[0]:.1f} after)", flush=True)
        except Exception as exc:  # one section failing must not lose the others' figures
            print(f"failed: {exc}", flush=True)
            ctx.details.setdefault("errors", {})[name] = traceback.format_exc()
            rows.append(Row(f"{name}: could not run ({type(exc).__name__})", None, "",
                            verdict="ERROR"))
    total = time.perf_counter() - started
    ctx.details["total_s"] = total
    write_results(rows, out / "results.tsv")
    (out / "details.json").write_text(json.dumps(ctx.details, indent=2, default=str) + "\n",
                                      encoding="utf-8")
    if not args.keep_data:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(rows)
    print(f"\ntotal {total:.0f} s; {out / 'results.tsv'}")
    return 1 if any(r.verdict in ("FAIL", "ERROR") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
