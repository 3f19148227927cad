"""The sweep's leaderboard and plots from per-trial records (no Ray).

A trial record holds its sampled params, the per-epoch validation history Ray Tune collected, whether it was
stopped early, its wall time and, for trials that ran to the end, the test metrics of their best epoch.
"""

from __future__ import annotations

import logging
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd

from trcgl.metrics import TABLE_METRICS
from trcgl.plotting import png

log = logging.getLogger(__name__)

PARAM_PREFIX = "param."


def leaderboard_frame(records: list[dict[str, Any]], metric: str = "val_mAP") -> pd.DataFrame:
    """One row per trial, best first by ``metric`` (the best epoch's value; model selection on val only).

    Args:
        records: per trial ``trial_id``, ``params`` (dict), ``history`` (list of per-epoch metric dicts with
            ``val_*`` keys), ``stopped_early``, ``error`` (str or None), ``wall_seconds``, ``checkpoint`` (URI),
            ``test`` (dict of test metrics, or None when the trial did not finish).

    Returns:
        Columns ``trial_id``, ``param.<key>`` for every searched key, ``val_<metric>`` of the best epoch,
        ``best_epoch``, ``test_<metric>`` (NaN without test metrics), ``epochs``, ``stopped_early``, ``error``,
        ``wall_seconds``, ``checkpoint``.
    """
    rows = []
    for rec in records:
        history = [h for h in rec.get("history", []) if h.get(metric) is not None]
        best = max(history, key=lambda h: h[metric]) if history else {}
        row: dict[str, Any] = {"trial_id": rec["trial_id"]}
        for key, value in sorted(rec["params"].items()):
            row[PARAM_PREFIX + key] = value
        for m in TABLE_METRICS:
            row[f"val_{m}"] = best.get(f"val_{m}", np.nan)
        row["best_epoch"] = best.get("epoch", np.nan)
        test = rec.get("test") or {}
        for m in TABLE_METRICS:
            row[f"test_{m}"] = test.get(m, np.nan)
        row["epochs"] = len(rec.get("history", []))
        row["stopped_early"] = bool(rec.get("stopped_early", False))
        row["error"] = rec.get("error")
        row["wall_seconds"] = float(rec.get("wall_seconds") or 0.0)
        row["checkpoint"] = rec.get("checkpoint")
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    for col in [c for c in frame.columns if c.startswith(PARAM_PREFIX)]:
        if frame[col].map(type).nunique() > 1:  # Parquet needs one type per column
            frame[col] = frame[col].astype(str)
    return frame.sort_values(metric, ascending=False, na_position="last", kind="stable").reset_index(drop=True)


def optimisation_history(board: pd.DataFrame, order: list[str], metric: str = "val_mAP") -> bytes:
    """PNG: each trial's best ``metric`` in the order trials started, with the running best."""
    by_id = board.set_index("trial_id")[metric]
    values = np.asarray([by_id.get(t, np.nan) for t in order], dtype=float)
    running = np.fmax.accumulate(np.where(np.isnan(values), -np.inf, values))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(np.arange(1, len(values) + 1), values, "o", label="trial")
    ax.step(np.arange(1, len(values) + 1), np.where(np.isinf(running), np.nan, running), where="post", label="best")
    ax.set_xlabel("trial (start order)")
    ax.set_ylabel(metric)
    ax.set_title("Optimisation history")
    ax.legend(loc="lower right")
    return png(fig)


def _distribution(spec: dict[str, Any]) -> optuna.distributions.BaseDistribution:
    kind = spec["type"]
    if kind == "choice":
        return optuna.distributions.CategoricalDistribution(spec["values"])
    if kind == "int":
        return optuna.distributions.IntDistribution(int(spec["low"]), int(spec["high"]))
    return optuna.distributions.FloatDistribution(spec["low"], spec["high"], log=kind == "loguniform")


def param_importances(
    board: pd.DataFrame, space: dict[str, dict[str, Any]], metric: str = "val_mAP", seed: int = 0
) -> dict[str, float]:
    """Optuna's (fANOVA) importance of each searched key for ``metric``; empty when too few trials vary."""
    done = board.dropna(subset=[metric])
    if len(done) < 3:
        return {}
    study = optuna.create_study(direction="maximize")
    for _, row in done.iterrows():
        params, dists = {}, {}
        for key, spec in space.items():
            value = row.get(PARAM_PREFIX + key)
            value = value.item() if hasattr(value, "item") else value
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            dist = _distribution(spec)
            if isinstance(dist, optuna.distributions.CategoricalDistribution) and value not in dist.choices:
                matches = [c for c in dist.choices if str(c) == str(value)]
                if not matches:
                    continue
                value = matches[0]
            params[key], dists[key] = value, dist
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(row[metric])))
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
    except (RuntimeError, ValueError) as exc:  # e.g. every trial sampled the same values
        log.warning("parameter importances not computed: %s", exc)
        return {}


def importances_plot(importances: dict[str, float]) -> bytes | None:
    """PNG: horizontal bars of parameter importances (None when there are none)."""
    if not importances:
        return None
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(items) + 1))
    ax.barh([k for k, _ in items], [v for _, v in items])
    ax.set_xlabel("importance (fANOVA, Optuna)")
    ax.set_title("Parameter importances")
    return png(fig)


def tail_vs_ratio(board: pd.DataFrame, ratio_key: str = "train.aug_ratio_tail") -> bytes | None:
    """PNG: tail mAP (val, best epoch) of each trial against its tail augmentation ratio (None when not searched)."""
    col = PARAM_PREFIX + ratio_key
    if col not in board:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = pd.to_numeric(board[col], errors="coerce")
    ax.scatter(x, board["val_tail_mAP"], label="val (best epoch)")
    if board["test_tail_mAP"].notna().any():
        ax.scatter(x, board["test_tail_mAP"], marker="x", label="test (finished trials)")
    ax.set_xlabel("synthetic : real ratio for tail classes")
    ax.set_ylabel("tail mAP")
    ax.set_title("Tail mAP against augmentation ratio")
    ax.legend()
    return png(fig)
