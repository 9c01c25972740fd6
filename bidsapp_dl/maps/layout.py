"""Every path of a MAPS (Model Analysis and Processing Structure), in one place.

Nothing else in neurodl joins path strings inside a MAPS: code asks this class for the file it
wants. Names that come from users (group names, metrics) are checked before they become folders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# room left in a file name (255 bytes) for what is added to a name: suffixes, temporary names
MAX_NAME_LENGTH = 100
TRAINING_GROUPS = ("train", "validation")


def safe_name(value: str, what: str) -> str:
    """``value`` if it can be one folder name (no separator, no '..'), else a UsageError."""
    if not SAFE_NAME.match(value) or ".." in value:
        raise UsageError(f"{what} '{value}' cannot name a folder: use letters, digits, '.', '_', "
                         "'+' and '-' only")
    if len(value) > MAX_NAME_LENGTH:
        raise UsageError(f"{what} '{value[:20]}...' is {len(value)} characters long: use at most "
                         f"{MAX_NAME_LENGTH}")
    return value


@dataclass(frozen=True)
class MapsLayout:
    """The files of one MAPS, rooted at ``OUTPUT_DIR/maps/<name>`` (or any folder)."""

    root: Path

    @classmethod
    def under(cls, output_dir: Path, name: str) -> MapsLayout:
        return cls(Path(output_dir) / "maps" / safe_name(name, "MAPS name"))

    # --- the experiment --------------------------------------------------------------------
    @property
    def maps_json(self) -> Path:
        return self.root / "maps.json"

    @property
    def environment_json(self) -> Path:
        return self.root / "environment.json"

    @property
    def summary_tsv(self) -> Path:
        return self.root / "summary.tsv"

    @property
    def report_html(self) -> Path:
        """The visual report of the whole MAPS (rewritten at the end of every group-level run)."""
        return self.root / "report.html"

    def exists(self) -> bool:
        return self.maps_json.is_file()

    # --- data groups -----------------------------------------------------------------------
    @property
    def groups(self) -> Path:
        return self.root / "groups"

    @property
    def train_validation_tsv(self) -> Path:
        """Everything ever seen in training: the leakage guard compares new groups with it."""
        return self.groups / "train+validation.tsv"

    @property
    def split_summary_tsv(self) -> Path:
        return self.groups / "split_summary.tsv"

    @property
    def duplicates_tsv(self) -> Path:
        return self.groups / "duplicates.tsv"

    def group_data(self, group: str) -> Path:
        """``groups/<group>/data.tsv`` of a data group (test, or one added by predict)."""
        return self.groups / safe_name(group, "group name") / "data.tsv"

    def split_data(self, group: str, split: int) -> Path:
        """``groups/<train|validation>/split-<i>/data.tsv``."""
        if group not in TRAINING_GROUPS:
            raise ValueError(f"split data exist for {TRAINING_GROUPS}, not '{group}'")
        return self.groups / group / f"split-{int(split)}" / "data.tsv"

    def splits_written(self) -> list[int]:
        """The splits whose train and validation tables exist, in order."""
        found = sorted(int(p.name.split("-")[1]) for p in (self.groups / "train").glob("split-*")
                       if p.name.split("-")[1].isdigit())
        return [i for i in found if self.split_data("validation", i).is_file()
                and self.split_data("train", i).is_file()]

    # --- per split -------------------------------------------------------------------------
    def split_dir(self, split: int) -> Path:
        return self.root / f"split-{int(split)}"

    def training_tsv(self, split: int) -> Path:
        return self.split_dir(split) / "training_logs" / "training.tsv"

    def tensorboard_dir(self, split: int) -> Path:
        return self.split_dir(split) / "training_logs" / "tensorboard"

    def checkpoint(self, split: int) -> Path:
        return self.split_dir(split) / "checkpoint.pt"

    def best_dir(self, split: int, metric: str) -> Path:
        return self.split_dir(split) / f"best-{safe_name(metric, 'selection metric')}"

    def model(self, split: int, metric: str) -> Path:
        return self.best_dir(split, metric) / "model.pt"

    def selection_json(self, split: int, metric: str) -> Path:
        """Which epoch gave ``best-<metric>/model.pt``, and its validation value."""
        return self.best_dir(split, metric) / "selection.json"

    def voting_weights(self, split: int, metric: str) -> Path:
        """Per sample position: its weight in image-level voting, from the validation group."""
        return self.best_dir(split, metric) / "voting_weights.tsv"

    def group_summary(self, group: str) -> Path:
        """Demographics of a data group: n, label counts, age, sex, sessions."""
        return self.group_data(group).with_name("summary.tsv")

    def group_json(self, group: str) -> Path:
        """Where a data group came from and which checks ran on it."""
        return self.group_data(group).with_name("group.json")

    def prediction_tsv(self, split: int, metric: str, group: str, level: str) -> Path:
        folder = self.best_dir(split, metric) / safe_name(group, "group name")
        return folder / f"{group}_{safe_name(level, 'level')}_level_prediction.tsv"

    def metrics_tsv(self, split: int, metric: str, group: str, level: str) -> Path:
        folder = self.best_dir(split, metric) / safe_name(group, "group name")
        return folder / f"{group}_{safe_name(level, 'level')}_level_metrics.tsv"

    def interpret_dir(self, split: int, metric: str, group: str, method: str) -> Path:
        folder = self.best_dir(split, metric) / safe_name(group, "group name")
        return folder / f"interpret-{safe_name(method, 'method')}"
