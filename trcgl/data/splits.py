"""Patient-level splits, head/medium/tail groups and label co-occurrence, all from train only."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pandas as pd

from trcgl.config import GroupConfig, SplitConfig
from trcgl.label_values import has_unknown, known, positive

SPLITS = ("train", "val", "test")
GROUPS = ("head", "medium", "tail")


def _unit_hash(seed: int, key: str) -> float:
    """A stable uniform number in [0, 1) from (seed, key): the same in every process and Python version."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(patient_ids: Sequence[str], cfg: SplitConfig) -> np.ndarray:
    """Split of each row, decided by its patient only, so no patient is in two splits.

    Args:
        patient_ids: (N,) patient id per row.
        cfg: fractions and seed.

    Returns:
        (N,) array of "train" / "val" / "test".
    """
    out = np.empty(len(patient_ids), dtype=object)
    cache: dict[str, str] = {}
    for i, pid in enumerate(patient_ids):
        split = cache.get(pid)
        if split is None:
            u = _unit_hash(cfg.seed, str(pid))
            split = "test" if u < cfg.test_fraction else "val" if u < cfg.test_fraction + cfg.val_fraction else "train"
            cache[pid] = split
        out[i] = split
    return out


def group_of(prevalence: np.ndarray, cfg: GroupConfig) -> list[str]:
    """Head (> head_min), tail (< tail_max) or medium, per class, from train prevalence (K,)."""
    return ["head" if p > cfg.head_min else "tail" if p < cfg.tail_max else "medium" for p in prevalence]


def cooccurrence(y: np.ndarray) -> np.ndarray:
    """Label co-occurrence counts.

    Args:
        y: (N, K) train targets: 1 positive, 0 negative, :data:`~trcgl.label_values.UNKNOWN` not known.

    Returns:
        (K, K) int64 matrix, C[i, j] = #images positive for both i and j; the diagonal holds per-class counts.
    """
    y64 = positive(y).astype(np.int64)
    return y64.T @ y64  # (K, K)


def cooccurrence_frame(classes: Sequence[str], counts: np.ndarray) -> pd.DataFrame:
    """Long-format co-occurrence table (class_i, class_j, i, j, count) for every pair with count > 0."""
    i, j = np.nonzero(counts)
    return pd.DataFrame(
        {
            "i": i.astype(np.int32),
            "j": j.astype(np.int32),
            "class_i": [classes[a] for a in i],
            "class_j": [classes[b] for b in j],
            "count": counts[i, j].astype(np.int64),
        }
    )


def label_summary(classes: Sequence[str], y: np.ndarray, splits: np.ndarray, cfg: GroupConfig) -> dict:
    """What ``_labels.json`` holds: ordered classes, groups, per-split counts and train prevalence.

    Args:
        classes: K class names.
        y: (N, K) targets of every kept row (1, 0 or :data:`~trcgl.label_values.UNKNOWN`).
        splits: (N,) split per row.
        cfg: group thresholds.

    Returns:
        The summary; with unknown values, also ``unknown``: {split: {class: rows where it is not known}}.
    """
    counts = {s: positive(y[splits == s]).sum(axis=0).astype(int).tolist() for s in SPLITS}
    n = {s: int((splits == s).sum()) for s in SPLITS}
    prevalence = np.asarray(counts["train"], dtype=float) / max(n["train"], 1)
    groups = group_of(prevalence, cfg)
    return {
        "classes": list(classes),
        "groups": groups,
        "group_members": {g: [c for c, gg in zip(classes, groups, strict=True) if gg == g] for g in GROUPS},
        "thresholds": {"head_min": cfg.head_min, "tail_max": cfg.tail_max},
        "images": n,
        "counts": {s: dict(zip(classes, counts[s], strict=True)) for s in SPLITS},
        "train_prevalence": dict(zip(classes, [round(float(p), 6) for p in prevalence], strict=True)),
        **({"unknown": unknown_counts(classes, y, splits)} if has_unknown(y) else {}),
    }


def unknown_counts(classes: Sequence[str], y: np.ndarray, splits: np.ndarray) -> dict[str, dict[str, int]]:
    """{split: {class: rows whose label for it is UNKNOWN}} of (N, K) targets ``y``."""
    return {
        s: dict(zip(classes, (~known(y[splits == s])).sum(axis=0).astype(int).tolist(), strict=True)) for s in SPLITS
    }
