"""Duplicates by content: the same image under two names is one image, for leakage purposes.

ClinicaDL's guard trusts participant IDs. A scan copied under another ID (a re-saved file, a
participant enrolled twice, a data-sharing mix-up) then lands on both sides of a split. Here the
hashes written by the participant level find them: identical source files, or identical stored
voxels. Participants that share any image are merged into one *unit*, and splits never cut a unit.
"""

from __future__ import annotations

import logging

import pandas as pd

log = logging.getLogger(__name__)

REPORT_COLUMNS = ["duplicate_set", "participant_id", "session_id", "tensor", "data_sha256",
                  "source_sha256"]


class _Sets:
    """Union-find over participant ids."""

    def __init__(self, items):
        self.parent = {x: x for x in items}

    def find(self, x: str) -> str:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_duplicates(table: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """Units (one id per row) and the report of images that share their content.

    Rows are images with ``participant_id``, ``session_id``, ``tensor``, ``data_sha256`` and
    ``source_sha256``. A unit is named after its participants: ``sub-01`` or ``sub-01+sub-07``.
    """
    sets = _Sets(table["participant_id"].unique())
    # images linked by either hash form one duplicate set (a set may join several hashes)
    images = _Sets(table.index)
    for column in ("data_sha256", "source_sha256"):
        for _, rows in table.groupby(column).groups.items():
            rows = list(rows)
            for other in rows[1:]:
                images.union(rows[0], other)
    members: dict = {}
    for row in table.index:
        members.setdefault(images.find(row), []).append(row)
    report = []
    for number, rows in enumerate(sorted((r for r in members.values() if len(r) > 1),
                                         key=lambda r: min(r))):
        participants = table.loc[rows, "participant_id"].tolist()
        for p in participants[1:]:
            sets.union(participants[0], p)
        for row in rows:
            report.append({"duplicate_set": number, **table.loc[row, REPORT_COLUMNS[1:]].to_dict()})
    components: dict[str, list[str]] = {}
    for p in sets.parent:
        components.setdefault(sets.find(p), []).append(p)
    name = {p: "+".join(sorted(group)) for group in components.values() for p in group}
    units = table["participant_id"].map(name).rename("unit")
    report_df = pd.DataFrame(report, columns=REPORT_COLUMNS)
    if not report_df.empty:
        merged = sorted({u for u in units if "+" in u})
        log.warning("%d image(s) in %d set(s) have identical content (listed in duplicates.tsv)%s",
                    len(report_df), report_df["duplicate_set"].nunique(),
                    f"; these participants are kept together in every split: {', '.join(merged)}"
                    if merged else "")
    return units, report_df
