"""Decision thresholds: the probability above which a class is called present, chosen per class on the val split.

The rule (:data:`RULE`): for each class k, among the distinct val probabilities t of class k, the t whose decisions
``p >= t`` give the highest val F1 for k (over the val images whose label for k is known: U-Ignore leaves the others
out); among equal F1 the lowest t (more recall for the same F1). A class with no val positive has no F1 to maximise
and gets :data:`FALLBACK` (0.5). The training job stores the thresholds of each
checkpoint's val predictions in its ``meta.json`` (``thresholds``); ``jobs.predict`` computes them the same way for
checkpoints written before that (:func:`trcgl.predict.ray_predict.checkpoint_thresholds`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trcgl.label_values import known, positive

FALLBACK = 0.5
RULE = {
    "name": "f1-optimal per class on val",
    "split": "val",
    "decision": "probability >= threshold",
    "candidates": "the distinct val probabilities of the class",
    "ties": "the lowest threshold with the highest F1",
    "no_val_positives": f"threshold {FALLBACK}",
}


def f1_optimal(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class F1-optimal thresholds (module docstring: the rule).

    Args:
        scores: (N, K) probabilities.
        targets: (N, K) labels: 1, 0 or :data:`~trcgl.label_values.UNKNOWN` (the image is left out of the class).

    Returns:
        (thresholds (K,), their val F1 (K,) with NaN for classes without val positives, val positives (K,)).
    """
    scores = np.asarray(scores, dtype=np.float64)
    raw = np.asarray(targets)
    if scores.shape != raw.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {raw.shape} must both be (N, K)")
    targets, is_known = positive(raw), known(raw)  # (N, K), (N, K)
    k = scores.shape[1]
    thresholds, f1 = np.full(k, FALLBACK), np.full(k, np.nan)
    positives = targets.sum(axis=0).astype(np.int64)  # (K,)
    for c in np.flatnonzero(positives):
        rows = np.flatnonzero(is_known[:, c])  # (N_c,) the images whose label for c is known
        order = rows[np.argsort(-scores[rows, c], kind="stable")]
        s, y = scores[order, c], targets[order, c]  # (N_c,) by descending probability
        tp = np.cumsum(y)  # (N,) true positives when the first i + 1 images are called positive
        last = np.r_[s[1:] != s[:-1], True]  # (N,) the last image of each run of equal probabilities
        called = np.arange(1, len(s) + 1)[last]  # (T,) images called positive at each distinct threshold
        f1_at = 2.0 * tp[last] / (called + positives[c])  # (T,) thresholds in descending order
        best = np.flatnonzero(f1_at == f1_at.max())[-1]  # the last of the best: the lowest threshold
        thresholds[c], f1[c] = s[last][best], f1_at[best]
    return thresholds, f1, positives


def threshold_record(scores: np.ndarray, targets: np.ndarray, classes: list[str], **source: Any) -> dict[str, Any]:
    """The thresholds of a checkpoint as stored in its ``meta.json`` and in predict's report.

    Args:
        scores: (N, K) val probabilities.
        targets: (N, K) val labels.
        classes: the K class names.
        **source: where the val predictions came from (e.g. ``epoch``, ``dataset``), stored as they are.

    Returns:
        ``rule`` (:data:`RULE`), ``values`` (K floats), ``val_f1`` (K floats, None without val positives),
        ``val_positives`` (K ints), ``val_images`` and ``source``.
    """
    values, f1, positives = f1_optimal(scores, targets)
    if len(classes) != len(values):
        raise ValueError(f"{len(classes)} class names for {len(values)} score columns")
    return {
        "rule": RULE,
        "classes": list(classes),
        "values": [float(v) for v in values],
        "val_f1": [None if np.isnan(v) else float(v) for v in f1],
        "val_positives": [int(v) for v in positives],
        "val_images": int(len(scores)),
        "source": source,
    }
