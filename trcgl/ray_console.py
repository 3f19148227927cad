"""How much a job prints: one verbosity for our own log lines and for what Ray prints.

A job's ``-q`` / ``-v`` flags (``jobs/_cli.py``) choose the level and call :func:`configure` before Ray starts. The
level is kept in ``$TRCGL_VERBOSITY``, which a local Ray's workers (Tune trial drivers, Ray Train controllers and
workers, Ray Data actors) inherit from the driver, so the Tune and Train runs they start, and our loggers in them
(``trcgl/__init__.py``), follow it. On a cluster it reaches workers only through the job's ``runtime_env``
(``env_vars``); without it they run at ``normal``.

- ``quiet``: warnings and errors, then the job's summary.
- ``normal`` (the default): our lines at INFO, which are one per pipeline stage, per training epoch and per ended
  Tune trial (:class:`trcgl.sweep.ray_tune_console.TrialLines`); Ray's own INFO lines hidden: Tune's trial tables
  (printed every 30 s), Ray Train's worker-group, checkpoint and report lines, Ray Data's execution plans and
  logged progress. Ray Data's progress bar, one per dataset, where the driver's stdout is a terminal.
- ``verbose``: everything Ray prints, as Ray prints it.

Warnings and errors are not hidden at any level: Tune's failed-trial lines and tracebacks, Ray's worker errors and
Python warnings from workers still reach the console.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

QUIET, NORMAL, VERBOSE = "quiet", "normal", "verbose"
LEVELS = (QUIET, NORMAL, VERBOSE)
ENV = "TRCGL_VERBOSITY"
# loggers whose INFO lines only the verbose level shows (errors and warnings pass at every level): Ray's, and
# Optuna's (the sweep's searcher, in the driver)
RAY_LOGGERS = ("ray.data", "ray.train", "ray.tune", "optuna")


def verbosity() -> str:
    """The level this process runs at: ``$TRCGL_VERBOSITY``, else ``normal``.

    Raises:
        ValueError: ``$TRCGL_VERBOSITY`` holds another value.
    """
    value = os.environ.get(ENV, NORMAL)
    if value not in LEVELS:
        raise ValueError(f"${ENV}={value!r}: expected one of {', '.join(LEVELS)}")
    return value


def configure(level: str) -> None:
    """Sets the level for this driver and for the local Ray workers it will start (call it before ``ray.init``).

    Sets ``$TRCGL_VERBOSITY``; below ``verbose`` also ``$RAY_DATA_LOG_LEVEL=WARNING`` (unless set already: Ray Data
    reads it in every process that runs a dataset, and applies it to its log file too) and this process's Ray
    loggers to WARNING; Ray Data's progress bars of this process (on at ``normal``, one per dataset, not one per
    operator; off at ``quiet``).

    Args:
        level: ``quiet``, ``normal`` or ``verbose``.
    """
    if level not in LEVELS:
        raise ValueError(f"verbosity {level!r}: expected one of {', '.join(LEVELS)}")
    os.environ[ENV] = level
    if level == VERBOSE:
        return
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
    for name in RAY_LOGGERS + (("ray",) if level == QUIET else ()):
        logging.getLogger(name).setLevel(logging.WARNING)
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = level == NORMAL
    context.enable_operator_progress_bars = False


def train_logging() -> Any:
    """Ray Train's ``LoggingConfig`` for a ``RunConfig``: its INFO lines (worker group, checkpoints, every report)
    only at ``verbose``."""
    import ray.train

    return ray.train.LoggingConfig(log_level="INFO" if verbosity() == VERBOSE else "WARNING")


def quiet_train_reports() -> None:
    """Below ``verbose``, drops Ray Train's line per report (``Reporting training result N: TrainingReport(...)``
    with every metric, one per rank and epoch) in this Train worker.

    Its logger is named by its module's file path, outside ``ray.train``, so :func:`train_logging` does not reach it
    (ray 2.60, ``ray/train/v2/_internal/execution/context.py``). Call it in the worker, before a report.
    """
    if verbosity() == VERBOSE:
        return
    try:
        from ray.train.v2._internal.execution import context  # private: the module whose logger to name
    except ImportError:
        return  # another Ray: its lines stay
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
