"""The visual reports: maps/<NAME>/report.html and the participant level's qc.html.

Both pages are rendered with headless Chromium, as a user would open them, and their figures
are checked against the tables they are drawn from.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bidsapp_dl.cli.main import main
from bidsapp_dl.generate import generate_dataset
from bidsapp_dl.report.qc import mosaic_path

from ..conftest import validation_errors

TINY = ["--voxel-size", "8", "--target-shape", "24", "28", "24"]
TRAIN = ["--epochs", "3", "--batch-size", "2", "--learning-rate", "1e-3", "--n-splits", "2",
         "--test-size", "0.25", "--seed", "5", "--selection-metrics", "loss", "BA"]
ONE_SPLIT = ["--epochs", "1", "--batch-size", "4", "--n-splits", "1", "--test-size", "0.25",
             "--seed", "5"]
SECTIONS = ["command", "data", "training", "metrics", "results", "interpretation", "checks",
            "provenance"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert found, "headless Chromium renders the reports in these tests: apt-get install chromium"
    return found


def render(page: Path, out: Path, height: int = 3000) -> np.ndarray:
    """``page`` rendered by headless Chromium, as a greyscale array."""
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                              "--disable-background-networking", "--disable-component-update",
                              "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                              f"--screenshot={out}", f"--window-size=1200,{height}",
                              page.resolve().as_uri()],
                             capture_output=True, text=True, timeout=180)
    assert out.is_file(), run.stderr[-2000:]
    return np.asarray(Image.open(out).convert("L"), dtype=float)


def assert_not_blank(pixels: np.ndarray) -> None:
    assert pixels.var() > 100, "the rendered page is blank"
    assert (pixels < 200).mean() > 0.01, "almost nothing is drawn on the rendered page"


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"])


def section(page: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert match, f"section {anchor} is missing"
    return match.group(1)


def group(out: Path, *args: object) -> None:
    assert main([str(out.parent.parent), str(out), "group", *map(str, args)]) == 0


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """OUTPUT_DIR with a classification MAPS (evaluated and interpreted), a regression MAPS,
    an autoencoder's MAPS and a MAPS that was only split."""
    bids = tmp_path_factory.mktemp("reports") / "bids"
    generate_dataset(bids, kind="trivial", n_subjects=12, sessions=1, seed=4, voxel_size=6.0)
    out = bids / "derivatives" / "neurodl"
    assert main([str(bids), str(out), "participant", *TINY]) == 0
    group(out, "--maps-name", "adcn", *TRAIN)
    group(out, "--maps-name", "adcn", "--stages", "interpret", "report")
    group(out, "--maps-name", "age", "--task", "regression", "--label", "age", *ONE_SPLIT)
    group(out, "--maps-name", "ae", "--task", "reconstruction", *ONE_SPLIT)
    group(out, "--maps-name", "partial", "--stages", "split", "--n-splits", "2", "--seed", "1")
    return out


def test_maps_report_has_every_section_and_renders(outputs, tmp_path):
    report = outputs / "maps/adcn/report.html"
    page = report.read_text(encoding="utf-8")
    for anchor in SECTIONS:
        assert section(page, anchor).strip(), anchor
    assert "could not be drawn" not in page
    # self-contained: no script, every image embedded
    assert "<script" not in page.lower()
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "neurodl" in section(page, "command") and "--selection-metrics loss BA" in page
    # the participant level's defaults are not shown as if they had made these tensors
    options = section(page, "command")
    assert ">epochs</th>" in options and ">voxel_size</th>" not in options
    assert "participant-level options (" in options and "voxel_size" in options
    assert "--config" in section(page, "provenance") and "master seed" in page
    assert "ok: nothing shared" in section(page, "checks")
    assert "no two images have identical content" in section(page, "checks")
    assert section(page, "data").count("<table") >= 3  # dataset, per split, test group
    assert_not_blank(render(report, tmp_path / "report.png", 9000))


def test_report_figures_match_their_data(outputs):
    maps = outputs / "maps/adcn"
    page = (maps / "report.html").read_text(encoding="utf-8")
    checked = 0
    for selection, name, aucs in re.findall(
            r'<figure data-selection="([^"]+)" data-group="([^"]+)" data-aucs="([^"]*)"', page):
        for item in aucs.split():
            split, auc = item.split(":")
            metrics = read(maps / f"split-{split}/best-{selection}/{name}/{name}_image_level_metrics.tsv")
            expected = metrics.set_index("metric").loc["AUC", "value"]
            assert float(auc) == pytest.approx(expected, abs=2e-6), (selection, name, split)
            checked += 1
    assert checked >= 8  # 2 selections x 3 groups x 2 splits, but single-class groups have no AUC
    for selection, name, split, body in re.findall(
            r'<table class="confusion" data-selection="([^"]+)" data-group="([^"]+)" '
            r'data-split="(\d+)">(.*?)</table>', page, re.S):
        counts = np.array([[int(c) for c in re.findall(r"<td[^>]*>(\d+)</td>", row)]
                           for row in re.findall(r"<tr>.*?</tr>", body.split("<tbody>")[1])])
        metrics = read(maps / f"split-{split}/best-{selection}/{name}/{name}_image_level_metrics.tsv")
        accuracy = metrics.set_index("metric").loc["accuracy", "value"]
        assert np.trace(counts) / counts.sum() == pytest.approx(accuracy, abs=1e-5)
        predictions = read(maps / f"split-{split}/best-{selection}/{name}/"
                                  f"{name}_image_level_prediction.tsv")
        assert counts.sum() == len(predictions)
    for split, epochs in re.findall(r'data-split="(\d+)" data-epochs="(\d+)"', page):
        assert int(epochs) == len(read(maps / f"split-{split}/training_logs/training.tsv"))
    # saliency: one overlay per split, selection metric and group
    assert len(re.findall(r'data-method="grad-cam"', section(page, "interpretation"))) == 4


def test_regression_and_reconstruction_reports(outputs, tmp_path):
    maps = outputs / "maps/age"
    page = (maps / "report.html").read_text(encoding="utf-8")
    found = re.findall(r'data-selection="loss" data-group="([^"]+)" data-maes="([^"]*)"', page)
    assert {name for name, _ in found} == {"train", "validation", "test"}
    for name, maes in found:
        split, mae = maes.split(":")
        metrics = read(maps / f"split-{split}/best-loss/{name}/{name}_image_level_metrics.tsv")
        assert float(mae) == pytest.approx(metrics.set_index("metric").loc["MAE", "value"], rel=1e-4)
    assert "identity line" in section(page, "results")
    page = (outputs / "maps/ae/report.html").read_text(encoding="utf-8")
    results = section(page, "results")
    assert "top: input, bottom: output" in results and "data:image/png;base64," in results
    assert "could not be drawn" not in page
    assert_not_blank(render(outputs / "maps/ae/report.html", tmp_path / "ae.png"))


def test_report_of_a_partial_maps_says_what_is_missing(outputs, tmp_path):
    maps = tmp_path / "maps" / "partial"
    shutil.copytree(outputs / "maps/partial", maps)
    page = (maps / "report.html").read_text(encoding="utf-8")
    assert "split 0 is not trained yet" in section(page, "training")
    assert "no metrics yet" in section(page, "metrics")
    assert "summary.tsv is missing" in section(page, "metrics")
    assert "ok: nothing shared" in section(page, "checks")
    # a stage that failed half way: a broken table and a missing split still give a report
    shutil.copytree(outputs / "maps/adcn/split-1", maps / "split-1")
    (maps / "split-1/training_logs/training.tsv").write_bytes(b"\x00garbage\n")
    (maps / "groups/split_summary.tsv").unlink()
    (maps / "report.html").unlink()
    assert main([str(outputs.parent.parent), str(outputs), "group", "--stages", "report",
                 "--maps", str(maps)]) == 0
    page = (maps / "report.html").read_text(encoding="utf-8")
    for anchor in SECTIONS:
        section(page, anchor)
    assert "split_summary.tsv is missing" in page and "split 0 is not trained yet" in page
    assert_not_blank(render(maps / "report.html", tmp_path / "partial.png"))
    (maps / "maps.json").unlink()
    assert main([str(outputs.parent.parent), str(outputs), "group", "--stages", "report",
                 "--maps", str(maps)]) == 66


def test_participant_qc_mosaics_and_page(outputs, tmp_path):
    tensors = sorted(outputs.glob("sub-*/**/*_desc-tensor_T1w.npy"))
    assert len(tensors) == 12
    for tensor in tensors:
        mosaic = np.asarray(Image.open(mosaic_path(outputs, tensor)), dtype=float)
        assert mosaic.ndim == 2 and mosaic.shape[1] > 2 * mosaic.shape[0] and mosaic.var() > 100
    page = (outputs / "qc.html").read_text(encoding="utf-8")
    listed = set(re.findall(r'data-tensor="([^"]+)"', page))
    assert listed == {t.relative_to(outputs).as_posix() for t in tensors}
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 12 and all((outputs / s).is_file() for s in sources)
    assert_not_blank(render(outputs / "qc.html", tmp_path / "qc.png", 1600))
    assert validation_errors(outputs) == []
    # up to date: kept; missing: redone
    stamps = {t: mosaic_path(outputs, t).stat().st_mtime_ns for t in tensors}
    page_stamp = (outputs / "qc.html").stat().st_mtime_ns
    mosaic_path(outputs, tensors[0]).unlink()
    bids = outputs.parent.parent
    assert main([str(bids), str(outputs), "participant", *TINY]) == 0
    assert mosaic_path(outputs, tensors[0]).is_file()
    assert all(mosaic_path(outputs, t).stat().st_mtime_ns == stamps[t] for t in tensors[1:])
    assert (outputs / "qc.html").stat().st_mtime_ns == page_stamp  # same images, same page


def test_mosaic_shows_the_tensor_the_right_way_up(tmp_path):
    from bidsapp_dl.report.qc import mosaic, png_bytes

    volume = np.zeros((10, 12, 14), np.float32)
    volume[:, :, 10:] = 1.0  # the top of the head (superior, high z)
    image = mosaic(volume, (0.0, 1.0))
    sagittal = image[:, :12]
    assert sagittal[:4].mean() == 255 and sagittal[-4:].mean() == 0
    path = tmp_path / "m.png"
    path.write_bytes(png_bytes(image))
    assert np.array_equal(np.asarray(Image.open(path)), image)
    assert os.path.getsize(path) < 2000
