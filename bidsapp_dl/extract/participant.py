"""The participant level: every selected image becomes a tensor, once.

Images are independent, so they are spread over ``--nprocs`` processes. An image already
extracted from the same source bytes with the same parameters is skipped; one that changed is
redone. A bad image fails the run (exit 65) after the others are done, or is skipped with
``--skip-bad-images``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bids import index
from ..bids.validate import validate
from ..cli.options import Options
from ..errors import BadImageError, OutputError
from ..maps.io import (
    folder_lock,
    read_json,
    remove_stale_temporaries,
    sha256_file,
    write_json,
    write_text,
)
from ..memory import keep_freed_memory
from ..report import qc
from . import store
from .preprocess import PreprocessingParams, load_image, preprocess, resample_labels

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What happened to one image."""

    source: str
    status: str          # extracted | skipped | bad
    message: str = ""
    seconds: float = 0.0
    output: str = ""


def params_from(opts: Options) -> PreprocessingParams:
    return PreprocessingParams(
        preprocessing=opts.preprocessing, voxel_size=opts.voxel_size,
        target_shape=tuple(opts.target_shape), normalization=opts.normalization, dtype=opts.dtype)


def extract_one(record: index.ImageRecord, output_dir: Path, params: PreprocessingParams,
                overwrite: bool = False) -> Outcome:
    """Extract one image (and its segmentation) unless up to date; bad images come back ``bad``.

    Jobs that share OUTPUT_DIR take turns per image folder: the second finds the image up to
    date, and a tensor never ends up beside the sidecar of another job's tensor.
    """
    folder = store.tensor_paths(output_dir, record)[0].parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {folder} ({exc.strerror}); check free space and "
                          "permissions of OUTPUT_DIR") from exc
    with folder_lock(folder):
        return _extract_one(record, output_dir, params, overwrite)


def _extract_one(record: index.ImageRecord, output_dir: Path, params: PreprocessingParams,
                 overwrite: bool) -> Outcome:
    start = time.perf_counter()
    tensor, sidecar = store.tensor_paths(output_dir, record)
    source = str(record.path)
    if record.dseg_problem:
        return Outcome(source, "bad", record.dseg_problem)
    try:
        raw = record.path.read_bytes()  # read once: hashed here, decoded below if needed
        source_sha = hashlib.sha256(raw).hexdigest()
        dseg_sha = sha256_file(record.dseg.path) if record.dseg else None
    except OSError as exc:
        return Outcome(source, "bad", f"{exc.filename}: cannot read it ({exc.strerror})")
    wanted = params.as_dict()
    wrote = False
    if overwrite or not store.is_up_to_date(tensor, sidecar, source_sha, wanted):
        try:
            result = preprocess(load_image(record.path, raw), params)
        except BadImageError as exc:
            return Outcome(source, "bad", str(exc))
        # the tensor first, the sidecar last: a sidecar always describes a complete tensor
        store.write_tensor(tensor, result.data)
        meta = store.sidecar(record, source_sha, result.data, result.affine, wanted, result.info,
                             time.perf_counter() - start)
        write_json(sidecar, meta)
        wrote = True
    if record.dseg is not None:
        meta = read_json(sidecar)
        dseg_tensor, dseg_sidecar = store.dseg_paths(output_dir, record)
        # the segmentation follows its image: redone whenever the image tensor changed
        dseg_params = {**wanted, "ReferenceDataSHA256": meta["DataSHA256"]}
        if wrote or overwrite or not store.is_up_to_date(dseg_tensor, dseg_sidecar, dseg_sha,
                                                         dseg_params):
            try:
                labels = resample_labels(load_image(record.dseg.path), np.array(meta["Affine"]),
                                         tuple(meta["Shape"]))
            except BadImageError as exc:
                return Outcome(source, "bad", str(exc))
            store.write_tensor(dseg_tensor, labels)
            dmeta = store.sidecar(record.dseg, dseg_sha, labels, np.array(meta["Affine"]),
                                  dseg_params, {"labels": np.unique(labels).tolist()},
                                  time.perf_counter() - start)
            write_json(dseg_sidecar, dmeta)
            wrote = True
    qc.write_mosaic(output_dir, tensor)  # unless up to date; a QC problem only warns
    if not wrote:
        return Outcome(source, "skipped", output=str(tensor))
    return Outcome(source, "extracted", seconds=time.perf_counter() - start, output=str(tensor))


def _run_all(records: list[index.ImageRecord], output_dir: Path, params: PreprocessingParams,
             nprocs: int, overwrite: bool) -> list[Outcome]:
    total = len(records)
    outcomes: list[Outcome] = []

    def report(outcome: Outcome) -> None:
        outcomes.append(outcome)
        k = len(outcomes)
        if outcome.status == "extracted":
            log.info("[%d/%d] extracted %s (%.2f s)", k, total, Path(outcome.output).name,
                     outcome.seconds)
        elif outcome.status == "skipped":
            log.info("[%d/%d] up to date: %s", k, total, Path(outcome.output).name)
        else:
            log.warning("[%d/%d] bad image: %s", k, total, outcome.message)

    if nprocs <= 1 or total <= 1:
        keep_freed_memory()
        for r in records:
            report(extract_one(r, output_dir, params, overwrite))
        return outcomes
    with ProcessPoolExecutor(max_workers=min(nprocs, total), initializer=_worker_setup) as pool:
        futures = [pool.submit(extract_one, r, output_dir, params, overwrite) for r in records]
        for future in futures:
            report(future.result())
    return outcomes


def _worker_setup() -> None:
    """Processes share the cores: no process may also start a thread per core."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    keep_freed_memory()


def _write_bad_list(output_dir: Path, bad: list[Outcome]) -> Path:
    path = output_dir / "logs" / f"bad_images-{time.strftime('%Y%m%d-%H%M%S')}.tsv"
    rows = ["source\treason"] + [f"{o.source}\t{o.message.replace(chr(9), ' ')}" for o in bad]
    write_text(path, "\n".join(rows) + "\n")
    return path


def run_participant(opts: Options) -> list[Outcome]:
    """Select, validate, extract; returns one outcome per image."""
    bids_dir, output_dir = opts.bids_path, opts.output_path
    derivatives = [Path(d).expanduser().absolute() for d in opts.derivatives]
    roots = derivatives or [bids_dir]
    participants = index.resolve_participants(roots, opts.participant_label)
    index.check_sessions(roots, participants, opts.session_label)
    queries = index.load_filters(opts.bids_filter_file)
    if opts.skip_bids_validation:
        log.warning("BIDS validation skipped (--skip-bids-validation)")
    else:
        validate(bids_dir, participants, Path(opts.work_dir).absolute() if opts.work_dir else None)
    db_dir = Path(opts.bids_database_dir).absolute() if opts.bids_database_dir else None
    records = index.select_images(bids_dir, participants, opts.session_label, queries,
                                  derivatives, opts.space, opts.desc, db_dir, opts.with_dseg)
    # this job's folders only: one job per participant must not walk the whole derivative
    remove_stale_temporaries({output_dir, output_dir / "maps",
                              *(store.tensor_paths(output_dir, r)[0].parent for r in records)},
                             recursive=False)
    log.info("%d image(s) selected for %d participant(s)", len(records), len(participants))
    store.prepare_output(output_dir, bids_dir, derivatives)
    params = params_from(opts)
    start = time.perf_counter()
    outcomes = _run_all(records, output_dir, params, opts.n_workers, opts.overwrite)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("extracted", "skipped", "bad")}
    log.info("participant level done in %.1f s: %d extracted, %d up to date, %d bad",
             time.perf_counter() - start, counts["extracted"], counts["skipped"], counts["bad"])
    qc.write_qc_page(output_dir)  # every image of OUTPUT_DIR, whichever job extracted it
    bad = [o for o in outcomes if o.status == "bad"]
    if bad:
        listing = _write_bad_list(output_dir, bad)
        if not opts.skip_bad_images:
            first = bad[0].message
            more = f" (and {len(bad) - 1} more, listed in {listing})" if len(bad) > 1 else ""
            raise BadImageError(f"{first}{more}; fix or remove the image, or run with "
                                "--skip-bad-images to extract the others")
        log.warning("%d bad image(s) skipped (--skip-bad-images), listed in %s", len(bad), listing)
    return outcomes

