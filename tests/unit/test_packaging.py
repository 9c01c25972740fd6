"""The files that make neurodl a BIDS App on containers and platforms, checked as they are read."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bidsapp_dl import __version__
from bidsapp_dl.generate import generate_dataset

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_dockerfile_is_a_bids_app_image():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM debian:bookworm-slim", text, re.M)
    assert 'ARG TORCH_SPEC="torch>=2.1,<3"' in text  # the ordinary (CUDA) torch by default
    assert 'ENTRYPOINT ["neurodl"]' in text
    assert re.search(r"^USER neurodl$", text, re.M)
    for label in ("version", "revision", "source"):
        assert f"org.opencontainers.image.{label}" in text
    for cache in ("HOME=/tmp", "MPLCONFIGDIR=", "TORCH_HOME=", "XDG_CACHE_HOME="):
        assert cache in text
    assert f"ARG VERSION={__version__}" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ignored[0] == "*" and "!bidsapp_dl/" in ignored


def test_singularity_definition_parses_and_runs_the_app():
    from spython.main.parse.parsers import SingularityParser

    recipe = next(iter(SingularityParser(str(ROOT / "singularity.def")).recipe.values()))
    assert recipe.fromHeader == "neurodl:latest"
    text = (ROOT / "singularity.def").read_text()
    runscript = text.split("%runscript", 1)[1].split("%", 1)[0]
    assert 'exec neurodl "$@"' in runscript
    for section in ("%help", "%labels", "%test", "%environment"):
        assert section in text
    assert "--cleanenv" in text and "--nv" in text


def test_circleci_config_is_valid_and_builds_tests_deploys():
    run = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.circle-ci",
                          str(ROOT / ".circleci/config.yml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    text = (ROOT / ".circleci/config.yml").read_text()
    assert "--read-only --network none --user 1000:1000" in text
    assert ":unstable" in text and ":latest" in text and "CIRCLE_TAG" in text
    assert "bids-validator-deno /tmp/out" in text


def test_boutiques_descriptor_validates_including_bids_rules(tmp_path):
    descriptor = ROOT / "boutiques/descriptor.json"
    for extra in ([], ["--bids"]):
        run = subprocess.run([str(BIN / "bosh"), "validate", *extra, str(descriptor)],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
    invocation = tmp_path / "invocation.json"
    invocation.write_text(json.dumps({"bids_dir": "/data", "output_dir_name": "/out",
                                      "analysis_level": "participant",
                                      "participant_label": ["01"], "seed": 3}))
    run = subprocess.run([str(BIN / "bosh"), "exec", "simulate", "-i", str(invocation),
                          str(descriptor)], capture_output=True, text=True)
    assert "neurodl /data /out participant --participant-label 01 --seed 3" in run.stdout
    assert json.loads(descriptor.read_text())["tool-version"] == __version__


def test_brainlife_main_runs_both_levels_from_config(tmp_path):
    work = tmp_path / "job"
    work.mkdir()
    generate_dataset(work / "demo/bids", kind="trivial", n_subjects=8, sessions=1, seed=2,
                     voxel_size=6.0)
    shutil.copy(ROOT / "brainlife_config.sample.json", work / "config.json")
    env = {**os.environ, "NEURODL": f"{sys.executable} {ROOT / 'run.py'}"}
    run = subprocess.run([str(ROOT / "main")], cwd=work, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = work / "output"
    assert len(list(out.rglob("*_desc-tensor_T1w.npy"))) == 8
    assert (out / "maps/brainlife/summary.tsv").is_file()
    meta = json.loads((out / "maps/brainlife/maps.json").read_text())
    assert meta["options"]["architecture"] == "Conv4_FC3" and meta["options"]["epochs"] == 2
    (work / "config.json").write_text(json.dumps({"bids": "nowhere"}))
    run = subprocess.run([str(ROOT / "main")], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 66 and "BIDS dataset folder" in run.stderr
