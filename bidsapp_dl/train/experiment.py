"""An experiment: the options recorded in a MAPS, and the objects they build.

Later stages (train, evaluate) take the experiment from ``maps.json``, so that one cluster job
per split, or a resumed job, trains exactly what was split. Only run-control options (which
splits, resume, workers, device...) come from the command line of the later job.
"""

from __future__ import annotations

import json
import logging
from dataclasses import MISSING, dataclass, fields
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ..cli.options import Options
from ..errors import InputMissingError, UsageError
from ..maps.layout import MapsLayout

log = logging.getLogger(__name__)

# what may differ between the job that split and a later job on the same MAPS
RUN_CONTROL = ("bids_dir", "output_dir", "analysis_level", "stages", "splits", "resume",
               "overwrite", "num_workers", "device", "nprocs", "work_dir", "config", "amp",
               "cache_data", "participant_label", "session_label", "maps_name", "maps",
               "group_name", "best", "skip_leak_check", "method", "search_space", "trial",
               "compile")
SELECTION = {
    "classification": ("loss", "BA", "accuracy", "sensitivity", "specificity", "PPV", "NPV", "F1",
                       "MCC", "AUC"),
    "regression": ("loss", "MAE", "RMSE", "R2"),
    "reconstruction": ("loss", "MAE", "RMSE"),
}


def check_selection_metrics(opts: Options) -> None:
    allowed = SELECTION[opts.task]
    bad = [m for m in opts.selection_metrics if m not in allowed]
    if bad:
        raise UsageError(f"--selection-metrics {' '.join(bad)}: not a {opts.task} metric; choose "
                         f"from {' '.join(allowed)}")


def load_experiment(opts: Options) -> Experiment:
    """The experiment of the MAPS ``opts.maps_name``, with this job's run-control options."""
    layout = (MapsLayout(Path(opts.maps).expanduser().absolute()) if opts.maps
              else MapsLayout.under(opts.output_path, opts.maps_name))
    if not layout.exists():
        raise InputMissingError(f"no MAPS at {layout.root}: run --stages split first (or check "
                                "--maps-name)")
    maps = json.loads(layout.maps_json.read_text(encoding="utf-8"))
    known = {f.name for f in fields(Options)}
    recorded = {k: v for k, v in maps["options"].items() if k in known}
    merged = Options(**{**recorded, **{k: getattr(opts, k) for k in RUN_CONTROL}})
    ignored = [k for k in known - set(RUN_CONTROL)
               if getattr(opts, k) != getattr(merged, k) and getattr(opts, k) != _default(k)
               and not (k == "label" and opts.label in ("diagnosis", "age"))]  # filled-in defaults
    if ignored:
        log.warning("the MAPS %s was made with other values of %s: the recorded ones are used "
                    "(a new experiment needs a new --maps-name)", opts.maps_name, ", ".join(sorted(ignored)))
    return Experiment(merged, layout, maps)


def make_extractor_for(opts: Options, shape: tuple[int, ...], affine: np.ndarray):
    """The sample extractor of ``opts.mode`` for tensors of this shape and affine."""
    from ..extract.modes import make_extractor

    if opts.mode == "patch":
        return make_extractor("patch", patch_size=opts.patch_size, stride=opts.stride)
    if opts.mode == "slice":
        return make_extractor("slice", axis=opts.slice_axis, channels=opts.slice_channels,
                              discarded_slices=tuple(opts.discarded_slices))
    if opts.mode == "roi":
        from ..extract.roi import RoiExtractor

        if opts.roi_labels:
            raise UsageError("--roi-labels is not available in this version; give binary masks "
                             "with --roi-mask")
        return RoiExtractor.from_mask_files(opts.roi_mask, shape, affine)
    return make_extractor("image")


def architecture_for(opts: Options, sample_shape: tuple[int, ...]) -> str:
    """The architecture to train (given or default), checked against the task and sample shape."""
    from ..models import check_fit, default_architecture

    name = opts.architecture or default_architecture(opts.task, len(sample_shape) - 1)
    check_fit(name, opts.task, tuple(sample_shape))
    return name


def check_experiment(opts: Options, shape: tuple[int, ...], affine: np.ndarray) -> None:
    """Refuse, before anything is written, an experiment that cannot train on these tensors."""
    check_selection_metrics(opts)
    if "train" in opts.stages or "evaluate" in opts.stages or opts.architecture:
        extractor = make_extractor_for(opts, shape, affine)
        sample = extractor.sample_shape(shape) if opts.mode != "roi" else \
            extractor.sample_shape(shape, 0)
        architecture_for(opts, tuple(sample))


def _default(name: str):
    f = Options.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not MISSING else f.default


@dataclass
class Experiment:
    """Options, MAPS and what they define (classes, sample shape, extractor, model)."""

    opts: Options
    layout: MapsLayout
    maps: dict

    @property
    def task(self) -> str:
        return self.opts.task

    @property
    def seed(self) -> int:
        return int(self.maps["seed"])

    @property
    def classes(self) -> list[str]:
        return list(self.maps["label"].get("classes") or [])

    @property
    def code(self) -> dict[str, int]:
        return dict(self.maps["label"].get("code") or {})

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else 1

    @property
    def root(self) -> Path:
        """OUTPUT_DIR of this run, where the tensor paths of its data tables are relative to."""
        return self.opts.output_path

    @property
    def maps_root(self) -> Path:
        """OUTPUT_DIR of the MAPS, where its own train/validation/test tensors are."""
        return self.layout.root.parent.parent

    def splits(self) -> list[int]:
        written = self.layout.splits_written()
        if not written:
            raise InputMissingError(f"the MAPS {self.layout.root} has no splits; run --stages split")
        wanted = self.opts.splits or written
        missing = [i for i in wanted if i not in written]
        if missing:
            raise UsageError(f"--splits {missing}: the MAPS has splits {written}")
        return wanted

    def table(self, group: str, split: int | None = None) -> pd.DataFrame:
        path = (self.layout.split_data(group, split) if group in ("train", "validation")
                else self.layout.group_data(group))
        return pd.read_csv(path, sep="\t", dtype={"participant_id": str, "session_id": str,
                                                  "label": str if self.task == "classification"
                                                  else float},
                           keep_default_na=False, na_values={"label": ["n/a"]})

    @property
    def reference(self) -> tuple[tuple[int, ...], np.ndarray]:
        """Shape and affine of the stored tensors (recorded in maps.json), for ROI masks."""
        if "tensor_affine" in self.maps:
            return tuple(self.maps["tensor_shape"]), np.array(self.maps["tensor_affine"])
        # a MAPS written before the affine was recorded: read it from a sidecar
        table = self.table("train", self.layout.splits_written()[0])
        sidecar = (self.maps_root / table["tensor"].iloc[0]).with_suffix(".json")
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        return tuple(meta["Shape"]), np.array(meta["Affine"])

    @cached_property
    def extractor(self):
        shape, affine = self.reference
        return make_extractor_for(self.opts, shape, affine)

    def dataset(self, table: pd.DataFrame, train: bool, root: Path | None = None):
        """The Dataset of ``table``, whose tensors are under ``root`` (default: the MAPS's)."""
        from ..data import Augment, TensorDataset

        augment = Augment(self.opts.data_augmentation) if train and self.opts.data_augmentation \
            else None
        return TensorDataset(root or self.maps_root, table, self.extractor, self.task,
                             label_code=self.code or None, augment=augment,
                             cache=self.opts.cache_data)

    def architecture(self, sample_shape: tuple[int, ...]) -> str:
        return architecture_for(self.opts, sample_shape)

    def model(self, sample_shape: tuple[int, ...]):
        from ..models import build_model

        return build_model(self.architecture(sample_shape), self.task, tuple(sample_shape),
                           self.n_outputs, dropout=self.opts.dropout)
