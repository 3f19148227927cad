"""Group-weighted repetition of diffusion training rows (numpy and pandas only).

Its own light module because Ray Data pickles module-level functions by reference: every task worker that runs
:func:`repeat_by_group` imports its module, and ``trcgl.diffusion.ray_diffusion`` pulls in torch, diffusers and
transformers (about 10 s of imports per worker on 2 cores).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trcgl.label_values import positive


def group_repeats(batch: pd.DataFrame, groups: list[str], weights: dict[str, float]) -> np.ndarray:
    """(B,) copies of each row: round(max weight of its positive classes' groups), the head weight for no class."""
    w = np.asarray([weights.get(g, 1.0) for g in groups])  # (K,)
    labels = positive(np.stack([np.asarray(v, dtype=np.uint8) for v in batch["labels"]]))  # (B, K) bool
    row_w = np.where(labels.any(axis=1), (labels * w).max(axis=1), weights.get("head", 1.0))  # (B,)
    return np.maximum(1, np.round(row_w)).astype(int)


def repeat_by_group(batch: pd.DataFrame, groups: list[str], weights: dict[str, float]) -> pd.DataFrame:
    """Repeats each row :func:`group_repeats` times."""
    return batch.loc[batch.index.repeat(group_repeats(batch, groups, weights))].reset_index(drop=True)
