"""The ``interpret`` stage: saliency maps of a data group, as NIfTI images in each image's space.

Maps are computed per sample, put back on the stored tensor's voxel grid (patches, slices and
ROIs at their place) and saved with the tensor's own affine, so they overlay on the
preprocessed image in any viewer. The group mean is a voxel-wise mean: exact when the images
share one grid (template space), approximate with minimal preprocessing (each image is centred
on its own head).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import DataError, UsageError
from ..maps.weights import load_weights
from ..train.experiment import Experiment, load_experiment
from ..train.trainer import device_of
from .interpret import saliency, save_nifti, to_volume

log = logging.getLogger(__name__)


def _group(exp: Experiment, name: str) -> tuple[pd.DataFrame, Path]:
    """The group's images and the OUTPUT_DIR their tensors are in; refuses training groups."""
    if name in ("train", "validation"):
        raise UsageError(f"--group-name {name}: interpreting the data a model was trained on "
                         "says little about it; use test or a group added by predict")
    path = exp.layout.group_data(name)
    if not path.is_file():
        raise UsageError(f"no data group '{name}' in {exp.layout.root}: use test, or add the "
                         "group with --stages predict first")
    meta = exp.layout.group_json(name)
    root = Path(json.loads(meta.read_text())["output_dir"]) if meta.is_file() else exp.maps_root
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if exp.task == "classification":
        # labels are not needed to explain the predicted class
        table["label"] = exp.classes[0]
    elif exp.task == "regression":
        table["label"] = 0.0
    return table, root


def interpret_group(opts) -> None:
    exp = load_experiment(opts)
    if exp.task == "reconstruction":
        raise UsageError("interpretation explains a classification or regression output; this "
                         "MAPS does reconstruction")
    name = opts.group_name or "test"
    table, root = _group(exp, name)
    device = device_of(exp.opts)
    selections = opts.best or exp.opts.selection_metrics
    dataset = exp.dataset(table, train=False, root=root)
    for split in exp.splits():
        for selection in selections:
            path = exp.layout.model(split, selection)
            if not path.is_file():
                raise DataError(f"{path} is missing: train split {split} first")
            model = exp.model(dataset.sample_shape).to(device)
            model.load_state_dict(load_weights(path, device))
            folder = exp.layout.interpret_dir(split, selection, name, opts.method)
            volumes = [_explain_image(exp, model, dataset, k, root, folder, opts.method, device)
                       for k in range(dataset.n_images)]
            mean = np.mean(np.stack(volumes), axis=0).astype(np.float32)
            affine = _affine(root, table["tensor"].iloc[0])
            save_nifti(mean, affine, folder / f"{name}_mean_saliency.nii.gz")
            log.info("split %d, best-%s: %s maps of %d image(s) in %s", split, selection,
                     opts.method, len(volumes), folder)


def _affine(root: Path, tensor: str) -> np.ndarray:
    meta = json.loads((root / tensor).with_suffix(".json").read_text(encoding="utf-8"))
    return np.array(meta["Affine"])


def _explain_image(exp: Experiment, model, dataset, k: int, root: Path, folder: Path,
                   method: str, device) -> np.ndarray:
    """The saliency volume of image ``k`` (all its samples), saved beside the others."""
    counts = dataset.samples_per_image
    first = int(counts[:k].sum())
    indices = list(range(first, first + int(counts[k])))
    batch = torch.stack([dataset[i]["image"] for i in indices]).to(device)
    maps = saliency(model, batch, method)
    tensor = dataset.paths[k]
    volume = to_volume(list(maps), [int(dataset.sample_of(i)) for i in indices], exp.extractor,
                       tuple(dataset.shapes[k]))
    out = folder / (tensor.name[: -len(".npy")] + "_saliency.nii.gz")
    save_nifti(volume, _affine(root, tensor.relative_to(root).as_posix()), out)
    return volume
