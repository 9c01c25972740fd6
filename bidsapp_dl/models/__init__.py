"""Network architectures (2-D and 3-D) and their registry.

Imports torch: the group level imports this package, the command line's ``--help`` does not.
"""

from __future__ import annotations

from bidsapp_dl.models.registry import (
    TASKS,
    ModelSpec,
    architectures,
    build_model,
    check_fit,
    default_architecture,
    fitting_architectures,
    list_models,
    n_parameters,
)

__all__ = [
    "TASKS",
    "ModelSpec",
    "architectures",
    "build_model",
    "check_fit",
    "default_architecture",
    "fitting_architectures",
    "list_models",
    "n_parameters",
]
