"""The leakage guard: a group to predict must share nothing with what the model was trained on.

Participants are compared by ID, and images by content (the hashes of the stored voxels and of
the source files), so the same scan under another ID is caught as well (SPEC section 4, rule 3).
"""

from __future__ import annotations

import logging

import pandas as pd

from ..errors import DataError

log = logging.getLogger(__name__)


def _listing(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def overlap(group: pd.DataFrame, seen: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Participants of ``group`` also in ``seen``, and images of ``group`` whose content is."""
    same_ids = sorted(set(group["participant_id"]) & set(seen["participant_id"]))
    hashes = set(seen["data_sha256"]) | set(seen["source_sha256"])
    same_content = group[(group["data_sha256"].isin(hashes) | group["source_sha256"].isin(hashes))
                         & ~group["participant_id"].isin(same_ids)]
    return same_ids, sorted(same_content["tensor"])


def check_leakage(group: pd.DataFrame, seen: pd.DataFrame, name: str, skip: bool) -> dict:
    """Refuse (exit 65) a group that overlaps the training data, unless ``skip``; returns a record."""
    ids, images = overlap(group, seen)
    record = {"leak_check": "skipped" if skip else "passed", "shared_participants": ids,
              "shared_images": images}
    if not ids and not images:
        return record
    what = []
    if ids:
        what.append(f"participant(s) {_listing(ids)} were in the training or validation data")
    if images:
        what.append(f"image(s) {_listing(images)} have the same content as training or "
                    "validation images under other IDs")
    message = f"data group '{name}': " + "; ".join(what)
    if skip:
        log.warning("LEAKAGE CHECK SKIPPED (--skip-leak-check): %s. Metrics on this group are "
                    "biased and must not be reported as a test result; this is recorded in "
                    "its group.json", message)
        return record
    raise DataError(f"{message}: predicting on them would leak; select other participants, or "
                    "(knowingly) use --skip-leak-check")
