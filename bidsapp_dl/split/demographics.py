"""Demographics of one data group: who is in it (n, sessions, labels, age, sex)."""

from __future__ import annotations

import pandas as pd


def group_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row: participants, images, sessions per participant, label counts, age, sex.

    ``table`` has one row per image with ``participant_id``, ``session_id`` and, when known,
    ``label``, ``age``, ``sex``. Age and sex are counted once per participant.
    """
    row: dict[str, object] = {
        "n_participants": table["participant_id"].nunique(),
        "n_images": len(table),
        "sessions_per_participant": round(len(table) / max(table["participant_id"].nunique(), 1), 3),
    }
    if "label" in table.columns:
        labels = table["label"]
        numeric = pd.to_numeric(labels, errors="coerce")
        if labels.notna().any() and numeric[labels.notna()].notna().all():
            row["label_mean"], row["label_sd"] = numeric.mean(), numeric.std()
        else:
            for value, count in labels.dropna().astype(str).value_counts().sort_index().items():
                row[f"label_{value}"] = int(count)
        row["n_unlabelled"] = int(labels.isna().sum())
    first = table.drop_duplicates("participant_id")
    if "age" in table.columns:
        age = pd.to_numeric(first["age"], errors="coerce")
        row["age_mean"], row["age_sd"] = age.mean(), age.std()
    if "sex" in table.columns:
        for value, count in first["sex"].dropna().astype(str).value_counts().sort_index().items():
            row[f"sex_{value}"] = int(count)
    return pd.DataFrame([row]).round(6)
