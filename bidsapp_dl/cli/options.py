"""The one definition of the command line: every flag, default and help text lives here.

Built with argparse-dataclass from the frozen ``Options`` dataclass. Nothing heavy is imported,
so ``--help`` and ``--version`` answer at once.
"""

# no "from __future__ import annotations": argparse-dataclass reads the real types

import argparse
import difflib
import os
import re
import sys
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Optional

from argparse_dataclass import ArgumentParser

from .. import __version__
from ..errors import AnalysisLevelError, UsageError
from ..maps.layout import MAX_NAME_LENGTH, safe_name

ANALYSIS_LEVELS = ("participant", "group")
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_LABEL_LENGTH = 64  # sub-<label>_ses-<label>_..._desc-tensor_T1w.json stays a valid file name
STAGES = ("split", "train", "evaluate", "predict", "interpret", "report", "search-summary")


def _opt(help: str, group: str = "common", **meta: Any) -> dict:
    return dict(help=help, group=group, **meta)


@dataclass(frozen=True)
class Options:
    """Every option of the command line, with its default and help text."""

    bids_dir: str = field(metadata=_opt("the root of the BIDS dataset", "positional",
                                        args=["bids_dir"], metavar="BIDS_DIR"))
    output_dir: str = field(metadata=_opt(
        "where the derivative dataset is written (e.g. BIDS_DIR/derivatives/neurodl)",
        "positional", args=["output_dir"], metavar="OUTPUT_DIR"))
    analysis_level: str = field(metadata=_opt(
        "participant: convert every selected image into a tensor; group: split, train, evaluate",
        "positional", args=["analysis_level"], metavar="{participant,group}"))

    # --- which data ------------------------------------------------------------------------
    participant_label: list[str] = field(default_factory=list, metadata=_opt(
        "participant labels, with or without 'sub-' (default: all)", "selection",
        args=["--participant-label", "--participant_label"], nargs="+", metavar="LABEL"))
    session_label: list[str] = field(default_factory=list, metadata=_opt(
        "session labels, with or without 'ses-' (default: all)", "selection",
        args=["--session-label", "--session_label"], nargs="+", metavar="LABEL"))
    bids_filter_file: Optional[str] = field(default=None, metadata=_opt(
        "JSON file {query: {entity: value}} as in fMRIPrep; query 't1w' selects the input images "
        "(default {\"datatype\": \"anat\", \"suffix\": \"T1w\"}); null = entity absent, \"*\" = any",
        "selection", metavar="FILE"))
    derivatives: list[str] = field(default_factory=list, metadata=_opt(
        "take the input images from these preprocessed derivative datasets (fMRIPrep, Clinica, "
        "FastSurfer...) instead of the raw data", "selection", nargs="+", metavar="PATH"))
    space: Optional[str] = field(default=None, metadata=_opt(
        "with --derivatives: the 'space' entity of the images to take (e.g. MNI152NLin2009cAsym)",
        "selection"))
    desc: Optional[str] = field(default=None, metadata=_opt(
        "with --derivatives: the 'desc' entity of the images to take (e.g. preproc)", "selection"))
    skip_bids_validation: bool = field(default=False, metadata=_opt(
        "do not validate BIDS_DIR", "selection"))
    bids_database_dir: Optional[str] = field(default=None, metadata=_opt(
        "where the pybids index is kept: reused when present, written when absent", "selection",
        metavar="DIR"))

    # --- resources -------------------------------------------------------------------------
    work_dir: Optional[str] = field(default=None, metadata=_opt(
        "scratch space (default: a temporary folder)", "resources", args=["-w", "--work-dir"],
        metavar="DIR"))
    nprocs: Optional[int] = field(default=None, metadata=_opt(
        "images extracted at once, one CPU each: threads of one process up to 4, processes "
        "beyond (default: the CPUs available to this process)", "resources",
        args=["--nprocs", "--n-cpus", "--n_cpus"], metavar="N"))
    device: str = field(default="auto", metadata=_opt(
        "auto, cpu, cuda or cuda:N", "resources"))
    seed: Optional[int] = field(default=None, metadata=_opt(
        "the master seed from which every random generator is derived (default: drawn at "
        "random and recorded)", "resources", metavar="INT"))
    config: Optional[str] = field(default=None, metadata=_opt(
        "TOML or JSON file with the same keys as these options; the command line wins",
        "resources", metavar="FILE"))
    overwrite: bool = field(default=False, metadata=_opt(
        "redo work that is already done and up to date", "resources"))

    # --- participant level -----------------------------------------------------------------
    preprocessing: Literal["minimal", "none"] = field(default="minimal", metadata=_opt(
        "minimal: canonical RAS orientation, isotropic resampling, crop/pad centred on the head, "
        "intensity normalisation; none: take (derivative) images as they are", "participant"))
    voxel_size: float = field(default=1.0, metadata=_opt(
        "isotropic voxel size of the tensors in mm (minimal preprocessing)", "participant",
        metavar="MM"))
    target_shape: list[int] = field(default_factory=lambda: [169, 208, 179], metadata=_opt(
        "tensor shape in voxels, centred on the head (minimal preprocessing)", "participant",
        nargs=3, metavar=("X", "Y", "Z")))
    normalization: Literal["robust-minmax", "zscore", "minmax", "none"] = field(
        default="robust-minmax", metadata=_opt(
            "intensity normalisation over the head: robust-minmax maps the 0.5-99.5th "
            "percentiles to 0-1", "participant"))
    dtype: Literal["float32", "float16"] = field(default="float32", metadata=_opt(
        "data type of the stored tensors (float16 halves disk and memory)", "participant"))
    with_dseg: bool = field(default=False, metadata=_opt(
        "also carry each image's discrete segmentation (suffix dseg, same participant, session "
        "and space, in --derivatives; narrow it with the 'dseg' query of --bids-filter-file) "
        "onto the tensor's grid, for ROIs given as label values", "participant"))
    skip_bad_images: bool = field(default=False, metadata=_opt(
        "skip unreadable or unusable images with a warning (listed in logs/) instead of failing",
        "participant"))

    # --- group level ---------------------------------------------------------------------
    stages: list[str] = field(default_factory=lambda: ["split", "train", "evaluate"], metadata=_opt(
        "what to do, in order: " + ", ".join(STAGES), "group", nargs="+",
        choices=STAGES, metavar="STAGE"))
    maps_name: Optional[str] = field(default=None, metadata=_opt(
        "name of the MAPS (the experiment folder) under OUTPUT_DIR/maps (default: <task>-<label>)",
        "group", metavar="NAME"))
    task: Literal["classification", "regression", "reconstruction"] = field(
        default="classification", metadata=_opt("what the network learns", "group"))
    label: Optional[str] = field(default=None, metadata=_opt(
        "the column of participants.tsv, or of sessions.tsv for per-session labels, to learn "
        "(default: diagnosis for classification, age for regression)", "group", metavar="COLUMN"))
    drop_invalid_labels: bool = field(default=False, metadata=_opt(
        "drop images whose regression label is not a number (e.g. 89+) instead of failing",
        "group"))
    n_splits: int = field(default=5, metadata=_opt(
        "K-fold cross-validation over participants; 1 = a single train/validation split",
        "group", metavar="K"))
    test_size: float = field(default=0.2, metadata=_opt(
        "held-out test group: a fraction of the participants (< 1), a count (>= 1), or 0 for none",
        "group", metavar="SIZE"))
    validation_size: float = field(default=0.2, metadata=_opt(
        "validation group when --n-splits is 1: a fraction or a count of participants", "group",
        metavar="SIZE"))
    splits: list[int] = field(default_factory=list, metadata=_opt(
        "only these splits (e.g. one cluster job per split; default all)", "group", nargs="+",
        metavar="I"))

    maps: Optional[str] = field(default=None, metadata=_opt(
        "a MAPS anywhere (e.g. trained on another dataset), for predict and interpret; "
        "--maps-name names one under OUTPUT_DIR/maps", "group", metavar="PATH"))
    group_name: Optional[str] = field(default=None, metadata=_opt(
        "the data group that predict and interpret write (e.g. the name of a new cohort)",
        "group", metavar="NAME"))
    best: list[str] = field(default_factory=list, metadata=_opt(
        "predict and interpret with the best-<METRIC> models only (default: every selection "
        "metric of the MAPS)", "group", nargs="+", metavar="METRIC"))
    skip_leak_check: bool = field(default=False, metadata=_opt(
        "predict on a group that shares participants or images with the training data anyway "
        "(the results are then biased; recorded in the group's metadata)", "group"))

    method: Literal["gradients", "grad-cam"] = field(default="grad-cam", metadata=_opt(
        "saliency method of the interpret stage", "group"))
    search_space: Optional[str] = field(default=None, metadata=_opt(
        "random search: a TOML file of fixed and sampled options; with --trial I this job "
        "trains the I-th configuration into the MAPS <maps-name>-trial-<I>", "group",
        metavar="FILE"))
    trial: Optional[int] = field(default=None, metadata=_opt(
        "with --search-space: which configuration (0, 1, ...; e.g. a job-array index)", "group",
        metavar="I"))

    # --- what a sample is ------------------------------------------------------------------
    mode: Literal["image", "patch", "roi", "slice"] = field(default="image", metadata=_opt(
        "what one sample is: the whole image, a 3D patch, a 2D slice, or a region of interest",
        "mode"))
    patch_size: int = field(default=50, metadata=_opt("patch edge in voxels (patch mode)", "mode",
                                                       metavar="N"))
    stride: int = field(default=50, metadata=_opt("distance between patches (patch mode)", "mode",
                                                   metavar="N"))
    slice_axis: Literal[0, 1, 2] = field(default=0, metadata=_opt(
        "0 sagittal, 1 coronal, 2 axial (slice mode)", "mode"))
    discarded_slices: list[int] = field(default_factory=lambda: [0, 0], metadata=_opt(
        "slices left out at the start and end of the axis (slice mode): one or two numbers",
        "mode", nargs="+", metavar="N"))
    slice_channels: Literal["single", "rgb"] = field(default="single", metadata=_opt(
        "one channel, or the slice copied into three (slice mode)", "mode"))
    roi_mask: list[str] = field(default_factory=list, metadata=_opt(
        "binary NIfTI masks in the space of the stored tensors, one sample per mask (roi mode)",
        "mode", nargs="+", metavar="FILE"))
    roi_labels: list[int] = field(default_factory=list, metadata=_opt(
        "label values of each image's segmentation stored with --with-dseg, one sample per "
        "value (roi mode)", "mode", nargs="+", metavar="VALUE"))
    roi_box: list[int] = field(default_factory=list, metadata=_opt(
        "with --roi-labels: a fixed box (X Y Z voxels) centred on each region, so that every "
        "participant gives samples of one size", "mode", nargs=3, metavar=("X", "Y", "Z")))

    # --- training --------------------------------------------------------------------------
    architecture: Optional[str] = field(default=None, metadata=_opt(
        "network (--list-models shows them; default: Conv5_FC3 in 3D, CNN2D for slices, "
        "AE_Conv5_FC3 for reconstruction)", "training", metavar="NAME"))
    epochs: int = field(default=20, metadata=_opt("maximum number of epochs", "training",
                                                   metavar="N"))
    batch_size: int = field(default=8, metadata=_opt("samples per batch", "training", metavar="N"))
    learning_rate: float = field(default=1e-4, metadata=_opt("learning rate", "training",
                                                             metavar="LR"))
    weight_decay: float = field(default=1e-4, metadata=_opt("weight decay", "training",
                                                            metavar="WD"))
    optimizer: Literal["Adam", "AdamW", "SGD", "RMSprop"] = field(default="Adam", metadata=_opt(
        "optimizer", "training"))
    scheduler: Literal["none", "plateau", "cosine", "step"] = field(default="none", metadata=_opt(
        "learning-rate schedule: plateau (halve when the validation loss stalls), cosine, "
        "step (x0.1 every third of the epochs)", "training"))
    dropout: float = field(default=0.5, metadata=_opt("dropout before the dense layers",
                                                      "training", metavar="P"))
    patience: int = field(default=0, metadata=_opt(
        "stop after this many epochs without validation-loss improvement (0: never)", "training",
        metavar="N"))
    tolerance: float = field(default=0.0, metadata=_opt(
        "an improvement of the validation loss smaller than this does not count", "training",
        metavar="T"))
    accumulation_steps: int = field(default=1, metadata=_opt(
        "batches whose gradients are summed before each optimizer step", "training",
        metavar="N"))
    selection_metrics: list[str] = field(default_factory=lambda: ["loss"], metadata=_opt(
        "validation metrics for which the best model is kept (e.g. loss BA)", "training",
        nargs="+", metavar="METRIC"))
    selection_threshold: Optional[float] = field(default=None, metadata=_opt(
        "patch/slice/roi positions whose validation balanced accuracy is below this get no vote "
        "in the image-level prediction", "training", metavar="BA"))
    data_augmentation: list[str] = field(default_factory=list, metadata=_opt(
        "augmentations applied in training only: noise intensity affine bias blur flip",
        "training", nargs="+", metavar="NAME"))
    sampler: Literal["random", "weighted"] = field(default="random", metadata=_opt(
        "random order, or weighted by the inverse class frequency", "training"))
    evaluate_train: bool = field(default=False, metadata=_opt(
        "after each epoch, evaluate the training set in a second pass (metrics otherwise come "
        "from the training pass itself)", "training"))
    amp: bool = field(default=False, metadata=_opt(
        "automatic mixed precision on CUDA (bf16 where supported)", "training"))
    deterministic: bool = field(default=False, metadata=_opt(
        "deterministic algorithms only (slower on GPUs; the CPU is deterministic anyway)",
        "training"))
    num_workers: int = field(default=0, metadata=_opt(
        "data loader workers, reading batches ahead of the network: threads for samples of 4 MB "
        "or more (whole images), processes for smaller ones (0: in the main process)", "training",
        metavar="N"))
    compile: bool = field(default=False, metadata=_opt(
        "torch.compile the network (faster on GPUs once compiled; needs a C++ compiler)",
        "training"))
    cache_data: bool = field(default=False, metadata=_opt(
        "load every tensor into memory once (small datasets)", "training"))
    transfer_from: Optional[str] = field(default=None, metadata=_opt(
        "start from the weights of another MAPS (split i from its split i): CNN to CNN, or an "
        "autoencoder's encoder to a CNN; its training participants are carried forward and kept "
        "out of this experiment's test group", "training", metavar="MAPS"))
    reserve_test_of: list[str] = field(default_factory=list, metadata=_opt(
        "keep the test participants of these MAPS (e.g. a child task split first) in this "
        "experiment's test group, never in its training: it can then be their --transfer-from",
        "training", nargs="+", metavar="MAPS"))
    transfer_selection: str = field(default="loss", metadata=_opt(
        "which best model of --transfer-from to start from", "training", metavar="METRIC"))
    freeze: Literal["none", "features"] = field(default="none", metadata=_opt(
        "with --transfer-from: keep the transferred convolutional layers fixed", "training"))
    resume: bool = field(default=False, metadata=_opt(
        "continue an interrupted training from its last checkpoint", "training"))

    @property
    def bids_path(self) -> Path:
        return Path(self.bids_dir).expanduser().absolute()

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir).expanduser().absolute()

    @property
    def n_workers(self) -> int:
        if self.nprocs is not None:
            return self.nprocs
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


GROUP_TITLES = {
    "selection": "data selection",
    "resources": "resources and run control",
    "participant": "participant level (tensor extraction)",
    "group": "group level (labels, splits, the MAPS)",
    "mode": "group level: samples (mode)",
    "training": "group level: training",
}

CLI_FIELDS = list(fields(Options))
OPTION_NAMES = {f.name for f in CLI_FIELDS}


class Parser(ArgumentParser):
    """argparse with exit code 64 and "did you mean" for bad choices and unknown options."""

    def error(self, message: str) -> None:  # noqa: D102 - argparse API
        hint = _suggestion(message, self)
        self.print_usage(sys.stderr)
        self.exit(UsageError.exit_code, f"{self.prog}: error: {message}{hint}\n")


def _suggestion(message: str, parser: argparse.ArgumentParser) -> str:
    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        options = re.findall(r"'?([^',\s]+)'?", choice.group(2))
        close = difflib.get_close_matches(choice.group(1), options, n=1, cutoff=0.5)
        return f"; did you mean '{close[0]}'?" if close else ""
    unknown = re.search(r"unrecognized arguments: (.*)", message)
    if unknown:
        known = [s for a in parser._actions for s in a.option_strings]
        hints = []
        for token in unknown.group(1).split():
            if token.startswith("-"):
                close = difflib.get_close_matches(token.split("=")[0], known, n=1, cutoff=0.6)
                if close:
                    hints.append(f"'{close[0]}' for '{token}'")
        return f"; did you mean {', '.join(hints)}?" if hints else ""
    return ""


def build_parser() -> Parser:
    """The parser: positionals, then one argument group per concern."""
    parser = Parser(
        Options, prog="neurodl", allow_abbrev=False,
        description="neurodl: reproducible, leakage-proof deep learning on BIDS datasets "
                    "(a BIDS App). Participant level: every selected image becomes a "
                    "memory-mapped tensor. Group level: split, train, evaluate, into a MAPS.",
        epilog="neurodl --list-models [--input-shape C X Y Z] lists the network architectures.",
    )
    # argparse-dataclass adds every field to the parser itself; regroup them for --help
    by_dest = {a.dest: a for a in parser._actions}
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for f in CLI_FIELDS:
        key = f.metadata["group"]
        if key in groups:
            action = by_dest[f.name]
            parser._optionals._group_actions.remove(action)
            groups[key]._group_actions.append(action)
            action.default = MISSING
            action.help = _with_default(f)
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more messages (repeat for more)")
    parser.add_argument("--version", action="version", version=f"neurodl {__version__}")
    return parser


def _with_default(f) -> str:
    """Help text plus the dataclass default, unless the text already speaks of it."""
    text = f.metadata["help"]
    default = f.default_factory() if f.default is MISSING else f.default
    if "default" in text or default in (None, False, [], MISSING):
        return text
    shown = " ".join(map(str, default)) if isinstance(default, list) else default
    return f"{text} (default: {shown})"


def _explicit(parser: Parser, argv: list[str]) -> dict[str, Any]:
    """The options given explicitly (argparse-dataclass would fill in the defaults)."""
    namespace, extras = argparse.ArgumentParser.parse_known_args(parser, argv)
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return {k: v for k, v in vars(namespace).items() if v is not MISSING}


def read_config(path: str) -> dict[str, Any]:
    """Read a TOML or JSON config; keys may use dashes or underscores."""
    from ..maps.io import read_settings

    data = read_settings(path, "--config")
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a table of options, found {type(data).__name__}")
    data = data.get("options", data)  # a maps.json keeps its options in one table
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in OPTION_NAMES:
            close = difflib.get_close_matches(name, sorted(OPTION_NAMES), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UsageError(f"--config {path}: unknown option '{key}'{hint}")
        out[name] = value
    return out


def _config_tokens(config: dict[str, Any]) -> list[str]:
    """Turn config values into command-line tokens, so argparse checks them the same way."""
    by_name = {f.name: f for f in CLI_FIELDS}
    tokens: list[str] = []
    for name, value in config.items():
        f = by_name[name]
        if f.metadata.get("group") == "positional" or name == "config" or value is None:
            continue
        flag = f.metadata.get("args", [f"--{name.replace('_', '-')}"])[0]
        if isinstance(value, bool):
            if value:
                tokens.append(flag)
        elif isinstance(value, (list, tuple)):
            if value:
                tokens += [flag, *map(str, value)]
        else:
            tokens += [flag, str(value)]
    return tokens


def parse_args(argv: list[str] | None = None) -> tuple[Options, int]:
    """Parse the command line (and ``--config``) into checked ``Options`` and a verbosity."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    cli = _explicit(parser, argv)
    values: dict[str, Any] = {}
    if cli.get("config"):
        config = read_config(cli["config"])
        positionals = [cli["bids_dir"], cli["output_dir"], cli["analysis_level"]]
        config_parser = build_parser()
        config_parser.prog = f"neurodl (in {cli['config']})"
        values = _explicit(config_parser, positionals + _config_tokens(config))
    values.update(cli)
    verbosity = values.pop("verbose", 0)
    return check(Options(**values)), verbosity


def strip_label(label: str, prefix: str) -> str:
    """'sub-01' -> '01'; refuse anything that could become a path component."""
    value = label[len(prefix):] if label.startswith(prefix) else label
    if not LABEL_RE.match(value):
        raise UsageError(
            f"label '{label}' is not a valid BIDS label: only letters and digits may follow "
            f"'{prefix}'; give the label alone, e.g. {prefix}01 or 01")
    if len(value) > MAX_LABEL_LENGTH:
        raise UsageError(f"label '{label[:20]}...' is {len(value)} characters long: BIDS labels "
                         f"here have at most {MAX_LABEL_LENGTH}")
    return value


def _is_relative_to(path: Path, other: Path) -> bool:
    try:
        path.relative_to(other)
    except ValueError:
        return False
    return True


def check(opts: Options) -> Options:
    """Normalise labels and refuse option combinations that cannot work."""
    if opts.analysis_level not in ANALYSIS_LEVELS:
        close = difflib.get_close_matches(opts.analysis_level, ANALYSIS_LEVELS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise AnalysisLevelError(
            f"unknown analysis level '{opts.analysis_level}': expected participant or group{hint}")
    opts = replace(
        opts,
        participant_label=list(dict.fromkeys(strip_label(x, "sub-") for x in opts.participant_label)),
        session_label=list(dict.fromkeys(strip_label(x, "ses-") for x in opts.session_label)),
    )
    bids, out = opts.bids_path.resolve(), opts.output_path.resolve()
    suggestion = bids / "derivatives" / "neurodl"
    if out == bids:
        raise UsageError(f"OUTPUT_DIR must not be BIDS_DIR ({bids}); use e.g. {suggestion}")
    if _is_relative_to(out, bids) and not _is_relative_to(out, bids / "derivatives"):
        raise UsageError(f"OUTPUT_DIR {out} is inside BIDS_DIR but not under its derivatives/ "
                         f"folder, which would corrupt the raw dataset; use e.g. {suggestion}")
    if opts.work_dir and _is_relative_to(Path(opts.work_dir).resolve(), bids):
        raise UsageError(f"--work-dir {opts.work_dir} is inside BIDS_DIR; put it elsewhere")
    if opts.nprocs is not None and opts.nprocs < 1:
        raise UsageError(f"--nprocs {opts.nprocs}: must be at least 1")
    if opts.voxel_size <= 0:
        raise UsageError(f"--voxel-size {opts.voxel_size}: must be positive")
    if any(n < 1 for n in opts.target_shape):
        raise UsageError(f"--target-shape {opts.target_shape}: every size must be at least 1")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", opts.device):
        raise UsageError(f"--device {opts.device}: expected auto, cpu, cuda or cuda:N")
    for name in ("space", "desc"):
        value = getattr(opts, name)
        if value is not None and not LABEL_RE.match(value):
            raise UsageError(f"--{name} {value}: only letters and digits are allowed")
    if opts.maps_name is not None and (not NAME_RE.match(opts.maps_name) or ".." in opts.maps_name):
        raise UsageError(f"--maps-name {opts.maps_name}: not a folder name; use letters, digits, '.', "
                         "'_' and '-' only, e.g. --maps-name adcn (it names a folder under OUTPUT_DIR/maps)")
    if opts.maps_name is not None and len(opts.maps_name) > MAX_NAME_LENGTH:
        raise UsageError(f"--maps-name {opts.maps_name[:20]}...: {len(opts.maps_name)} characters "
                         f"long; use at most {MAX_NAME_LENGTH} (it names a folder)")
    if opts.group_name is not None:
        safe_name(opts.group_name, "--group-name")
    if opts.n_splits < 1:
        raise UsageError(f"--n-splits {opts.n_splits}: must be at least 1")
    for name in ("test_size", "validation_size"):
        value = getattr(opts, name)
        if value < 0 or (value >= 1 and value != int(value)):
            raise UsageError(f"--{name.replace('_', '-')} {value}: a fraction in [0, 1) or a "
                             "whole number of participants")
    if opts.validation_size == 0 and opts.n_splits == 1:
        raise UsageError("--validation-size 0 with --n-splits 1 leaves no validation group")
    bad_splits = [i for i in opts.splits if not 0 <= i < opts.n_splits]
    if bad_splits:
        raise UsageError(f"--splits {bad_splits}: splits are numbered 0 to {opts.n_splits - 1}")
    for name in ("epochs", "batch_size", "accumulation_steps", "patch_size", "stride"):
        if getattr(opts, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(opts, name)}: must be at least 1")
    if opts.num_workers < 0 or opts.patience < 0 or opts.learning_rate <= 0:
        raise UsageError("--num-workers and --patience cannot be negative, --learning-rate must "
                         "be positive")
    if len(opts.discarded_slices) not in (1, 2) or min(opts.discarded_slices) < 0:
        raise UsageError(f"--discarded-slices {opts.discarded_slices}: one or two numbers >= 0")
    if opts.mode == "roi" and not (opts.roi_mask or opts.roi_labels):
        raise UsageError("--mode roi needs --roi-mask FILE... or --roi-labels VALUE...")
    if opts.label is None and opts.task != "reconstruction":
        opts = replace(opts, label="diagnosis" if opts.task == "classification" else "age")
    if (opts.search_space is None) != (opts.trial is None) and "search-summary" not in opts.stages:
        raise UsageError("--search-space and --trial go together (one trial per job)")
    if opts.search_space and opts.seed is None:
        raise UsageError("--search-space needs --seed: every trial job must draw from the same "
                         "seed")
    if opts.trial is not None and opts.trial < 0:
        raise UsageError(f"--trial {opts.trial}: trials are numbered from 0")
    if opts.maps and opts.maps_name:
        raise UsageError("give --maps PATH or --maps-name NAME, not both")
    if opts.maps:
        opts = replace(opts, maps_name=Path(opts.maps).name)
    if opts.maps_name is None:
        label = re.sub(r"[^A-Za-z0-9._-]", "", opts.label or "")
        opts = replace(opts, maps_name=f"{opts.task}-{label}" if label and opts.task !=
                       "reconstruction" else opts.task)
    if (opts.space or opts.desc) and not opts.derivatives:
        raise UsageError("--space and --desc filter derivative images: give --derivatives too")
    return opts


def resolved(opts: Options) -> dict[str, Any]:
    """Every option with its value, defaults included (what maps.json and logs record)."""
    return {f.name: getattr(opts, f.name) for f in fields(opts)}
