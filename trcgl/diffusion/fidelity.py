"""Fidelity of synthetic images as a reference classifier sees them, beside its controls; the fidelity filter and the
sample grids (no Ray).

For each generated class k, the reference classifier's score for k gives four AUROCs against the real val images
negative for k:

- ``auroc_real``: real val positives of k (the ceiling: what the reference sees of the real finding);
- ``auroc_synthetic``: the synthetic images made for k;
- ``auroc_control``: each synthetic image's matched control, the same generator input (seed; in edit mode the same
  donor, strength and mask) pushed through the same path with the empty prompt. This is the generator's texture
  without the finding: a resolution or texture tell-tale raises (or lowers) it away from 0.5 on its own;
- ``auroc_synthetic_vs_control``: the synthetic images against their controls (what the prompt alone adds).

A good generator gives ``auroc_synthetic`` near ``auroc_real`` and ``auroc_control`` near 0.5. Fidelity is only scored
on the val split (:data:`FIDELITY_SPLIT`); the test split stays unseen until the final evaluation.

The fidelity filter ranks images by the same reasoning: by the margin of the reference's score on the image over its
score on the image's own control when every image has one, so a texture that raises every score does not by itself
pass an image.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.metrics import roc_auc_score

from trcgl.data.dataset import DatasetInfo
from trcgl.data.synth import make_contact_sheet
from trcgl.data.synth.visibility import VISIBLE_MIN_PIXELS, finding_visibility

log = logging.getLogger(__name__)

FIDELITY_SPLIT = "val"  # real images the reference scores for fidelity: never test
CONTROL_SUFFIX = "#control"  # image_id of a synthetic row's control image when scored beside it
FIDELITY_COLUMNS = (
    "class",
    "synthetic",
    "controls",
    "real_positives",
    "real_negatives",
    "auroc_real",
    "auroc_synthetic",
    "auroc_control",
    "auroc_synthetic_vs_control",
    "mean_score_real_positive",
    "mean_score_real_negative",
    "mean_score_synthetic",
    "mean_score_control",
    "mean_margin",
    "visible_pixels",
    "visible",
)


def fidelity_split(info: DatasetInfo) -> str:
    """The split whose real images fidelity is scored on: always ``val``, never ``test``.

    Raises:
        ValueError: the dataset has no val rows (fidelity then needs a dataset prepared with a val fraction; it does
            not fall back to test).
    """
    if info.split_sizes and not info.split_sizes.get(FIDELITY_SPLIT):  # empty: sizes unknown (older datasets)
        raise ValueError(
            f"fidelity is scored on real {FIDELITY_SPLIT} images and dataset {info.name!r} has none "
            f"(splits {info.split_sizes}); prepare it with data.split.val_fraction > 0"
        )
    return FIDELITY_SPLIT


def _auroc(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """AUROC of ``positives`` scored above ``negatives``; None when either is empty."""
    if not len(positives) or not len(negatives):
        return None
    y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    return float(roc_auc_score(y, np.r_[positives, negatives]))


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if len(x) else None


def fidelity_table(
    classes: Sequence[str],
    synthetic_scores: np.ndarray,
    synthetic_targets: Sequence[str],
    real_scores: np.ndarray,
    real_labels: np.ndarray,
    control_scores: np.ndarray | None = None,
    visible_pixels: Mapping[str, int] | None = None,
    visible_min_pixels: int | None = None,
) -> pd.DataFrame:
    """Per generated class fidelity, with its controls.

    Args:
        classes: K class names.
        synthetic_scores: (M, K) reference-classifier probabilities of the synthetic images.
        synthetic_targets: (M,) the class each synthetic image was made for.
        real_scores: (N, K) probabilities of real val images; real_labels: (N, K) their multi-hot labels.
        control_scores: (M, K) probabilities of each synthetic image's matched control, a row of NaN where an image
            has none; None: no image has one.
        visible_pixels: pixels each finding changes at the working size (PadChest-Synth's renderer); None: unknown.
        visible_min_pixels: the count from which a finding is called visible.

    Returns:
        One row per generated class, the columns of :data:`FIDELITY_COLUMNS`: counts (synthetic, controls,
        real_positives, real_negatives); AUROCs against the real negatives of real positives, synthetic images and
        controls, and of synthetic images against their controls (None where a side is empty); mean scores and the
        mean paired margin (synthetic minus its own control); visible_pixels and visible (None when unknown).
    """
    targets = np.asarray(synthetic_targets)
    if control_scores is None:
        control_scores = np.full(synthetic_scores.shape, np.nan)
    rows = []
    for cls in sorted(set(targets.tolist())):
        k = list(classes).index(cls)
        of_k = targets == cls
        syn = synthetic_scores[of_k, k]
        ctrl_all = control_scores[of_k, k]
        paired = ~np.isnan(ctrl_all)
        ctrl = ctrl_all[paired]
        neg = real_scores[real_labels[:, k] == 0, k]
        pos = real_scores[real_labels[:, k] == 1, k]
        pixels = None if visible_pixels is None else visible_pixels.get(cls)
        rows.append(
            {
                "class": cls,
                "synthetic": int(len(syn)),
                "controls": int(len(ctrl)),
                "real_positives": int(len(pos)),
                "real_negatives": int(len(neg)),
                "auroc_real": _auroc(pos, neg),
                "auroc_synthetic": _auroc(syn, neg),
                "auroc_control": _auroc(ctrl, neg),
                "auroc_synthetic_vs_control": _auroc(syn[paired], ctrl),
                "mean_score_real_positive": _mean(pos),
                "mean_score_real_negative": _mean(neg),
                "mean_score_synthetic": _mean(syn),
                "mean_score_control": _mean(ctrl),
                "mean_margin": _mean(syn[paired] - ctrl),
                "visible_pixels": None if pixels is None else int(pixels),
                "visible": None if pixels is None or visible_min_pixels is None else bool(pixels >= visible_min_pixels),
            }
        )
    return pd.DataFrame(rows, columns=list(FIDELITY_COLUMNS))


def finding_visibility_or_none(source: str, classes: Sequence[str], size: int) -> tuple[dict[str, int], int] | None:
    """Pixels each finding changes at ``size`` and the visibility bar, for PadChest-Synth data; None for other
    sources (only PadChest-Synth has a renderer to measure a finding with)."""
    if source != "padchest-synth":
        return None
    return finding_visibility(classes, size), VISIBLE_MIN_PIXELS


def control_rows(batch: pa.Table) -> pa.Table:
    """The control images of a batch of synthetic rows as rows to score: ``image_id`` + :data:`CONTROL_SUFFIX`,
    ``image`` (the control image) and ``labels`` (the synthetic row's, same type); rows without a control dropped.

    Args:
        batch: columns image_id, control_image (nullable binary), labels.
    """
    batch = batch.filter(pc.is_valid(batch["control_image"]))
    ids = pc.binary_join_element_wise(batch["image_id"], pa.scalar(CONTROL_SUFFIX), "")
    return pa.table({"image_id": ids, "image": batch["control_image"], "labels": batch["labels"]})


def filter_scores(target_scores: np.ndarray, control_target_scores: np.ndarray | None) -> tuple[np.ndarray, str]:
    """The score the fidelity filter ranks by, and its name.

    Args:
        target_scores: (M,) the reference's score of each synthetic image for the class it was made for.
        control_target_scores: (M,) the same score on each image's matched control, NaN where it has none; None:
            no controls.

    Returns:
        ((M,) scores, ``"margin"``) — the score minus its control's, when every image has a control — else
        ((M,) the raw scores, ``"score"``), with a warning: a raw score is raised by the generator's texture too.
    """
    scores = np.asarray(target_scores, dtype=np.float64)
    if control_target_scores is not None:
        control = np.asarray(control_target_scores, dtype=np.float64)
        missing = int(np.isnan(control).sum())
        if missing == 0:
            return scores - control, "margin"
        reason = f"{missing} of {len(scores)} synthetic images have no control image"
    else:
        reason = "the synthetic images have no control images"
    log.warning(
        "fidelity filter ranks by the raw reference score: %s (generate.controls), so the generator's texture alone "
        "can pass an image",
        reason,
    )
    return scores, "score"


def fidelity_keep(
    target_scores: np.ndarray,
    targets: Sequence[str],
    threshold: float | None = None,
    keep_fraction: float | None = None,
) -> np.ndarray:
    """Which synthetic images pass the fidelity filter.

    Args:
        target_scores: (M,) the score each image is ranked by (:func:`filter_scores`: the margin over its control, or
            the reference's score for the class it was made for).
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


def match_real_rows(labels: np.ndarray, want: Mapping[int, int], seed: int) -> dict[int, np.ndarray]:
    """Picks real rows positive for each class, each row at most once: ``want[k]`` rows for class k (fewer when there
    are not enough), classes in index order, rows in a seeded random order.

    Args:
        labels: (N, K) multi-hot labels of the rows that may be picked (zero a row to exclude it).
        want: class index -> rows wanted.
        seed: picking seed.

    Returns:
        class index -> (n_k,) row indices.
    """
    order = np.random.default_rng(seed).permutation(len(labels))  # (N,)
    taken = np.zeros(len(labels), dtype=bool)
    out = {}
    for k in sorted(want):
        candidates = order[(labels[order, k] == 1) & ~taken[order]]
        out[k] = np.sort(candidates[: max(0, int(want[k]))])
        taken[out[k]] = True
    return out


def sample_grid(cls: str, synthetic: Sequence[np.ndarray], real: Sequence[np.ndarray]) -> bytes:
    """PNG bytes: a row of synthetic images for ``cls`` above a row of real positives of ``cls``."""
    buf = io.BytesIO()
    make_contact_sheet([(f"synthetic: {cls}", list(synthetic), list(real))], buf, second_label="real")
    return buf.getvalue()


def filter_grid(cls: str, kept: Sequence[np.ndarray], dropped: Sequence[np.ndarray]) -> bytes:
    """PNG bytes: synthetic images of ``cls`` the fidelity filter kept above those it dropped."""
    buf = io.BytesIO()
    make_contact_sheet([(f"kept: {cls}", list(kept), list(dropped))], buf, second_label="dropped")
    return buf.getvalue()
