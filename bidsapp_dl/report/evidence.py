"""What the report shows, read back from a MAPS: tables, ROC points, checks, saliency maps.

Everything here reads files only (reconstruction aside, which runs the network on one sample);
a missing file gives ``None`` or an empty result, for the report to say so.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd

from ..maps.io import read_json
from ..maps.layout import TRAINING_GROUPS, MapsLayout


def read_tsv(path: Path, **kwargs) -> pd.DataFrame | None:
    """A TSV of the MAPS (``n/a`` as missing), or None when it is missing or unreadable."""
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"], **kwargs)
    except (OSError, ValueError):
        return None


def splits_of(layout: MapsLayout, maps: dict) -> list[int]:
    """The splits the experiment has (all of them, trained or not)."""
    n = (maps.get("splits") or {}).get("n_splits") or (maps.get("options") or {}).get("n_splits")
    written = layout.splits_written()
    return sorted(set(range(int(n))) | set(written)) if n else written


def selections_of(options: dict) -> list[str]:
    return list(options.get("selection_metrics") or ["loss"])


def levels_of(mode: str) -> list[str]:
    return ["image"] + ([mode] if mode != "image" else [])


def groups_of(layout: MapsLayout) -> list[str]:
    """Data groups other than train and validation: test first, then predicted groups."""
    if not layout.groups.is_dir():
        return []
    names = sorted(p.name for p in layout.groups.iterdir()
                   if p.is_dir() and p.name not in TRAINING_GROUPS and (p / "data.tsv").is_file())
    return sorted(names, key=lambda n: n != "test")


def prediction_labels(frame: pd.DataFrame) -> pd.Series:
    """``true_label`` as text, None where unknown."""
    return frame["true_label"].map(lambda v: None if pd.isna(v) or v == "" else str(v))


def roc_points(frame: pd.DataFrame, classes: list[str]):
    """ROC curves of an image-level prediction table: ``(curves, auc)`` or None.

    Binary: one curve for the positive class (the second class, as in the metrics); more
    classes: one-vs-rest curves, and their mean AUC (as in the metrics table).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    true = prediction_labels(frame)
    known = true.notna().to_numpy()
    if not known.any() or len(classes) < 2:
        return None
    positives = [classes[1]] if len(classes) == 2 else classes
    curves, aucs = [], []
    for name in positives:
        column = f"proba_{name}"
        if column not in frame:
            return None
        y = (true[known] == str(name)).to_numpy()
        if y.all() or not y.any():
            continue
        score = frame.loc[known, column].to_numpy(dtype=float)
        fpr, tpr, _ = roc_curve(y, score)
        auc = float(roc_auc_score(y, score))
        curves.append(("" if len(classes) == 2 else f" {name}", fpr, tpr, auc))
        aucs.append(auc)
    return (curves, float(np.mean(aucs))) if curves else None


def confusion(frame: pd.DataFrame, classes: list[str]) -> pd.DataFrame | None:
    """Counts: rows the true class, columns the predicted class (every class shown)."""
    true = prediction_labels(frame)
    known = true.notna()
    if not known.any():
        return None
    names = [str(c) for c in classes]
    rows = pd.Categorical(true[known], categories=names)
    cols = pd.Categorical(frame.loc[known, "predicted_label"].astype(str), categories=names)
    return pd.crosstab(rows, cols, dropna=False).reindex(index=names, columns=names, fill_value=0)


def interpretations(layout: MapsLayout, splits: list[int], selections: list[str],
                    groups: list[str]) -> dict[tuple[str, str, str], list[tuple[int, Path]]]:
    """(group, method, selection) -> [(split, mean saliency map)] for the maps that exist."""
    found: dict[tuple[str, str, str], list[tuple[int, Path]]] = {}
    for group in groups:
        for selection in selections:
            for split in splits:
                folder = layout.best_dir(split, selection) / group
                if not folder.is_dir():
                    continue
                for sub in sorted(folder.glob("interpret-*")):
                    method = sub.name[len("interpret-"):]
                    path = layout.interpret_dir(split, selection, group, method) / \
                        f"{group}_mean_saliency.nii.gz"
                    if path.is_file():
                        found.setdefault((group, method, selection), []).append((split, path))
    return found


def load_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)


def _tensor_root(layout: MapsLayout, group: str) -> Path:
    record = read_json(layout.group_json(group)) or {}
    return Path(record["output_dir"]) if record.get("output_dir") else layout.root.parent.parent


def mean_image(layout: MapsLayout, group: str, limit: int) -> tuple[np.ndarray, int]:
    """The voxel-wise mean of (at most ``limit``) tensors of a group, and how many were averaged."""
    table = pd.read_csv(layout.group_data(group), sep="\t", dtype=str, keep_default_na=False)
    root = _tensor_root(layout, group)
    total, n, shape = None, 0, None
    for tensor in table["tensor"].head(limit):
        volume = np.load(root / tensor, mmap_mode="r")
        if shape is None:
            shape = volume.shape
        if volume.shape != shape:
            continue
        total = np.asarray(volume, dtype=np.float64) + (0 if total is None else total)
        n += 1
    if total is None:
        raise FileNotFoundError(f"no tensor of group '{group}' could be read under {root}")
    return (total / n).astype(np.float32), n


def _ids_and_hashes(frame: pd.DataFrame) -> tuple[set[str], set[str]]:
    hashes = set()
    for column in ("data_sha256", "source_sha256"):
        if column in frame:
            hashes |= set(frame[column].dropna().astype(str))
    return set(frame["participant_id"].astype(str)), hashes


def _result(ids: set[str], hashes: set[str]) -> str:
    if not ids and not hashes:
        return "ok: nothing shared"
    listed = ", ".join(sorted(ids)[:10]) + (" ..." if len(ids) > 10 else "")
    return f"SHARED: {len(ids)} participant(s) ({listed}), {len(hashes)} image content hash(es)"


def split_checks(layout: MapsLayout, splits: list[int]) -> pd.DataFrame:
    """Leakage checks recomputed from the data tables: what each side of each split shares."""
    def read(path: Path) -> pd.DataFrame | None:
        return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False) if path.is_file() else None

    rows = []
    for split in splits:
        train = read(layout.split_data("train", split))
        validation = read(layout.split_data("validation", split))
        if train is None or validation is None:
            rows.append({"check": f"split {split}: train vs validation", "result": "tables missing"})
            continue
        (a_ids, a_hash), (b_ids, b_hash) = _ids_and_hashes(train), _ids_and_hashes(validation)
        rows.append({"check": f"split {split}: train vs validation (participants, image content)",
                     "result": _result(a_ids & b_ids, a_hash & b_hash)})
    test, seen = read(layout.group_data("test")), read(layout.train_validation_tsv)
    if test is not None and seen is not None:
        (a_ids, a_hash), (b_ids, b_hash) = _ids_and_hashes(test), _ids_and_hashes(seen)
        rows.append({"check": "test vs train+validation (participants, image content)",
                     "result": _result(a_ids & b_ids, a_hash & b_hash)})
    elif seen is not None:
        rows.append({"check": "test vs train+validation", "result": "no test group"})
    return pd.DataFrame(rows, columns=["check", "result"])


def reconstruct_one(layout: MapsLayout, maps: dict, split: int, selection: str):
    """Input and output of the network on the first sample of the test (or validation) group."""
    import torch

    from ..cli.options import Options
    from ..maps.weights import load_weights
    from ..train.experiment import Experiment

    known = {f.name for f in fields(Options)}
    opts = Options(**{k: v for k, v in maps["options"].items() if k in known})
    exp = Experiment(opts, layout, maps)
    group = "test" if layout.group_data("test").is_file() else "validation"
    table = exp.table(group, None if group == "test" else split).head(1)
    dataset = exp.dataset(table, train=False)
    sample = dataset[0]
    model = exp.model(dataset.sample_shape)
    model.load_state_dict(load_weights(layout.model(split, selection), "cpu"))
    model.eval()
    with torch.no_grad():
        output = model(sample["image"][None])
    if isinstance(output, (tuple, list)):  # a VAE returns the reconstruction first
        output = output[0]
    row = table.iloc[0]
    what = " ".join(str(v) for v in (row["participant_id"], row.get("session_id", "")) if v)
    return (sample["image"][0].numpy(), output[0, 0].detach().numpy(),
            f"{group} {what}, sample 0 of {json.dumps(list(dataset.sample_shape))}")
