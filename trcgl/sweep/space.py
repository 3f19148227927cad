"""The sweep's search space as config, checked before any work starts, and trial configs built from sampled values.

No Ray here: :mod:`trcgl.sweep.ray_sweep` turns a checked space into Ray Tune domains.
"""

from __future__ import annotations

from typing import Any

from trcgl.config import Config, apply_overrides
from trcgl.config.checks import SYNTHETIC_SET
from trcgl.storage import run_dir


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
