"""Multi-label evaluation: per-class AP and ROC-AUC, macro means overall and per head/medium/tail group, bootstrap CIs.

AP and AUC are computed for all classes at once from one sort per column (vectorised, so 200 bootstrap resamples
cost well under a second) and equal scikit-learn's ``average_precision_score`` and ``roc_auc_score``, ties included:

- AP = sum over distinct thresholds of (R_n - R_{n-1}) P_n, i.e. each positive contributes the precision at the
  end of its tie group, divided by the number of positives;
- AUC = P(score of a positive > score of a negative) + 0.5 P(tie) (the trapezoidal ROC area).

An image whose label for a class is :data:`~trcgl.label_values.UNKNOWN` (U-Ignore) is left out of that class's
ranking: it is neither a positive nor a negative, and precision counts the positives and negatives above a threshold.

A class without positives has no AP or AUC (status ``no_positives``, values None); a class without negatives has an
AP but no AUC (``no_negatives``). Macro means skip classes without a value; a group without any evaluable class
reports None. Nothing is silently 0 or NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from trcgl.label_values import UNKNOWN, positive

GROUPS = ("head", "medium", "tail")
# the five a summary table shows (overall, and mAP per group), then the group mAUCs: every metric a result carries
TABLE_METRICS = ("mAP", "mAUC", *(f"{g}_mAP" for g in GROUPS))
METRICS = TABLE_METRICS + tuple(f"{g}_mAUC" for g in GROUPS)
PER_CLASS_COLUMNS = ["class", "group", "positives", "negatives", "ap", "auc", "status"]


def per_class_ap_auc(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class average precision and ROC-AUC, vectorised over classes.

    Args:
        scores: (N, K) scores (probabilities or logits: only their order matters).
        targets: (N, K) targets: 1, 0 or :data:`~trcgl.label_values.UNKNOWN` (left out of the class).

    Returns:
        (ap (K,), auc (K,)) float64; NaN where undefined (AP: no positives; AUC: no positives or no negatives).
    """
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")  # (N, K) descending scores
    s = np.take_along_axis(scores, order, axis=0)  # (N, K)
    t = np.take_along_axis(targets, order, axis=0)  # (N, K)
    y = positive(t).astype(np.float64)  # (N, K)
    tp = np.cumsum(y, axis=0)  # (N, K) positives at or above each rank
    fp = np.cumsum((t == 0).astype(np.float64), axis=0)  # (N, K) negatives at or above each rank
    rows = np.arange(n)[:, None]  # (N, 1)
    is_end = np.ones_like(s, dtype=bool)  # (N, K) last row of a tie group
    is_end[:-1] = s[:-1] != s[1:]
    is_start = np.ones_like(s, dtype=bool)  # (N, K) first row of a tie group
    is_start[1:] = s[1:] != s[:-1]
    end = np.minimum.accumulate(np.where(is_end, rows, n)[::-1], axis=0)[::-1]  # (N, K) row of the group's end
    start = np.maximum.accumulate(np.where(is_start, rows, 0), axis=0)  # (N, K) row of the group's start

    n_pos, n_neg = tp[-1], fp[-1]  # (K,), (K,)
    fp_end = np.take_along_axis(fp, end, axis=0)  # (N, K) negatives scored >= this group
    tp_end = np.take_along_axis(tp, end, axis=0)  # (N, K) positives scored >= this group
    # tp_end + fp_end is end + 1 when every label is known; unknown images are not counted
    precision_at_end = tp_end / np.maximum(tp_end + fp_end, 1.0)  # (N, K)
    fp_before = np.where(start > 0, np.take_along_axis(fp, np.maximum(start - 1, 0), axis=0), 0.0)  # (N, K)
    wins = (n_neg - fp_end) + 0.5 * (fp_end - fp_before)  # (N, K) negatives below + half the tied ones
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (y * precision_at_end).sum(axis=0) / n_pos  # (K,)
        auc = (y * wins).sum(axis=0) / (n_pos * n_neg)  # (K,)
    ap[n_pos == 0] = np.nan
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return ap, auc


def summarise(ap: np.ndarray, auc: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Macro means (NaN-skipping) overall and per group; NaN where no class is evaluable.

    Args:
        ap: (K,) per-class AP, NaN where undefined.
        auc: (K,) per-class AUC, NaN where undefined.
        groups: (K,) group name per class.
    """
    out = {}
    for prefix, mask in [("", np.ones(len(ap), dtype=bool))] + [(f"{g}_", groups == g) for g in GROUPS]:
        for name, values in (("mAP", ap[mask]), ("mAUC", auc[mask])):
            valid = values[~np.isnan(values)]
            out[prefix + name] = float(valid.mean()) if valid.size else float("nan")
    return out


def none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def bootstrap_draws(n_images: int, n: int, seed: int) -> np.ndarray:
    """Image indices of ``n`` bootstrap resamples (with replacement), the one definition every interval uses.

    Returns:
        (n, N) int64 indices from ``np.random.default_rng(seed)``.
    """
    return np.random.default_rng(seed).integers(0, n_images, size=(n, n_images))


def resampled_metrics(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, draws: np.ndarray) -> dict:
    """Every macro metric of one score set on each resample of the images.

    One ``per_class_ap_auc`` call per resample, on (N, K): stacking resamples along the class axis into one wide
    call is slower (its axis-0 sorts and gathers on wide row-major arrays cost more per column).

    Args:
        scores: (N, K) float64 scores.
        labels: (N, K) float64 targets (1, 0 or :data:`~trcgl.label_values.UNKNOWN`).
        groups: (K,) group name per class.
        draws: (R, N) image indices of each resample.

    Returns:
        {metric: (R,) float64} for every name in :data:`METRICS`; NaN where undefined in a resample.
    """
    out = {name: np.empty(draws.shape[0]) for name in METRICS}
    for r, idx in enumerate(draws):
        stats = summarise(*per_class_ap_auc(scores[idx], labels[idx]), groups)
        for name in METRICS:
            out[name][r] = stats[name]
    return out


def evaluate_scores(
    scores: np.ndarray,
    targets: np.ndarray,
    classes: Sequence[str],
    groups: Sequence[str],
    bootstrap: int = 200,
    seed: int = 0,
) -> dict:
    """Evaluates multi-label scores: per-class AP/AUC, macro means overall and per group, bootstrap 95 % CIs.

    Args:
        scores: (N, K) probabilities or logits.
        targets: (N, K) in {0, 1, :data:`~trcgl.label_values.UNKNOWN`} (unknown: left out of the class).
        classes: K class names.
        groups: K group names, each "head", "medium" or "tail".
        bootstrap: resamples of the images (with replacement) for the percentile intervals; 0 for none.
        seed: seed of the ``np.random.Generator`` that draws the resamples.

    Returns:
        JSON-able dict: ``mAP``, ``mAUC``, ``{head,medium,tail}_{mAP,mAUC}`` (float or None), ``ci``
        ({metric: [lo, hi] or None}; a resample skips classes that lost all positives, or negatives for AUC),
        ``per_class`` (dicts with class, group, positives, negatives, ap, auc, status),
        ``classes_without_positives``, ``n_images``, ``bootstrap``, ``seed``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, K)")
    if len(classes) != scores.shape[1] or len(groups) != scores.shape[1]:
        raise ValueError(f"{len(classes)} classes and {len(groups)} groups given for {scores.shape[1]} score columns")
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown groups {unknown}; known: {list(GROUPS)}")
    if not np.isin(targets, (0, 1, UNKNOWN)).all():
        raise ValueError(f"targets must be 0, 1 or {UNKNOWN} (unknown)")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores contain {int((~np.isfinite(scores)).sum())} non-finite values")
    targets = targets.astype(np.float64)
    group_arr = np.asarray(groups)

    ap, auc = per_class_ap_auc(scores, targets)  # (K,), (K,)
    point = summarise(ap, auc, group_arr)

    ci: dict[str, list[float] | None] = {}
    if bootstrap > 0:
        draws = bootstrap_draws(scores.shape[0], bootstrap, seed)  # (R, N) image indices
        samples = resampled_metrics(scores, targets, group_arr, draws)  # {metric: (R,)}
        for name in METRICS:
            valid = samples[name][~np.isnan(samples[name])]
            ok = valid.size and not np.isnan(point[name])
            ci[name] = [float(np.percentile(valid, 2.5)), float(np.percentile(valid, 97.5))] if ok else None
    else:
        ci = {name: None for name in METRICS}

    positives = positive(targets).sum(axis=0).astype(int)  # (K,)
    negatives = (targets == 0).sum(axis=0).astype(int)  # (K,) known negatives
    per_class = []
    for k, name in enumerate(classes):
        status = "no_positives" if positives[k] == 0 else "no_negatives" if negatives[k] == 0 else "ok"
        per_class.append(
            {
                "class": name,
                "group": groups[k],
                "positives": int(positives[k]),
                "negatives": int(negatives[k]),
                "ap": none_if_nan(ap[k]),
                "auc": none_if_nan(auc[k]),
                "status": status,
            }
        )
    return {
        **{name: none_if_nan(point[name]) for name in METRICS},
        "ci": ci,
        "per_class": per_class,
        "classes_without_positives": [c for c, n in zip(classes, positives, strict=True) if n == 0],
        "n_images": int(scores.shape[0]),
        "bootstrap": int(bootstrap),
        "seed": int(seed),
    }


def per_class_frame(result: dict) -> pd.DataFrame:
    """The per-class table of an :func:`evaluate_scores` result (columns class, group, positives, negatives, ap,
    auc, status); ap/auc are NaN in the frame where the result holds None."""
    return pd.DataFrame(result["per_class"], columns=PER_CLASS_COLUMNS)
