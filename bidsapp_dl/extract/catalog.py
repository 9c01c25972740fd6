"""Read back what the participant level wrote: one row per stored tensor, from the sidecars.

The group level never re-indexes BIDS_DIR nor opens image data to know what it has: the small
JSON sidecars say everything (source, hashes, shape, parameters).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from ..errors import DataError, InputMissingError
from . import store

log = logging.getLogger(__name__)

COLUMNS = ["participant_id", "session_id", "tensor", "suffix", "shape", "affine", "dtype",
           "source", "source_sha256", "data_sha256", "preprocessing", "dseg"]
HINT = "run the participant level first (neurodl BIDS_DIR OUTPUT_DIR participant)"


def _row(output_dir: Path, sidecar: Path) -> dict | None:
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        tensor = sidecar.with_suffix(store.TENSOR_EXT)
        ents = meta["Entities"]
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring %s: not a readable tensor sidecar (%s)", sidecar, exc)
        return None
    if not tensor.is_file():
        log.warning("ignoring %s: its tensor %s is missing", sidecar, tensor.name)
        return None
    dseg_tensor, dseg_sidecar = store.dseg_beside(tensor)
    session = ents.get("session")
    return {
        "participant_id": f"sub-{ents['subject']}",
        "session_id": f"ses-{session}" if session else "",
        "tensor": tensor.relative_to(output_dir).as_posix(),
        "suffix": ents.get("suffix", sidecar.stem.rsplit("_", 1)[-1]),
        "shape": tuple(meta["Shape"]),
        # rounded to 1e-3 mm, so that grids that agree within that tolerance compare equal
        "affine": tuple(round(float(v), 3) + 0.0 for row in meta["Affine"] for v in row),
        "dtype": meta["DataType"],
        "source": meta["Sources"][0],
        "source_sha256": meta["SourceSHA256"],
        "data_sha256": meta["DataSHA256"],
        "preprocessing": json.dumps(meta["Preprocessing"], sort_keys=True),
        "dseg": dseg_tensor.relative_to(output_dir).as_posix() if dseg_sidecar.is_file() else "",
    }


def read_catalog(output_dir: Path, participants: list[str] | None = None,
                 sessions: list[str] | None = None, suffix: str = "T1w") -> pd.DataFrame:
    """The stored tensors of these participants and sessions (labels without prefix)."""
    output_dir = Path(output_dir)
    folders = ([output_dir / f"sub-{p}" for p in participants] if participants
               else sorted(output_dir.glob("sub-*")))
    rows = []
    for folder in folders:
        for sidecar in sorted(folder.rglob(f"*_desc-{store.DESC}_{suffix}.json")):
            row = _row(output_dir, sidecar)
            if row and (not sessions or row["session_id"][4:] in sessions):
                rows.append(row)
    table = pd.DataFrame(rows, columns=COLUMNS)
    if table.empty:
        which = f" for {', '.join('sub-' + p for p in participants)}" if participants else ""
        raise InputMissingError(f"no extracted tensors in {output_dir}{which}; {HINT}")
    if participants:
        missing = sorted(set(f"sub-{p}" for p in participants) - set(table["participant_id"]))
        if missing:
            raise InputMissingError(f"no extracted tensors for {', '.join(missing)} in "
                                    f"{output_dir}; {HINT} for them")
    settings = table.groupby("preprocessing")["tensor"].first()
    if len(settings) > 1:
        described = " versus ".join(f"{s} (e.g. {t})" for s, t in settings.items())
        raise DataError(f"tensors made with different preprocessing are mixed in {output_dir}: "
                        f"{described}; re-run the participant level with one setting (it redoes "
                        "the others) or select participants made alike")
    return table.sort_values(["participant_id", "session_id", "tensor"], ignore_index=True)

