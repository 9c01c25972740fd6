"""Training and evaluation end to end: tasks × modes, resume after a kill, reruns, cluster use."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bidsapp_dl.generate import generate_dataset

from ..conftest import ROOT, run_script

TINY = ["--voxel-size", "8", "--target-shape", "24", "28", "24"]
FAST = ["--epochs", "2", "--batch-size", "4", "--learning-rate", "1e-3", "--n-splits", "2",
        "--test-size", "0.25", "--seed", "5"]


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Path:
    bids = tmp_path_factory.mktemp("train") / "bids"
    generate_dataset(bids, kind="trivial", n_subjects=12, sessions=1, seed=4, voxel_size=6.0)
    run = run_script(bids, bids / "derivatives" / "neurodl", "participant", *TINY, "--nprocs", "2")
    assert run.returncode == 0, run.stderr
    return bids


@pytest.fixture
def bids(extracted, tmp_path) -> Path:
    dest = tmp_path / "bids"
    shutil.copytree(extracted, dest)
    return dest


def out_of(bids: Path) -> Path:
    return bids / "derivatives" / "neurodl"


def outputs(maps: Path) -> dict[str, bytes]:
    """Every prediction and metric table of a MAPS."""
    return {p.relative_to(maps).as_posix(): p.read_bytes()
            for p in sorted(maps.glob("split-*/best-*/*/*.tsv"))}


def roi_mask(bids: Path, tmp_path: Path, out: Path | None = None) -> Path:
    meta = json.loads(next((out or out_of(bids)).rglob("*_desc-tensor_T1w.json")).read_text())
    mask = np.zeros(meta["Shape"], np.uint8)
    mask[6:18, 8:20, 6:18] = 1
    path = tmp_path / "label-box_mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, np.array(meta["Affine"])), path)
    return path


@pytest.mark.parametrize("task, mode, extra", [
    ("classification", "image", []),
    ("classification", "patch", ["--patch-size", "12", "--stride", "12", "--architecture",
                                 "Conv4_FC3"]),
    ("classification", "slice", ["--slice-axis", "2", "--discarded-slices", "6"]),
    ("regression", "image", ["--label", "age", "--architecture", "ResNet3D"]),
    ("regression", "slice", ["--label", "age", "--slice-axis", "1", "--discarded-slices", "8"]),
    ("reconstruction", "image", []),
    ("reconstruction", "patch", ["--patch-size", "18", "--stride", "6", "--architecture", "VAE"]),
])
def test_task_and_mode_end_to_end(bids, neurodl, tmp_path, task, mode, extra):
    selection = {"classification": ["loss", "BA"], "regression": ["loss", "MAE"],
                 "reconstruction": ["loss"]}[task]
    code, err = neurodl(bids, out_of(bids), "group", "--task", task, "--mode", mode,
                        "--maps-name", "m", *FAST, "--selection-metrics", *selection, *extra)
    assert code == 0, err
    maps = out_of(bids) / "maps" / "m"
    for split in (0, 1):
        log = read(maps / f"split-{split}/training_logs/training.tsv")
        assert list(log["epoch"]) == ["0", "1"]
        assert "train_loss" in log.columns and "validation_loss" in log.columns
        assert any((maps / f"split-{split}/training_logs/tensorboard").iterdir())
        for metric in selection:
            assert (maps / f"split-{split}/best-{metric}/model.pt").is_file()
            for group in ("train", "validation", "test"):
                levels = ["image"] + ([mode] if mode != "image" else [])
                for level in levels:
                    folder = maps / f"split-{split}/best-{metric}/{group}"
                    pred = read(folder / f"{group}_{level}_level_prediction.tsv")
                    metrics = read(folder / f"{group}_{level}_level_metrics.tsv")
                    assert list(metrics.columns) == ["metric", "value", "ci_lower", "ci_upper"]
                    assert list(pred.columns[:2]) == ["participant_id", "session_id"]
                    if level != "image":
                        assert f"{mode}_id" in pred.columns
                    n_images = len(read(maps / "groups" / (
                        f"{group}/split-{split}/data.tsv" if group != "test" else "test/data.tsv")))
                    if level == "image":
                        assert len(pred) == n_images
                    if task == "classification":
                        assert {"true_label", "predicted_label", "proba_AD", "proba_CN"} <= set(pred)
                        assert set(pred["predicted_label"]) <= {"AD", "CN"}
                        assert "BA" in set(metrics["metric"]) and "AUC" in set(metrics["metric"])
                    elif task == "regression":
                        assert set(metrics["metric"]) >= {"MAE", "RMSE", "R2", "loss"}
                        pred["predicted_label"].astype(float)
                    else:
                        assert {"MAE", "RMSE", "PSNR", "SSIM"} <= set(pred.columns)
    summary = read(maps / "summary.tsv")
    assert {"group", "selection", "level", "metric", "mean", "sd", "n_splits"} <= set(summary)
    assert set(summary[summary["metric"] == "loss"]["n_splits"]) == {"2"}
    assert set(summary["n_splits"]) <= {"0", "1", "2"}  # 0 where a metric is undefined


def test_roi_mode_on_template_space_tensors(tmp_path, neurodl):
    bids = tmp_path / "bids"
    generate_dataset(bids, kind="trivial", n_subjects=8, sessions=1, seed=6, voxel_size=8.0,
                     ras_only=True)
    out = out_of(bids)
    # minimal preprocessing centres every image on its head: no common grid for a mask
    assert neurodl(bids, out, "participant", *TINY)[0] == 0
    code, err = neurodl(bids, out, "group", "--mode", "roi", "--roi-mask", roi_mask(bids, tmp_path),
                        "--maps-name", "r", *FAST)
    assert code == 65 and "--preprocessing none" in err
    # images on one grid (as in a template space), taken as they are
    out2 = bids / "derivatives" / "grid"
    assert neurodl(bids, out2, "participant", "--preprocessing", "none")[0] == 0
    mask = roi_mask(bids, tmp_path, out2)
    code, err = neurodl(bids, out2, "group", "--mode", "roi", "--roi-mask", mask,
                        "--architecture", "Conv4_FC3", "--maps-name", "r", *FAST)
    assert code == 0, err
    pred = read(out2 / "maps/r/split-0/best-loss/test/test_roi_level_prediction.tsv")
    assert set(pred["roi_id"]) == {"0"}
    assert (out2 / "maps/r/split-0/best-loss/test/test_image_level_prediction.tsv").is_file()


def test_trivial_data_is_learnt(bids, neurodl):
    code, err = neurodl(bids, out_of(bids), "group", "--maps-name", "learn", "--epochs", "12",
                        "--batch-size", "2", "--learning-rate", "1e-3", "--n-splits", "2",
                        "--test-size", "0", "--seed", "1", "--selection-metrics", "BA")
    assert code == 0, err
    summary = read(out_of(bids) / "maps/learn/summary.tsv")
    ba = summary[(summary["group"] == "validation") & (summary["metric"] == "BA") &
                 (summary["level"] == "image")]["mean"].astype(float)
    assert float(ba.iloc[0]) >= 0.8


def test_same_command_twice_gives_identical_tables(bids, neurodl):
    for name in ("a", "b"):
        code, err = neurodl(bids, out_of(bids), "group", "--maps-name", name, *FAST,
                            "--selection-metrics", "loss", "BA", "--data-augmentation", "noise",
                            "intensity", "--sampler", "weighted")
        assert code == 0, err
    a, b = outputs(out_of(bids) / "maps/a"), outputs(out_of(bids) / "maps/b")
    assert len(a) == 2 * 2 * 3 * 2 and a == b


def test_cluster_jobs_per_split_give_the_same_maps(bids, neurodl):
    out = out_of(bids)
    assert neurodl(bids, out, "group", "--maps-name", "whole", *FAST)[0] == 0
    assert neurodl(bids, out, "group", "--stages", "split", "--maps-name", "jobs", *FAST)[0] == 0
    jobs = [subprocess.Popen([sys.executable, str(ROOT / "run.py"), str(bids), str(out), "group",
                              "--stages", "train", "--maps-name", "jobs", "--splits", str(i)],
                             stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    for job in jobs:
        assert job.wait(timeout=600) == 0, job.stderr.read()
    assert neurodl(bids, out, "group", "--stages", "evaluate", "--maps-name", "jobs")[0] == 0
    whole, split = outputs(out / "maps/whole"), outputs(out / "maps/jobs")
    assert whole and whole == split
    assert (out / "maps/jobs/summary.tsv").read_bytes() == (out / "maps/whole/summary.tsv").read_bytes()


def _rows(maps: Path, split: int) -> pd.DataFrame:
    return read(maps / f"split-{split}/training_logs/training.tsv").drop(columns="time")


def test_resume_after_kill_is_exact(bids, neurodl):
    out = out_of(bids)
    args = ["--epochs", "8", "--batch-size", "2", "--learning-rate", "1e-3", "--n-splits", "2",
            "--test-size", "0.25", "--seed", "9", "--selection-metrics", "loss", "BA",
            "--data-augmentation", "noise"]
    assert neurodl(bids, out, "group", "--maps-name", "once", *args)[0] == 0
    assert neurodl(bids, out, "group", "--stages", "split", "--maps-name", "killed", *args)[0] == 0
    log = out / "maps/killed/split-0/training_logs/training.tsv"
    job = subprocess.Popen([sys.executable, str(ROOT / "run.py"), str(bids), str(out), "group",
                            "--stages", "train", "--maps-name", "killed"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and job.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 4:  # 3 epochs done
            job.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    job.wait()
    assert job.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    done = len(read(log))
    assert 3 <= done < 8
    code, err = neurodl(bids, out, "group", "--stages", "train", "--maps-name", "killed")
    assert code == 64 and "--resume" in err
    code, err = neurodl(bids, out, "group", "--stages", "train", "evaluate", "--maps-name",
                        "killed", "--resume")
    assert code == 0, err
    assert "resuming at epoch" in err
    for split in (0, 1):
        pd.testing.assert_frame_equal(_rows(out / "maps/once", split),
                                      _rows(out / "maps/killed", split))
    assert outputs(out / "maps/once") == outputs(out / "maps/killed")


def test_group_level_errors(bids, neurodl, tmp_path):
    out = out_of(bids)
    code, err = neurodl(bids, out, "group", "--stages", "train", "--maps-name", "none")
    assert code == 66 and "--stages split" in err
    code, err = neurodl(bids, out, "group", "--maps-name", "x", *FAST, "--architecture",
                        "CNN2D")
    assert code == 64 and "Conv5_FC3" in err
    assert not (out / "maps/x").exists()  # refused before anything was written
    code, err = neurodl(bids, out, "group", "--maps-name", "y", *FAST, "--architecture",
                        "Conv5FC3")
    assert code == 64 and "did you mean" in err
    code, err = neurodl(bids, out, "group", "--maps-name", "z", *FAST, "--selection-metrics",
                        "MAE")
    assert code == 64 and "BA" in err
    code, err = neurodl(bids, out, "group", "--maps-name", "w", *FAST, "--mode", "roi")
    assert code == 64 and "--roi-mask" in err


def test_cuda_without_gpu_has_its_own_exit_code(bids, neurodl):
    import torch

    code, err = neurodl(bids, out_of(bids), "group", "--maps-name", "gpu", *FAST,
                        "--device", "cuda")
    if torch.cuda.is_available():
        assert code == 0, err
    else:
        assert code == 69 and "--gpus all" in err and "--device auto" in err
        assert not (out_of(bids) / "maps/gpu").exists()


def test_list_models(capsys):
    from bidsapp_dl.cli.main import main

    assert main(["--list-models", "--input-shape", "1", "50", "50", "50"]) == 0
    text = capsys.readouterr().out
    for name in ("Conv5_FC3", "Conv4_FC3", "ResNet3D", "SqueezeExcitationCNN", "CNN2D",
                 "AE_Conv5_FC3", "VAE", "Stride_Conv5_FC3"):
        assert name in text
    assert "1,692,372" in text or "1692372" in text


def test_ddp_with_two_processes_on_the_cpu(bids):
    """torchrun --nproc_per_node 2 (gloo): one MAPS, written once, and the model learns."""
    import os

    out = out_of(bids)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", str(ROOT / "run.py"), str(bids), str(out),
                          "group", "--maps-name", "ddp", "--n-splits", "2", "--test-size", "0.25",
                          "--epochs", "5", "--batch-size", "2", "--learning-rate", "1e-3",
                          "--seed", "1", "--architecture", "Conv4_FC3"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    maps = out / "maps/ddp"
    for split in (0, 1):
        log = pd.read_csv(maps / f"split-{split}/training_logs/training.tsv", sep="\t")
        assert list(log["epoch"]) == [0, 1, 2, 3, 4]
        assert log["validation_loss"].iloc[-1] < log["validation_loss"].iloc[0]
        assert (maps / f"split-{split}/best-loss/test/test_image_level_metrics.tsv").is_file()
    assert (maps / "summary.tsv").is_file()
    assert run.stderr.count("stage evaluate") == 1  # only rank 0 evaluates
