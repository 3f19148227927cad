"""Tune's console output at the job's verbosity (:mod:`trcgl.ray_console`): Tune's own trial tables only at
``verbose``, else one line per ended trial.

Apart from :mod:`trcgl.ray_console` because it needs Ray Tune: that module is imported in every Ray Train worker
(through :mod:`trcgl.train.ray_common`), which would otherwise import Tune for nothing at every start.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import tune

from trcgl.ray_console import VERBOSE, verbosity

log = logging.getLogger(__name__)


def tune_output(metric: str | None = None, total: int | None = None) -> dict[str, Any]:
    """``tune.RunConfig`` arguments for Tune's console output: its own (``verbose``: trial tables every 30 s and a
    result table per trial) only at ``verbose``, else one line per ended trial (:class:`TrialLines`).

    At ``verbose=0`` Tune still prints the experiment's header (search algorithm, scheduler, trial count, path) and
    every failed trial; a restored experiment keeps the output settings it was started with.

    Args:
        metric: the result key each trial's line shows (e.g. ``val_mAP``).
        total: the number of trials the experiment will run, when known.
    """
    loud = verbosity() == VERBOSE
    return {"verbose": None if loud else 0, "callbacks": [] if loud else [TrialLines(metric, total)]}


class TrialLines(tune.Callback):
    """Logs one line per Tune trial that ends: finished, stopped by the scheduler, or failed.

    Args:
        metric: the result key to show (its last reported value).
        total: trials the experiment runs, shown as ``k/total`` when given.
    """

    def __init__(self, metric: str | None = None, total: int | None = None) -> None:
        self.metric = metric
        self.total = total

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log.info("%s", trial_line(trial, trials, self.metric, self.total, "ended"))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        log.warning("%s (error file: %s)", trial_line(trial, trials, self.metric, self.total, "failed"),
                    trial.error_file)  # fmt: skip


def trial_line(trial: Any, trials: list, metric: str | None, total: int | None, verb: str) -> str:
    """``trial 3/39 ended after 5 iterations (136 s): row=ASL seed=0; val_mAP 0.3152``."""
    done = sum(t is trial or t.status in ("TERMINATED", "ERROR") for t in trials)
    result = trial.last_result or {}
    params = " ".join(f"{k}={_short(v)}" for k, v in sorted((trial.config or {}).items()))
    text = (
        f"trial {done}{f'/{total}' if total else ''} {trial.trial_id} {verb} after "
        f"{result.get('training_iteration', 0)} iterations ({result.get('time_total_s', 0.0):.0f} s): {params}"
    )
    if metric and metric in result:
        text += f"; {metric} {_short(result[metric])}"
    return text


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
