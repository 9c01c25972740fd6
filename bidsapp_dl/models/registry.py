"""The architectures by name: what each fits (task, dimensionality, minimum size) and how to build it.

Inputs are channel-first samples without the batch axis: ``(C, X, Y, Z)`` for image, patch and
roi modes, ``(C, H, W)`` for slice mode.
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bidsapp_dl.errors import UsageError
from bidsapp_dl.models import autoencoders, cnn

TASKS = ("classification", "regression", "reconstruction")

_CLASSES: tuple[type[nn.Module], ...] = (
    cnn.Conv5_FC3, cnn.Conv4_FC3, cnn.Stride_Conv5_FC3, cnn.ResNet3D, cnn.SqueezeExcitationCNN,
    cnn.CNN2D, autoencoders.AE_Conv5_FC3, autoencoders.VAE,
)


@dataclass(frozen=True)
class ModelSpec:
    """What an architecture fits.

    Attributes
    ----------
    name : str
        Name used by ``--architecture``.
    tasks : tuple of str
        Tasks it can be trained for.
    dims : tuple of int
        Spatial dimensionalities it accepts: (3,), (2,) or (2, 3).
    description : str
        One line.
    min_size : int
        Smallest edge, in voxels, of every spatial axis of the input.
    """

    name: str
    tasks: tuple[str, ...]
    dims: tuple[int, ...]
    description: str
    min_size: int = 1


_SPECS = {
    cls.__name__: ModelSpec(cls.__name__, tuple(cls.tasks), tuple(cls.dims),
                            cls.__doc__.strip().splitlines()[0], cls.min_size)
    for cls in _CLASSES
}
_BUILDERS = {cls.__name__: cls for cls in _CLASSES}


def architectures() -> list[ModelSpec]:
    """Every registered architecture, in a fixed order."""
    return list(_SPECS.values())


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(operator.index(n) for n in input_shape)
    except TypeError:
        shape = ()
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise UsageError(f"input shape {tuple(input_shape)}: expected (C, X, Y, Z) or (C, H, W) "
                         f"of positive integers")
    return shape


def default_architecture(task: str, ndim: int) -> str:
    """Architecture used when none is given: Conv5_FC3 (3-D) or CNN2D (2-D), AE_Conv5_FC3 to reconstruct."""
    _check_task(task)
    if ndim not in (2, 3):
        raise UsageError(f"inputs have 2 or 3 spatial dimensions, not {ndim}")
    if task == "reconstruction":
        return "AE_Conv5_FC3"
    return "Conv5_FC3" if ndim == 3 else "CNN2D"


def _misfit(spec: ModelSpec, task: str, shape: tuple[int, ...]) -> str | None:
    """Why ``spec`` cannot serve ``task`` on inputs of ``shape``, or None when it can."""
    ndim = len(shape) - 1
    if task not in spec.tasks:
        return f"{spec.name} is for {' and '.join(spec.tasks)}, not {task}"
    if ndim not in spec.dims:
        wanted = " or ".join(f"{d}-D" for d in spec.dims)
        return f"{spec.name} takes {wanted} inputs, and {shape} is {ndim}-D"
    if min(shape[1:]) < spec.min_size:
        return (f"input {shape} is too small for {spec.name}: it needs at least {spec.min_size} voxels "
                f"along every spatial axis")
    return None


def fitting_architectures(task: str, input_shape: Sequence[int]) -> list[str]:
    """Names of the architectures that can serve ``task`` on inputs of ``input_shape``."""
    _check_task(task)
    shape = _check_shape(input_shape)
    return [spec.name for spec in _SPECS.values() if _misfit(spec, task, shape) is None]


def check_fit(name: str, task: str, input_shape: Sequence[int]) -> None:
    """Raise UsageError unless architecture ``name`` can serve ``task`` on inputs of ``input_shape``."""
    if name not in _SPECS:
        lowered = {n.lower(): n for n in _SPECS}
        close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(lowered[c] for c in close)}? " if close else ""
        raise UsageError(f"unknown architecture {name!r}: {hint}known: {', '.join(_SPECS)}")
    _check_task(task)
    shape = _check_shape(input_shape)
    reason = _misfit(_SPECS[name], task, shape)
    if reason is not None:
        fit = fitting_architectures(task, shape)
        choice = (f"architectures that fit {task} on {shape}: {', '.join(fit)}" if fit else
                  f"no architecture fits {task} on {shape}: use larger patches, ROIs or images")
        raise UsageError(f"{reason}; {choice}")


def _build(name: str, task: str, shape: tuple[int, ...], n_outputs: int, dropout: float) -> nn.Module:
    cls = _BUILDERS[name]
    if task == "reconstruction":
        return cls(shape)
    return cls(shape, n_outputs, dropout)


def build_model(name: str, task: str, input_shape: Sequence[int], n_outputs: int,
                dropout: float = 0.5) -> nn.Module:
    """Build architecture ``name`` for ``task`` on inputs of ``input_shape``.

    Parameters
    ----------
    name, task, input_shape
        As for :func:`check_fit`, which runs first.
    n_outputs : int
        Number of classes (classification), 1 (regression); ignored for reconstruction.
    dropout : float
        Dropout probability before the fully connected layers; unused by the autoencoders.

    Returns
    -------
    torch.nn.Module
        In training mode, parameters drawn from torch's global RNG. Classification gives logits
        ``(B, n_outputs)``, regression ``(B, 1)``, reconstruction a tensor of the input's shape.
    """
    check_fit(name, task, input_shape)
    if task == "regression" and n_outputs != 1:
        raise UsageError(f"regression predicts one value: n_outputs must be 1, not {n_outputs}")
    if task == "classification" and (not isinstance(n_outputs, int) or n_outputs < 1):
        raise UsageError(f"classification needs at least one output, not {n_outputs!r}")
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"dropout must be in [0, 1), not {dropout}")
    return _build(name, task, tuple(input_shape), n_outputs, float(dropout))


def n_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _count(spec: ModelSpec, shape: tuple[int, ...]) -> str:
    task = "classification" if "classification" in spec.tasks else spec.tasks[0]
    if _misfit(spec, task, shape) is not None:
        return "-"
    # on the meta device: no memory, no initialisation, the global RNG untouched
    with torch.device("meta"):
        model = _build(spec.name, task, shape, 2, 0.0)
    return f"{n_parameters(model):,}"


def list_models(input_shape: Sequence[int] | None = None) -> str:
    """A printable table of the architectures.

    With ``input_shape``, a column gives the number of parameters for that input (classification
    with 2 classes, or reconstruction), "-" where the architecture does not fit it.
    """
    header = ["name", "tasks", "dims", "min size"]
    rows = [[s.name, ",".join(s.tasks), ",".join(f"{d}D" for d in s.dims), str(s.min_size)]
            for s in _SPECS.values()]
    if input_shape is not None:
        shape = _check_shape(input_shape)
        header.append(f"parameters for {shape}")
        for row, spec in zip(rows, _SPECS.values()):
            row.append(_count(spec, shape))
    header.append("description")
    for row, spec in zip(rows, _SPECS.values()):
        row.append(spec.description)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r, widths)), r[-1]]) for r in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines)
