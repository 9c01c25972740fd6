"""Validate BIDS_DIR with the official schema-based validator (bids-validator-deno).

Only the selected participants are validated, as fMRIPrep does: a temporary tree of symbolic
links holds the top-level files and those participants' folders, so one job per participant
does not validate the whole dataset every time.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import BidsValidationError

log = logging.getLogger(__name__)

SKIP_HINT = "fix them, or run with --skip-bids-validation"
# top-level entries that never take part in validating the selected participants
NOT_LINKED = {"derivatives", "sourcedata", "code"}


def validator_command() -> str | None:
    """The validator executable: beside this Python (a venv, a container) or on PATH."""
    beside = Path(sys.executable).parent / "bids-validator-deno"
    return str(beside) if beside.exists() else shutil.which("bids-validator-deno")


def _scoped_tree(bids_dir: Path, participants: list[str], tmp: Path) -> Path:
    root = tmp / "dataset"
    root.mkdir()
    for entry in bids_dir.iterdir():
        if entry.name in NOT_LINKED or (entry.name.startswith("sub-") and
                                        entry.name[4:] not in participants):
            continue
        os.symlink(entry.absolute(), root / entry.name)
    return root


def _minimal_check(bids_dir: Path) -> list[str]:
    desc = bids_dir / "dataset_description.json"
    try:
        meta = json.loads(desc.read_text(encoding="utf-8-sig"))
    except OSError:
        return [f"{desc.name} is missing (every BIDS dataset needs one, with Name and BIDSVersion)"]
    except ValueError as exc:
        return [f"{desc.name} is not valid JSON ({exc})"]
    return [f"{desc.name} has no {key}" for key in ("Name", "BIDSVersion") if key not in meta]


def validate(bids_dir: Path, participants: list[str], work_dir: Path | None = None,
             timeout: float = 3600) -> None:
    """Raise BidsValidationError listing the first problems when the dataset is not valid."""
    problems = _minimal_check(bids_dir)
    command = validator_command()
    if not problems and command is None:
        log.warning("bids-validator-deno is not installed: only dataset_description.json was "
                    "checked (pip install bids-validator-deno for a full validation)")
    elif not problems:
        if work_dir is not None:
            work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="neurodl-validate-", dir=work_dir) as tmp:
            root = _scoped_tree(bids_dir, participants, Path(tmp))
            log.info("validating %s (%d participant(s)) with bids-validator-deno", bids_dir,
                     len(participants))
            try:
                run = subprocess.run([command, str(root), "--format", "json", "--ignoreWarnings"],
                                     capture_output=True, text=True, timeout=timeout)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.warning("the BIDS validator could not run (%s); skipping validation", exc)
                return
            problems = _errors_from(run.stdout, run.stderr)
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise BidsValidationError(f"BIDS_DIR {bids_dir} is not valid BIDS: {shown}{more}; "
                                  f"{SKIP_HINT}")


def _errors_from(stdout: str, stderr: str) -> list[str]:
    try:
        report = json.loads(stdout)
    except ValueError:
        log.warning("the BIDS validator gave no report (%s); skipping validation",
                    (stderr or stdout).strip().splitlines()[-1:] or "no output")
        return []
    issues = report.get("issues", {}).get("issues", [])
    out = []
    for issue in issues:
        if issue.get("severity") != "error":
            continue
        where = issue.get("location", "")
        out.append(f"{issue.get('code')}{' at ' + where if where else ''}")
    return list(dict.fromkeys(out))
