"""What a prepared label value means: 1 positive, 0 negative, :data:`UNKNOWN` not known (U-Ignore).

A dataset's ``labels`` column holds K uint8 values per row. A table prepared with ``data.table.uncertain: ignore``
(or ``blank: ignore``) marks a class whose value was uncertain (or blank) in the row as :data:`UNKNOWN` (255), unless
the row is positive for the class through another source column: U-Ignore of Irvin et al. 2019
(https://arxiv.org/abs/1901.07031). Every consumer honours it: the losses leave those terms out of their mean
(:mod:`trcgl.losses`), the metrics and thresholds leave those images out of the class's ranking
(:mod:`trcgl.metrics`, :mod:`trcgl.train.thresholds`), the class counts and the co-occurrence counts count positives
only (:mod:`trcgl.data.splits`), and the generation plan edits only known negatives (:mod:`trcgl.diffusion.plan`).
The label graph's P(j|i) = C[i, j] / C[i, i] (:mod:`trcgl.data.label_graph`) therefore counts an image positive for i
and unknown for j as one where j does not co-occur: with unknowns it is a lower bound. Every other dataset holds 0 and
1 only, so nothing changes for it.

The helpers take numpy arrays or torch tensors of any shape.
"""

from __future__ import annotations

from typing import Any

UNKNOWN = 255  # the value of a class not known for a row (fits the uint8 label column; never a valid 0/1)


def positive(labels: Any) -> Any:
    """Boolean array/tensor: the value is 1."""
    return labels == 1


def known(labels: Any) -> Any:
    """Boolean array/tensor: the value is 0 or 1 (not :data:`UNKNOWN`)."""
    return labels != UNKNOWN


def has_unknown(labels: Any) -> bool:
    """Whether any value is :data:`UNKNOWN`."""
    return bool((labels == UNKNOWN).any())
