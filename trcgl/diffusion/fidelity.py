"""Fidelity of synthetic images as a reference classifier sees them, and the per-class sample grids (no Ray).

For each generated class k: the AUROC of the reference classifier's score for k with the synthetic images made for
k as positives and the real images negative for k as negatives (1.0: the classifier tells them apart as it tells real
positives; 0.5: it sees no finding), the mean score on those synthetic images, and the mean score on real positives
for comparison.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from trcgl.data.synth import make_contact_sheet


def fidelity_table(
    classes: Sequence[str],
    synthetic_scores: np.ndarray,
    synthetic_targets: Sequence[str],
    real_scores: np.ndarray,
    real_labels: np.ndarray,
) -> pd.DataFrame:
    """Per generated class fidelity.

    Args:
        classes: K class names.
        synthetic_scores: (M, K) reference-classifier probabilities of the synthetic images.
        synthetic_targets: (M,) the class each synthetic image was made for.
        real_scores: (N, K) probabilities of real images; real_labels: (N, K) their multi-hot labels.

    Returns:
        class, synthetic, real_negatives, real_positives, auroc (None without real negatives), mean_score_synthetic,
        mean_score_real_positive (None without real positives).
    """
    rows = []
    targets = np.asarray(synthetic_targets)
    for cls in sorted(set(targets)):
        k = list(classes).index(cls)
        syn = synthetic_scores[targets == cls, k]
        neg = real_scores[real_labels[:, k] == 0, k]
        pos = real_scores[real_labels[:, k] == 1, k]
        auroc = None
        if len(neg) and len(syn):
            y = np.r_[np.ones(len(syn)), np.zeros(len(neg))]
            auroc = float(roc_auc_score(y, np.r_[syn, neg]))
        rows.append(
            {
                "class": cls,
                "synthetic": int(len(syn)),
                "real_negatives": int(len(neg)),
                "real_positives": int(len(pos)),
                "auroc": auroc,
                "mean_score_synthetic": float(syn.mean()) if len(syn) else None,
                "mean_score_real_positive": float(pos.mean()) if len(pos) else None,
            }
        )
    return pd.DataFrame(rows)


def fidelity_keep(
    target_scores: np.ndarray,
    targets: Sequence[str],
    threshold: float | None = None,
    keep_fraction: float | None = None,
) -> np.ndarray:
    """Which synthetic images pass the fidelity filter.

    Args:
        target_scores: (M,) the reference classifier's score of each image for the class it was made for.
        targets: (M,) that class.
        threshold: keep images scoring at least this (None: no absolute bar).
        keep_fraction: keep the ceil(fraction * n) highest-scoring of each class's n images, ties broken by order
            (None: no relative bar). With both, an image must pass both.

    Returns:
        (M,) bool mask.
    """
    scores = np.asarray(target_scores, dtype=np.float64)
    keep = np.ones(len(scores), dtype=bool)
    if threshold is not None:
        keep &= scores >= threshold
    if keep_fraction is not None:
        targets = np.asarray(targets)
        top = np.zeros(len(scores), dtype=bool)
        for cls in set(targets.tolist()):
            idx = np.flatnonzero(targets == cls)
            n = int(np.ceil(keep_fraction * len(idx) - 1e-9))
            top[idx[np.argsort(-scores[idx], kind="stable")[:n]]] = True
        keep &= top
    return keep


def sample_grid(cls: str, synthetic: Sequence[np.ndarray], real: Sequence[np.ndarray]) -> bytes:
    """PNG bytes: a row of synthetic images for ``cls`` above a row of real positives of ``cls``."""
    buf = io.BytesIO()
    make_contact_sheet([(f"synthetic: {cls}", list(synthetic), list(real))], buf, second_label="real")
    return buf.getvalue()
