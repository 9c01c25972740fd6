"""The participant level: every selected image becomes a tensor, once.

Images are independent, so they are spread over ``--nprocs`` processes. An image already
extracted from the same source bytes with the same parameters is skipped; one that changed is
redone. A bad image fails the run (exit 65) after the others are done, or is skipped with
``--skip-bad-images``.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

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
from ..memory import keep_freed_memory, skip_hugepage_hints
from ..report import qc
from . import store
from .preprocess import (
    Preprocessed,
    PreprocessingParams,
    decompress,
    load_image,
    load_volume,
    preprocess_volume,
    resample_labels,
)

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
    """Extract one image (and its segmentation) unless up to date; bad images come back ``bad``."""
    return list(extract_in_order([record], output_dir, params, overwrite))[0]


def extract_in_order(records: Iterable[index.ImageRecord], output_dir: Path,
                     params: PreprocessingParams, overwrite: bool = False) -> Iterator[Outcome]:
    """Extract images one after another; yield each outcome once its files are written.

    Three stages overlap: a reader thread reads, hashes and decompresses the next image; the
    caller's thread computes the current one; a writer thread finishes the previous one
    (hashing the tensor, writing it through to the disk, the sidecar, the segmentation, the QC
    mosaic). At most two volumes are in memory. Jobs that share OUTPUT_DIR take turns per
    image folder (the lock is held until the image's files are written): the second finds the
    image up to date, and a tensor never ends up beside the sidecar of another job's tensor.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="neurodl-writer") as writer, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="neurodl-reader") as reader:
        pending: Future | None = None
        records = iter(records)
        following = next(records, None)
        ahead = reader.submit(_read_source, following, output_dir, params, overwrite) \
            if following is not None else None
        while following is not None:
            record, source = following, ahead
            # the next image is read, hashed and decompressed while this one is computed
            following = next(records, None)
            ahead = reader.submit(_read_source, following, output_dir, params, overwrite) \
                if following is not None else None
            folder = store.tensor_paths(output_dir, record)[0].parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create {folder} ({exc.strerror}); check free space "
                                  "and permissions of OUTPUT_DIR") from exc
            lock = ExitStack()
            lock.enter_context(folder_lock(folder))
            try:
                start = time.perf_counter()
                step = _compute(record, output_dir, params, overwrite, start, source.result())
            except BaseException:
                lock.close()
                raise
            if pending is not None:
                yield pending.result()
            pending = writer.submit(_finish, step, lock)
        if pending is not None:
            yield pending.result()


@dataclass
class _Source:
    """A source image's bytes, their hash, and (when it is to be extracted) their decoding."""

    raw: bytes = b""
    sha: str = ""
    content: bytes | None = None
    error: OSError | None = None


def _read_source(record: index.ImageRecord, output_dir: Path, params: PreprocessingParams,
                 overwrite: bool) -> _Source:
    try:
        raw = record.path.read_bytes()  # read once: hashed and decoded
    except OSError as exc:
        return _Source(error=exc)
    source = _Source(raw, hashlib.sha256(raw).hexdigest())
    tensor, sidecar = store.tensor_paths(output_dir, record)
    # decompressed ahead only when the image looks due; the check that counts is made later,
    # under the image folder's lock
    if overwrite or not store.is_up_to_date(tensor, sidecar, source.sha, params.as_dict()):
        source.content = decompress(raw)
        if source.content is not None and source.content is not raw:
            source.raw = b""  # hashed and inflated: the compressed bytes are done with
    return source


@dataclass
class _Step:
    """An image whose computation is done; what is left is writing."""

    record: index.ImageRecord
    output_dir: Path
    params: PreprocessingParams
    overwrite: bool
    start: float
    source_sha: str = ""
    dseg_sha: str | None = None
    result: Preprocessed | None = None   # None: the image tensor is up to date
    outcome: Outcome | None = None       # set when nothing is left to do (a bad image)


def _compute(record: index.ImageRecord, output_dir: Path, params: PreprocessingParams,
             overwrite: bool, start: float, source: _Source) -> _Step:
    step = _Step(record, output_dir, params, overwrite, start, source_sha=source.sha)
    tensor, sidecar = store.tensor_paths(output_dir, record)
    if record.dseg_problem:
        step.outcome = Outcome(str(record.path), "bad", record.dseg_problem)
        return step
    try:
        if source.error is not None:
            raise source.error
        step.dseg_sha = sha256_file(record.dseg.path) if record.dseg else None
    except OSError as exc:
        step.outcome = Outcome(str(record.path), "bad",
                               f"{exc.filename}: cannot read it ({exc.strerror})")
        return step
    if overwrite or not store.is_up_to_date(tensor, sidecar, source.sha, params.as_dict()):
        try:
            # stored int16/uint16 stay as they are, in the decompressed bytes: no float32 copy
            volume = load_volume(record.path, source.raw, source.content, integers=True)
            # the voxels hold what they need now (their own array, or a view of the bytes)
            source.raw, source.content = b"", None
            step.result = preprocess_volume(*volume, params)
        except BadImageError as exc:
            step.outcome = Outcome(str(record.path), "bad", str(exc))
    return step


def _finish(step: _Step, lock: ExitStack) -> Outcome:
    """Write what ``_compute`` made (in the writer thread), then release the image's lock."""
    with lock:
        if step.outcome is not None:
            return step.outcome
        return _write(step)


def _write(step: _Step) -> Outcome:
    record, output_dir, wanted = step.record, step.output_dir, step.params.as_dict()
    tensor, sidecar = store.tensor_paths(output_dir, record)
    source = str(record.path)
    wrote = False
    if step.result is not None:
        result = step.result
        # the tensor first, the sidecar last: a sidecar always describes a complete tensor
        digest = store.write_tensor(tensor, result.data)
        meta = store.sidecar(record, step.source_sha, result.data, result.affine, wanted,
                             result.info, time.perf_counter() - step.start, digest=digest)
        write_json(sidecar, meta)
        wrote = True
    if record.dseg is not None:
        meta = read_json(sidecar)
        dseg_tensor, dseg_sidecar = store.dseg_paths(output_dir, record)
        # the segmentation follows its image: redone whenever the image tensor changed
        dseg_params = {**wanted, "ReferenceDataSHA256": meta["DataSHA256"]}
        if wrote or step.overwrite or not store.is_up_to_date(dseg_tensor, dseg_sidecar,
                                                              step.dseg_sha, dseg_params):
            try:
                labels = resample_labels(load_image(record.dseg.path), np.array(meta["Affine"]),
                                         tuple(meta["Shape"]))
            except BadImageError as exc:
                return Outcome(source, "bad", str(exc))
            digest = store.write_tensor(dseg_tensor, labels)
            dmeta = store.sidecar(record.dseg, step.dseg_sha, labels, np.array(meta["Affine"]),
                                  dseg_params, {"labels": np.unique(labels).tolist()},
                                  time.perf_counter() - step.start, digest=digest)
            write_json(dseg_sidecar, dmeta)
            wrote = True
    # unless up to date; a QC problem only warns
    qc.write_mosaic(output_dir, tensor, step.result.data if step.result is not None else None)
    if not wrote:
        return Outcome(source, "skipped", output=str(tensor))
    return Outcome(source, "extracted", seconds=time.perf_counter() - step.start,
                   output=str(tensor))


# images are shared out among --nprocs lanes; up to this many lanes run as threads of one
# process (the work of an image runs mostly outside the GIL: inflating, hashing, resampling,
# writing), more as processes of that many lanes each
LANES_PER_PROCESS = 4


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

    lanes = max(1, min(nprocs, total))
    if lanes <= LANES_PER_PROCESS:
        # one process: no fork, one warm heap, one set of first-call costs
        keep_freed_memory()
        skip_hugepage_hints()
        with threadpool_limits(1):
            if lanes == 1:
                for outcome in extract_in_order(records, output_dir, params, overwrite):
                    report(outcome)
            else:
                tasks: queue.Queue = queue.Queue()
                for record in records:
                    tasks.put(record)
                _drive_lanes(tasks, lanes, output_dir, params, overwrite, report)
        return outcomes
    # each process runs up to LANES_PER_PROCESS lanes, each taking the next image from a queue
    # and sending back each outcome as its files are written
    context = multiprocessing.get_context()
    tasks, results = context.Queue(), context.Queue()
    shares = [LANES_PER_PROCESS] * (lanes // LANES_PER_PROCESS)
    if lanes % LANES_PER_PROCESS:
        shares.append(lanes % LANES_PER_PROCESS)
    for record in records:
        tasks.put(record)
    for _ in range(lanes):
        tasks.put(None)
    with ProcessPoolExecutor(max_workers=len(shares), mp_context=context,
                             initializer=_worker_setup, initargs=(tasks, results)) as pool:
        loops = [pool.submit(_worker_loop, output_dir, params, overwrite, n) for n in shares]
        while len(outcomes) < total:
            try:
                report(results.get(timeout=0.5))
            except queue.Empty:
                for loop in loops:
                    if loop.done():
                        loop.result()  # a worker's error (or its death) ends the run
                if all(loop.done() for loop in loops) and results.empty():
                    break
        for loop in loops:
            loop.result()
    if len(outcomes) < total:  # pragma: no cover - every worker returned, some images unseen
        raise RuntimeError(f"{total - len(outcomes)} image(s) were not processed")
    return outcomes


_DONE = object()


def _drive_lanes(tasks, lanes: int, output_dir: Path, params: PreprocessingParams,
                 overwrite: bool, report) -> None:
    """Run ``lanes`` threads, each extracting the images it takes from ``tasks`` (a queue that
    holds every image already), and pass each outcome to ``report`` in the calling thread. An
    error in one lane stops the others after their current image and is raised here."""
    outcomes: queue.Queue = queue.Queue()
    stop = threading.Event()

    def records() -> Iterator[index.ImageRecord]:
        while not stop.is_set():
            try:
                record = tasks.get_nowait()
            except queue.Empty:
                return
            if record is None:
                return
            yield record

    def lane() -> None:
        try:
            for outcome in extract_in_order(records(), output_dir, params, overwrite):
                outcomes.put(outcome)
        except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
            stop.set()
            outcomes.put(exc)
        finally:
            outcomes.put(_DONE)

    threads = [threading.Thread(target=lane, name=f"neurodl-lane-{k}", daemon=True)
               for k in range(lanes)]
    for thread in threads:
        thread.start()
    running, error = lanes, None
    try:
        while running:
            item = outcomes.get()
            if item is _DONE:
                running -= 1
            elif isinstance(item, BaseException):
                error = error or item
            else:
                report(item)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    if error is not None:
        raise error


_QUEUES: tuple = ()


def _worker_setup(tasks=None, results=None) -> None:
    """Processes share the cores: no process may also start a thread per core."""
    global _QUEUES
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    threadpool_limits(1)  # the BLAS libraries are loaded already: the variables come too late
    keep_freed_memory()
    skip_hugepage_hints()
    _QUEUES = (tasks, results)


def _worker_loop(output_dir: Path, params: PreprocessingParams, overwrite: bool,
                 lanes: int = 1) -> None:
    tasks, results = _QUEUES
    _drive_lanes(_ProcessQueue(tasks), lanes, output_dir, params, overwrite, results.put)


class _ProcessQueue:
    """The task queue shared by processes, as the lanes of one process read it: it ends at a
    ``None`` (one per lane is queued)."""

    def __init__(self, tasks) -> None:
        self._tasks = tasks

    def get_nowait(self):
        return self._tasks.get()


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

