"""Soft edit masks from PadChest localizations: where an edit may change a chest X-ray.

Generic geometry, no anatomy: the lung field is taken as rows :data:`LUNG_ROWS` and columns :data:`LUNG_COLS` of a
frontal image (fractions of the side), split at the midline into the two sides and vertically into the levels of
:data:`trcgl.data.synth.findings.LEVEL_BANDS` (the bands PadChest-Synth's renderer draws findings in, as fractions of
the lung's height). Sides and levels are read by :func:`trcgl.data.synth.findings.parse_localizations`; sides are the
patient's, shown in radiological convention: the patient's RIGHT is the image's LEFT (as the renderer draws them).
A side or level that is not named spans both sides or every level; no localization gives the whole lung field.

The union of the named boxes is feathered by a Gaussian truncated at :data:`TRUNCATE` sigmas, so the mask is exactly
0 far from the boxes: an edit there keeps the input's pixels exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trcgl.data.synth.anatomy import LEFT, RIGHT
from trcgl.data.synth.findings import LEVEL_BANDS, parse_localizations

LUNG_ROWS = (0.15, 0.90)  # top and bottom of the lung field, fractions of the image height
LUNG_COLS = (0.10, 0.90)  # outer edges of the lung field, fractions of the image width; the midline is at 0.5
FEATHER = 0.04  # Gaussian sigma of the mask's edges, fraction of the image side
TRUNCATE = 3.0  # the feathering kernel is exactly 0 beyond this many sigmas


def region_boxes(localizations: Sequence[str]) -> list[tuple[float, float, float, float]]:
    """The lung-field boxes the localizations name.

    Args:
        localizations: raw PadChest strings ("loc left", "loc right upper lobe", ...); may be empty.

    Returns:
        One box (top, bottom, left, right) per named (side, level), in fractions of the image (rows from the top,
        columns from the image's left); the whole lung field when nothing is named.
    """
    place = parse_localizations(localizations)
    top, bottom = LUNG_ROWS
    height = bottom - top
    rows = [(top + a * height, top + b * height) for a, b in (LEVEL_BANDS[lv] for lv in place.levels)] or [LUNG_ROWS]
    side_cols = {RIGHT: (LUNG_COLS[0], 0.5), LEFT: (0.5, LUNG_COLS[1])}  # patient's right on the image's left
    cols = [side_cols[s] for s in place.sides] or [LUNG_COLS]
    return [(r0, r1, c0, c1) for r0, r1 in rows for c0, c1 in cols]


def _feather_matrix(size: int, sigma: float) -> np.ndarray:
    """(S, S) banded matrix of a normalised Gaussian, exactly 0 beyond ``TRUNCATE`` sigmas (zero padding)."""
    radius = max(1, int(np.ceil(TRUNCATE * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    band = np.zeros((size, size), dtype=np.float64)
    for off, w in zip(offsets.astype(int), kernel, strict=True):
        band += np.eye(size, k=off) * w
    return band


def region_mask(localizations: Sequence[str], size: int, feather: float = FEATHER) -> np.ndarray:
    """A soft mask over the region the localizations name.

    Args:
        localizations: raw PadChest strings; empty: the whole lung field.
        size: image side S.
        feather: Gaussian sigma of the edges as a fraction of S; 0: hard edges.

    Returns:
        (S, S) float32 in [0, 1]: 1 inside the named region, 0 exactly beyond its feathered edge.
    """
    box = np.zeros((size, size), dtype=np.float64)
    for r0, r1, c0, c1 in region_boxes(localizations):
        box[int(round(r0 * size)) : int(round(r1 * size)), int(round(c0 * size)) : int(round(c1 * size))] = 1.0
    sigma = feather * size
    if sigma > 0:
        blur = _feather_matrix(size, sigma)
        box = blur @ box @ blur.T  # separable Gaussian: rows, then columns
    return np.clip(box, 0.0, 1.0).astype(np.float32)
