"""Find the input images with pybids: labels, filters, derivatives, a reusable index.

Only the selected participants are indexed (a regular expression hides the others from
pybids), unless a ``--bids-database-dir`` is being written, which then holds every participant
so that later jobs can reuse it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import BadImageError, DataError, InputMissingError, NoImagesError, UsageError

log = logging.getLogger(__name__)

NIFTI = [".nii", ".nii.gz"]
DEFAULT_QUERIES: dict[str, dict[str, Any]] = {
    "t1w": {"datatype": "anat", "suffix": "T1w", "extension": NIFTI},
    # a per-subject segmentation, matched to each image by subject, session and space
    "dseg": {"suffix": "dseg", "extension": NIFTI},
}


@dataclass(frozen=True)
class ImageRecord:
    """One selected input image."""

    path: Path                      # absolute path of the image
    dataset: str                    # "raw" or the derivative dataset's name (BIDS URI key)
    root: Path                      # root of the dataset holding it
    entities: dict[str, Any] = field(hash=False)   # pybids long names: subject, session, ...
    dseg: ImageRecord | None = None  # its segmentation, when asked for (--with-dseg)
    dseg_problem: str = ""           # why no single segmentation matches it

    @property
    def relpath(self) -> str:
        return self.path.relative_to(self.root).as_posix()

    @property
    def subject(self) -> str:
        return str(self.entities["subject"])

    @property
    def session(self) -> str | None:
        ses = self.entities.get("session")
        return None if ses is None else str(ses)

    @property
    def uri(self) -> str:
        return f"bids:{self.dataset}:{self.relpath}"


def labels_in(root: Path, prefix: str) -> list[str]:
    """Labels of the ``prefix*`` folders directly under ``root`` (symlinks followed)."""
    return sorted(p.name[len(prefix):] for p in root.glob(f"{prefix}*") if p.is_dir())


def _listing(labels: list[str], prefix: str, limit: int = 20) -> str:
    shown = ", ".join(prefix + x for x in labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "") or "none"


def resolve_participants(roots: list[Path], requested: list[str]) -> list[str]:
    """The participants to process; unknown labels are an error that lists the known ones."""
    known = sorted(set().union(*(labels_in(r, "sub-") for r in roots)))
    if not requested:
        if not known:
            raise InputMissingError(f"no sub-* folder in {', '.join(map(str, roots))}; is this "
                                    "a BIDS dataset (and mounted in the container)?")
        return known
    missing = [x for x in requested if x not in known]
    if missing:
        raise InputMissingError(
            f"participant(s) {_listing(missing, 'sub-')} not found in {roots[0]}; the dataset has "
            f"{_listing(known, 'sub-')} (in a container, check the mounts)")
    return requested


def check_sessions(roots: list[Path], participants: list[str], requested: list[str]) -> None:
    """Unknown session labels are an error that lists the sessions of those participants."""
    if not requested:
        return
    known = sorted({s for r in roots for p in participants for s in labels_in(r / f"sub-{p}", "ses-")})
    missing = [x for x in requested if x not in known]
    if missing:
        raise InputMissingError(
            f"session(s) {_listing(missing, 'ses-')} not found for the selected participants; "
            f"they have {_listing(known, 'ses-')}; choose among those or leave out --session-label")


def load_filters(path: str | None) -> dict[str, dict[str, Any]]:
    """The queries (``t1w``, ``dseg``): the defaults updated by the entries of a filter file."""
    queries = {name: dict(q) for name, q in DEFAULT_QUERIES.items()}
    if not path:
        return queries
    from bids.layout import Query

    def hook(obj: dict) -> dict:
        return {k: Query.NONE if v is None else Query.ANY if v == "*" else v for k, v in obj.items()}

    try:
        filters = json.loads(Path(path).read_text(encoding="utf-8-sig"), object_hook=hook)
    except OSError as exc:
        raise UsageError(f"--bids-filter-file {path}: cannot read it ({exc.strerror}); check the "
                         "path and its permissions") from exc
    except ValueError as exc:
        raise UsageError(f"--bids-filter-file {path}: not valid JSON ({exc}); fix it, e.g. "
                         '{"t1w": {"datatype": "anat", "suffix": "T1w"}}') from exc
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise UsageError(f"--bids-filter-file {path}: not a table of queries; write it as "
                         '{"t1w": {"entity": "value"}}, e.g. {"t1w": {"session": "M000"}}')
    for other in sorted(set(filters) - set(queries)):
        log.warning("--bids-filter-file: query '%s' is not used (neurodl reads %s)", other,
                    ", ".join(queries))
    for name, query in queries.items():
        query.update(filters.get(name, {}))
    return queries


def _describe(query: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in query.items())


def _dataset_name(root: Path) -> str:
    """A derivative's name for BIDS URIs: its folder name, made a safe key."""
    return re.sub(r"[^A-Za-z0-9_-]", "", root.name) or "derivative"


def _check_derivative(root: Path) -> None:
    desc = root / "dataset_description.json"
    if not root.is_dir():
        raise InputMissingError(f"--derivatives {root}: no such folder")
    if not desc.is_file():
        raise InputMissingError(
            f"--derivatives {root}: no dataset_description.json; check the path, or add one with "
            "Name, BIDSVersion and GeneratedBy (every BIDS derivative dataset needs it)")
    try:
        meta = json.loads(desc.read_text(encoding="utf-8-sig"))
    except ValueError as exc:
        raise DataError(f"{desc}: not valid JSON ({exc})") from exc
    if not (meta.get("GeneratedBy") or meta.get("PipelineDescription")):
        raise DataError(f"{desc}: no GeneratedBy; add \"GeneratedBy\": [{{\"Name\": \"<pipeline>\"}}] "
                        "so that the derivative can be indexed")


def _layout(root: Path, participants: list[str], is_derivative: bool, db_dir: Path | None):
    from bids import BIDSLayout, BIDSLayoutIndexer

    ignore: list[Any] = ["code", "stimuli", "sourcedata", "models", "derivatives",
                         re.compile(r"^/\.")]
    if db_dir is None:  # hide the other participants from the indexer: much faster
        alternatives = "|".join(map(re.escape, participants))
        ignore.append(re.compile(rf"^/sub-(?!(?:{alternatives})(?:/|$))"))
    indexer = BIDSLayoutIndexer(validate=False, ignore=ignore, index_metadata=False)
    if db_dir is None:
        return BIDSLayout(root, validate=False, is_derivative=is_derivative, indexer=indexer)
    db = db_dir / _dataset_name(root) if is_derivative else db_dir / "raw"
    if db.exists():
        log.info("reusing the pybids index in %s", db)
        return BIDSLayout(root, validate=False, is_derivative=is_derivative, database_path=db)
    # build it beside its final place, then rename: concurrent jobs never see half an index
    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{db.name}.", dir=db.parent))
    os.chmod(tmp, 0o755)  # other users' jobs read it too
    BIDSLayout(root, validate=False, is_derivative=is_derivative, indexer=indexer,
               database_path=tmp)
    try:
        tmp.rename(db)
        log.info("wrote the pybids index to %s", db)
    except OSError:  # another job won the race: theirs is as good
        shutil.rmtree(tmp, ignore_errors=True)
    return BIDSLayout(root, validate=False, is_derivative=is_derivative, database_path=db)


def _find_dseg(layouts: list, record: ImageRecord, query: dict[str, Any]) -> ImageRecord:
    from bids.layout import Query

    ents = record.entities
    wanted = {"subject": record.subject, "session": ents.get("session", Query.NONE),
              "space": ents.get("space", Query.NONE), **query}
    found = [(layout, f) for layout in layouts for f in layout.get(return_type="object", **wanted)]
    if len(found) != 1:
        what = "no segmentation" if not found else f"{len(found)} segmentations"
        names = ", ".join(Path(f.path).name for _, f in found[:4])
        raise BadImageError(
            f"{record.path.name}: {what} ({_describe(query)}) of the same participant, session "
            f"and space{': ' + names if names else ''}; choose one with the 'dseg' query of "
            "--bids-filter-file, or leave out --with-dseg")
    layout, f = found[0]
    root = Path(layout.root)
    name = "raw" if root == record.root and record.dataset == "raw" else _dataset_name(root)
    return ImageRecord(Path(f.path), name, root, f.get_entities())


def _with_dseg(layouts: list, record: ImageRecord, query: dict[str, Any]) -> ImageRecord:
    try:
        return replace(record, dseg=_find_dseg(layouts, record, query))
    except BadImageError as exc:
        return replace(record, dseg_problem=str(exc))


def select_images(bids_dir: Path, participants: list[str], sessions: list[str],
                  queries: dict[str, dict[str, Any]], derivatives: list[Path], space: str | None,
                  desc: str | None, db_dir: Path | None, with_dseg: bool = False
                  ) -> list[ImageRecord]:
    """Every image matching the ``t1w`` query for these participants, sorted by path.

    With ``with_dseg``, each record also carries the one segmentation matching it, or says
    in ``dseg_problem`` why there is not exactly one.
    """
    query = dict(queries["t1w"])
    if space:
        query["space"] = space
    if desc:
        query["desc"] = desc
    if sessions:
        query["session"] = sessions
    sources = [(d, _dataset_name(d), True) for d in derivatives] or [(bids_dir, "raw", False)]
    for root, _, is_derivative in sources:
        if is_derivative:
            _check_derivative(root)
    records = []
    layouts = []
    for root, name, is_derivative in sources:
        layout = _layout(root, participants, is_derivative, db_dir)
        layouts.append(layout)
        try:
            files = layout.get(return_type="object", subject=participants, **query)
        except (ValueError, KeyError) as exc:
            raise UsageError(f"the image query ({_describe(query)}) is not valid for {root}: "
                             f"{exc}") from exc
        for f in files:
            ents = f.get_entities()
            if "subject" not in ents:
                continue
            records.append(ImageRecord(Path(f.path), name, root, ents))
    if not records:
        where = ", ".join(str(r) for r, _, _ in sources)
        raise NoImagesError(
            f"no image matches {_describe(query)} for {_listing(participants, 'sub-')} in "
            f"{where}; check --bids-filter-file, --space/--desc, --session-label")
    if with_dseg:
        records = [_with_dseg(layouts, r, queries["dseg"]) for r in records]
    return sorted(records, key=lambda r: str(r.path))
