"""The sweep's search space as config, checked before any work starts, and trial configs built from sampled values.

No Ray here: :mod:`trcgl.tune.ray_sweep` turns a checked space into Ray Tune domains.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from trcgl.config import Config, ConfigError, _coerce, apply_overrides
from trcgl.storage import run_dir

SYNTHETIC_SET = "synthetic_set"  # pseudo-key: which synthetic folder of the run trials draw from
SYNTHETIC_FOLDERS = ("synthetic", "synthetic_filtered")
TYPES = ("choice", "uniform", "loguniform", "int")


def field_type(dotted: str) -> Any:
    """The declared type of a dotted config key (``model.gcn_tau`` → float).

    Raises:
        ConfigError: the key names no config field.
    """
    cls: Any = Config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(
                f"config key 'sweep.space.{dotted}': {part!r} is not a key of {where}; known: {sorted(hints)}"
            )
        tp = hints[part]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"config key 'sweep.space.{dotted}': {'.'.join(parts[: i + 1])} has no sub-keys")
            cls = tp
    return tp


def _candidates(key: str, spec: dict[str, Any]) -> list[Any]:
    """The values a spec can produce that are checked against the key's type (choices, or the range ends)."""
    where = f"sweep.space.{key}"
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        raise ConfigError(f"config key {where!r} must be a mapping with type one of {list(TYPES)}, got {spec!r}")
    kind = spec["type"]
    if kind == "choice":
        extra = set(spec) - {"type", "values"}
        values = spec.get("values")
        if extra or not isinstance(values, list) or not values:
            raise ConfigError(f"config key {where!r}: a choice needs a non-empty 'values' list only, got {spec!r}")
        return list(values)
    extra = set(spec) - {"type", "low", "high"}
    low, high = spec.get("low"), spec.get("high")
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if extra or not numeric or not low < high:
        raise ConfigError(f"config key {where!r}: {kind} needs numbers low < high only, got {spec!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"config key {where!r}: loguniform needs low > 0, got {low}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"config key {where!r}: int needs integer bounds, got {low}, {high}")
    return [low, high]


def check_space(space: dict[str, dict[str, Any]]) -> None:
    """Checks every key names a config field and every value it can take has that field's type.

    Raises:
        ConfigError: naming ``sweep.space.<key>`` and the bad value.
    """
    for key, spec in space.items():
        values = _candidates(key, spec)
        if key == SYNTHETIC_SET:
            bad = [v for v in values if v not in SYNTHETIC_FOLDERS]
            if spec["type"] != "choice" or bad:
                raise ConfigError(
                    f"config key 'sweep.space.{key}' must be a choice among {list(SYNTHETIC_FOLDERS)}, got {spec!r}"
                )
            continue
        tp = field_type(key)
        if dataclasses.is_dataclass(tp):
            raise ConfigError(f"config key 'sweep.space.{key}' names a section, not a value")
        for value in values:
            if spec["type"] == "loguniform" or spec["type"] == "uniform":
                value = float(value)
            _coerce(value, tp, f"sweep.space.{key}", "sweep.space")


def searched_folders(space: dict[str, dict[str, Any]]) -> list[str]:
    """The synthetic folders the space can draw from (empty when it does not search them)."""
    spec = space.get(SYNTHETIC_SET)
    return list(spec["values"]) if spec else []


def clean_value(value: Any) -> Any:
    """Sampled values as plain Python (numpy scalars → int/float/bool)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    return value


def trial_config(base: Config, params: dict[str, Any], trial_run: str, data_run: str) -> Config:
    """The typed config of one trial: ``base`` with the sampled values set and its own run name.

    Args:
        base: the sweep's config.
        params: sampled values by space key.
        trial_run: run name of the trial's classifier (``{run}/sweep/trials/{trial_id}``).
        data_run: the run whose ``synthetic*/`` folders trials draw from.
    """
    values: dict[str, Any] = {"train.run": trial_run}
    for key, value in params.items():
        value = clean_value(value)
        if key == SYNTHETIC_SET:
            values["train.synthetic"] = [run_dir(data_run, str(value))]
        else:
            values[key] = value
    return apply_overrides(base, values, f"sweep trial {trial_run}")
