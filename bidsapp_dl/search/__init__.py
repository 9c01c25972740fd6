"""Random search: a search space of fixed and sampled options, trials, and their ranking."""

from __future__ import annotations

from .space import (
    DISTRIBUTIONS,
    SEARCHABLE,
    SearchSpace,
    load_search_space,
    search_space_from_dict,
    trial_name,
)
from .summary import DEFAULT_METRIC, summarize_trials

__all__ = [
    "DEFAULT_METRIC",
    "DISTRIBUTIONS",
    "SEARCHABLE",
    "SearchSpace",
    "load_search_space",
    "search_space_from_dict",
    "summarize_trials",
    "trial_name",
]
