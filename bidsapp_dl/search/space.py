"""Random-search spaces: a TOML file of fixed and sampled options, and deterministic trials.

A search space is a TOML (or JSON) file with two tables::

    # the same value in every trial
    [fixed]
    epochs = 20
    selection_metrics = ["loss", "BA"]

    # one table per sampled option
    [sample.learning_rate]
    distribution = "log-uniform"    # uniform | log-uniform | int-uniform | choice
    low = 1e-5
    high = 1e-2
    [sample.batch_size]
    distribution = "choice"
    values = [4, 8, 16]
    [sample.patience]
    distribution = "int-uniform"    # low and high both included
    low = 3
    high = 10
    [sample.data_augmentation]
    distribution = "choice"
    values = [[], ["noise"], ["noise", "affine"]]

Keys are names of ``Options`` fields, with dashes or underscores. ``uniform`` and
``log-uniform`` (``low > 0``) draw floats in ``[low, high)`` for float options, ``int-uniform``
draws an integer in ``[low, high]`` for int options, and ``choice`` picks one of ``values``
with equal probability, for options of any type (each value is checked against the option's
type and choices). Only experiment options may appear: training, model, augmentation and
mode (sample) options. Data selection, labels, splits and run control come from the command
line, so that every trial is trained and validated on the same participants and the trials
can be compared.

Trial ``i`` of master seed ``s`` draws each option from its own generator seeded with
``(s, i, option)``: a trial does not depend on which other trials ran, nor an option on which
other options are sampled.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import typing
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np

from ..cli.options import Options
from ..errors import UsageError
from ..maps.layout import safe_name
from ..train.experiment import RUN_CONTROL

DISTRIBUTIONS = ("uniform", "log-uniform", "int-uniform", "choice")
_SPEC_KEYS = {"uniform": {"low", "high"}, "log-uniform": {"low", "high"},
              "int-uniform": {"low", "high"}, "choice": {"values"}}
_FIELDS = {f.name: f for f in dataclasses.fields(Options)}
# how the run goes, not what is learnt (the options a later job may change): never searched
SEARCHABLE = frozenset(name for name, f in _FIELDS.items()
                       if f.metadata.get("group") in ("training", "mode")
                       and name not in RUN_CONTROL)


def trial_name(base: str, trial: int) -> str:
    """The MAPS name of one trial: ``trial_name("search", 7) == "search-trial-007"``."""
    if isinstance(trial, bool) or not isinstance(trial, int) or trial < 0:
        raise ValueError(f"trial must be a non-negative integer, not {trial!r}")
    return f"{safe_name(base, 'search name')}-trial-{trial:03d}"


def _value_type(name: str) -> Any:
    """The option's type without Optional (no TOML value is null)."""
    tp = _FIELDS[name].type
    if get_origin(tp) is typing.Union:
        tp = next(a for a in get_args(tp) if a is not type(None))
    return tp


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_scalar(tp: Any, value: Any) -> tuple[bool, Any]:
    """(accepted, normalised value) of one scalar against ``tp``."""
    if get_origin(tp) is Literal:
        # type() as well: True == 1 must not pass for Literal[0, 1, 2]
        return any(type(value) is type(a) and value == a for a in get_args(tp)), value
    if tp is float:
        return _is_number(value), float(value) if _is_number(value) else value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    return isinstance(value, tp), value


def _describe(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    if get_origin(tp) is list:
        return f"a list of {_describe(get_args(tp)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp))


def check_value(name: str, value: Any, where: str) -> Any:
    """``value`` normalised to the type of option ``name`` (int to float...), else a UsageError."""
    tp = _value_type(name)
    if get_origin(tp) is list:
        item = get_args(tp)[0]
        checked = [_check_scalar(item, v) for v in value] if isinstance(value, list) else [(False, 0)]
        nargs = _FIELDS[name].metadata.get("nargs")
        if all(ok for ok, _ in checked) and (not isinstance(nargs, int) or len(value) == nargs):
            return [v for _, v in checked]
        size = f" of {nargs} values" if isinstance(nargs, int) else ""
        raise UsageError(f"{where}: {json.dumps(value)} is not {_describe(tp)}{size}")
    ok, normalised = _check_scalar(tp, value)
    if not ok:
        raise UsageError(f"{where}: {json.dumps(value)} is not {_describe(tp)}")
    return normalised


def _option_name(key: str, where: str) -> str:
    name = key.replace("-", "_")
    if name not in _FIELDS:
        close = difflib.get_close_matches(name, sorted(_FIELDS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"{where}: unknown option '{key}'{hint}")
    if name not in SEARCHABLE:
        raise UsageError(f"{where}: option '{key}' cannot be set by a search space (only training, "
                         "model, augmentation and mode options; give it on the command line)")
    return name


def _check_spec(name: str, spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise UsageError(f"{where}: expected a table with a 'distribution' key")
    dist = spec.get("distribution")
    if dist not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(dist), DISTRIBUTIONS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"{where}: distribution {json.dumps(dist)} is not one of "
                         f"{', '.join(DISTRIBUTIONS)}{hint}")
    extra = set(spec) - _SPEC_KEYS[dist] - {"distribution"}
    if extra:
        raise UsageError(f"{where}: unexpected key(s) {', '.join(sorted(extra))} for {dist} "
                         f"(expected {', '.join(sorted(_SPEC_KEYS[dist]))})")
    if dist == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise UsageError(f"{where}: 'values' must be a non-empty list")
        return {"distribution": dist, "values": [check_value(name, v, f"{where}.values") for v in values]}
    wanted = int if dist == "int-uniform" else float
    if _value_type(name) is not wanted:
        other = {int: "int-uniform", float: "uniform"}.get(_value_type(name), "choice")
        raise UsageError(f"{where}: {dist} needs a{'n integer' if wanted is int else ' float'} "
                         f"option, '{name}' is {_describe(_value_type(name))} (use {other})")
    bounds = [spec.get("low"), spec.get("high")]
    for key, value in zip(("low", "high"), bounds):
        ok = isinstance(value, int) and not isinstance(value, bool) if wanted is int else _is_number(value)
        if not ok or (wanted is float and not math.isfinite(value)):
            raise UsageError(f"{where}.{key}: missing or not {'an integer' if wanted is int else 'a number'}")
    low, high = (wanted(v) for v in bounds)
    if low >= high:
        raise UsageError(f"{where}: low ({low}) must be below high ({high})")
    if dist == "log-uniform" and low <= 0:
        raise UsageError(f"{where}.low: log-uniform needs low > 0, not {low}")
    return {"distribution": dist, "low": low, "high": high}


def _draw(spec: dict[str, Any], rng: np.random.Generator) -> Any:
    dist = spec["distribution"]
    if dist == "choice":
        return copy.deepcopy(spec["values"][int(rng.integers(len(spec["values"])))])
    low, high = spec["low"], spec["high"]
    if dist == "int-uniform":
        return int(rng.integers(low, high, endpoint=True))
    if dist == "uniform":
        return float(rng.uniform(low, high))
    # exp(log) can round a hair outside the bounds
    return float(min(max(math.exp(rng.uniform(math.log(low), math.log(high))), low), high))


@dataclass(frozen=True)
class SearchSpace:
    """Fixed option values and sampling distributions (option name -> checked spec)."""

    fixed: dict[str, Any]
    sampled: dict[str, dict]

    def sample(self, trial: int, seed: int) -> dict[str, Any]:
        """Every option value of trial ``trial``: the fixed ones, then the sampled ones.

        Deterministic in ``(seed, trial)``; each option has its own generator.
        """
        for what, value in (("trial", trial), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{what} must be a non-negative integer, not {value!r}")
        values = copy.deepcopy(self.fixed)
        for name, spec in self.sampled.items():
            rng = np.random.default_rng([seed, trial, zlib.crc32(name.encode())])
            values[name] = _draw(spec, rng)
        return values

    def sampled_values(self, trial: int, seed: int) -> dict[str, Any]:
        """Only the sampled values of trial ``trial`` (what distinguishes it from the others)."""
        values = self.sample(trial, seed)
        return {name: values[name] for name in self.sampled}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, in the layout of the file: ``{"fixed": {...}, "sample": {...}}``."""
        return {"fixed": copy.deepcopy(self.fixed), "sample": copy.deepcopy(self.sampled)}

    def record(self, trial: int, seed: int) -> dict[str, Any]:
        """The ``search`` entry of a trial's maps.json: trial, seed, sampled values and the space."""
        return {"trial": trial, "seed": seed, "values": self.sampled_values(trial, seed),
                "space": self.as_dict()}


def search_space_from_dict(data: Any, source: str) -> SearchSpace:
    """Check a parsed search space (``source`` names it in errors) and normalise its names."""
    if not isinstance(data, dict):
        raise UsageError(f"search space {source}: expected a table with [fixed] and [sample.<option>]")
    unknown = set(data) - {"fixed", "sample"}
    if unknown:
        raise UsageError(f"search space {source}: unknown section(s) {', '.join(sorted(unknown))}; "
                         "expected [fixed] and [sample.<option>]")
    fixed: dict[str, Any] = {}
    sampled: dict[str, dict] = {}
    seen: dict[str, str] = {}
    for section, target in (("fixed", fixed), ("sample", sampled)):
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise UsageError(f"search space {source}: '{section}' must be a table")
        for key, value in table.items():
            where = f"search space {source}: {section}.{key}"
            name = _option_name(key, where)
            if name in seen:
                raise UsageError(f"{where}: '{name}' is given twice ({seen[name]} and {section}.{key})")
            seen[name] = f"{section}.{key}"
            target[name] = check_value(name, value, where) if section == "fixed" else \
                _check_spec(name, value, where)
    if not sampled:
        raise UsageError(f"search space {source}: nothing to sample; add a [sample.<option>] table")
    return SearchSpace(fixed=fixed, sampled=sampled)


def load_search_space(path: Path | str) -> SearchSpace:
    """Read and check a TOML (or JSON, by its suffix) search space; UsageError on any problem."""
    from ..maps.io import read_settings

    return search_space_from_dict(read_settings(path, "search space"), str(path))
