"""Multi-label training losses: BCE, ASL and LDAM-DRW, chosen by ``loss.name``.

Every loss is a module called as ``loss(logits (B, K), targets (B, K) float in {0, 1}, epoch) -> scalar`` and
reduces by the mean over all B*K terms, so learning rates transfer between losses. A target equal to
:data:`~trcgl.label_values.UNKNOWN` (U-Ignore) is a term left out: the mean is then over the known terms, and an
unknown target never counts as a positive (LDAM's margin) or a negative. ``epoch`` is 0-based; only
LDAM-DRW looks at it. Losses compute in float32 whatever the logits' dtype (bf16 under autocast).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trcgl.config import LossConfig
from trcgl.label_values import UNKNOWN


def split_targets(targets: Tensor) -> tuple[Tensor, Tensor | None]:
    """Targets as float 0/1 and the mask of known terms.

    Args:
        targets: (B, K) 0, 1 or :data:`~trcgl.label_values.UNKNOWN`.

    Returns:
        (y (B, K) float32 with unknown terms 0, mask (B, K) float32 1 where known; None when every term is known).
    """
    y = targets.float()
    unknown = y == UNKNOWN  # (B, K)
    if not bool(unknown.any()):
        return y, None
    return y.masked_fill(unknown, 0.0), (~unknown).float()


def reduce_terms(terms: Tensor, mask: Tensor | None) -> Tensor:
    """The mean of (B, K) loss terms, over the known ones when a mask is given (0 when none is known)."""
    if mask is None:
        return terms.mean()
    return (terms * mask).sum() / mask.sum().clamp(min=1.0)


class MultiLabelLoss(nn.Module):
    """Base class: ``forward(logits (B, K), targets (B, K), epoch: int = 0) -> scalar``."""

    def forward(self, logits: Tensor, targets: Tensor, epoch: int = 0) -> Tensor:
        raise NotImplementedError


class BCELoss(MultiLabelLoss):
    """Binary cross-entropy on logits, mean over the B*K (known) terms."""

    def forward(self, logits: Tensor, targets: Tensor, epoch: int = 0) -> Tensor:
        y, mask = split_targets(targets)
        if mask is None:
            return F.binary_cross_entropy_with_logits(logits.float(), y)
        return reduce_terms(F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none"), mask)


class AsymmetricLoss(MultiLabelLoss):
    """Asymmetric loss (Ridnik et al. 2021), mean over B*K (the reference implementation sums).

    With p = sigmoid(z) and the shifted negative probability p_m = max(p - clip, 0):
        L+ = (1 - p)^gamma_pos * log(p)            for positives,
        L- = p_m^gamma_neg * log(1 - p_m)          for negatives,
        loss = -mean(y L+ + (1 - y) L-).
    With gamma_pos = gamma_neg = clip = 0 it is exactly BCE.

    ``detach_focal`` (config ``loss.asl_detach_focal``, default on) computes the focal weights (1 - p)^gamma_pos and
    p_m^gamma_neg without gradient, as the reference training does (its ``disable_torch_grad_focal_loss=True``): the
    gradient of a term is then its weight times the gradient of its log term only. Differentiating through the
    weights (off) makes the negatives' gradients several times larger, i.e. the loss less asymmetric than published.

    Args:
        gamma_neg: focusing exponent of negatives.
        gamma_pos: focusing exponent of positives.
        clip: probability margin m shifted off negatives (0 turns it off).
        eps: floor inside the log of clipped negatives.
        detach_focal: compute the focal weights without gradient.
    """

    def __init__(
        self, gamma_neg: float, gamma_pos: float, clip: float, eps: float = 1e-8, detach_focal: bool = True
    ) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.detach_focal = detach_focal

    def forward(self, logits: Tensor, targets: Tensor, epoch: int = 0) -> Tensor:
        y, mask = split_targets(targets)
        logits = logits.float()
        p = torch.sigmoid(logits)  # (B, K)
        log_p = F.logsigmoid(logits)  # (B, K)
        if self.clip > 0:
            p_neg = (p - self.clip).clamp(min=0)  # (B, K) shifted probability of negatives
            log_1m_p_neg = torch.log((1 - p_neg).clamp(min=self.eps))  # (B, K)
        else:
            p_neg, log_1m_p_neg = p, F.logsigmoid(-logits)  # exact log(1 - p)
        weight_pos = (1 - p).pow(self.gamma_pos)  # (B, K)
        weight_neg = p_neg.pow(self.gamma_neg)  # (B, K)
        if self.detach_focal:
            weight_pos, weight_neg = weight_pos.detach(), weight_neg.detach()
        loss_pos = weight_pos * log_p  # (B, K)
        loss_neg = weight_neg * log_1m_p_neg  # (B, K)
        return -reduce_terms(y * loss_pos + (1 - y) * loss_neg, mask)


class LDAMDRWLoss(MultiLabelLoss):
    """LDAM with deferred re-weighting (Cao et al. 2019), adapted to multi-label BCE.

    Multi-label adaptation: each class is a binary problem whose rare side is its positives, so the label-distribution
    -aware margin m_k = c * n_k^(-1/4) (c such that max_k m_k = ``max_margin``; n_k = train positives, at least 1)
    is taken off the logits of positives only, and the result is fed to BCE.

    As published (``cosine=True``, with ``model.cosine_classifier``): the model's logits are already
    z = s * cos(f, W_k) + b_k (the reference's ``NormedLinear`` times its s = 30, our b_k added), so the margin is in
    cosine units and is scaled by the same s::

        z'_bk = z_bk - s * m_k * y_bk   (= s * (cos - m_k y) + b_k),   loss = mean_bk BCE(z'_bk, y_bk; pos_weight w_k)

    On raw (unbounded) logits (``cosine=False``, the former behaviour): z'_bk = s * (z_bk - m_k * y_bk) with
    s = ``loss.ldam_scale``; there the margins have no fixed unit and s mostly steepens the sigmoid.

    DRW: before epoch E = round_half_up(``drw_start_fraction`` * epochs) every w_k = 1; from epoch E on (0-based
    epochs, ``epoch >= E``) positives of class k are weighted by the effective-number weight
    (1 - beta) / (1 - beta^n_k), normalised to mean 1 over classes. Negatives keep weight 1.

    Args:
        class_counts: (K,) train positives per class.
        max_margin: largest margin (the rarest class's).
        scale: s.
        drw_start_epoch: E.
        beta: effective-number beta.
        cosine: the logits come from a cosine classifier already scaled by ``scale``.
    """

    def __init__(
        self,
        class_counts: np.ndarray,
        max_margin: float,
        scale: float,
        drw_start_epoch: int,
        beta: float,
        cosine: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"config key 'loss.drw_beta' must be in [0, 1), got {beta}")
        counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)  # (K,)
        margins = counts**-0.25
        margins = margins * (max_margin / margins.max())  # (K,)
        weights = (1.0 - beta) / (1.0 - np.power(beta, counts))  # (K,)
        weights = weights / weights.mean()  # (K,) mean 1
        self.register_buffer("margins", torch.tensor(margins, dtype=torch.float32))
        self.register_buffer("drw_weights", torch.tensor(weights, dtype=torch.float32))
        self.scale = scale
        self.drw_start_epoch = drw_start_epoch
        self.cosine = cosine

    def class_weights(self, epoch: int) -> Tensor:
        """(K,) positive weights in effect at ``epoch``: ones before the DRW epoch, effective-number weights after."""
        return self.drw_weights if epoch >= self.drw_start_epoch else torch.ones_like(self.drw_weights)

    def forward(self, logits: Tensor, targets: Tensor, epoch: int = 0) -> Tensor:
        y, mask = split_targets(targets)
        logits = logits.float()
        margins = self.margins.to(logits)  # (K,)
        if self.cosine:
            shifted = logits - self.scale * margins * y  # (B, K) the scale is already in the logits
        else:
            shifted = self.scale * (logits - margins * y)  # (B, K)
        pos_weight = self.class_weights(epoch).to(logits)  # (K,)
        if mask is None:
            return F.binary_cross_entropy_with_logits(shifted, y, pos_weight=pos_weight)
        terms = F.binary_cross_entropy_with_logits(shifted, y, pos_weight=pos_weight, reduction="none")  # (B, K)
        return reduce_terms(terms, mask)


LOSSES = ("bce", "asl", "ldam_drw")


def drw_start_epoch(fraction: float, epochs: int) -> int:
    """The first (0-based) DRW epoch: fraction * epochs rounded half up."""
    return math.floor(fraction * epochs + 0.5)


def build_loss(
    cfg: LossConfig, class_counts: np.ndarray, epochs: int, cosine_scale: float | None = None
) -> MultiLabelLoss:
    """The loss the ``loss`` config section names.

    Args:
        cfg: loss config.
        class_counts: (K,) train positives per class (used by ldam_drw).
        epochs: total training epochs (places the DRW switch).
        cosine_scale: s of the model's cosine classifier (``model.cosine_scale`` when ``model.cosine_classifier``),
            None for raw logits; ldam_drw then puts its margins in cosine units.

    Returns:
        a module called as ``loss(logits (B, K), targets (B, K), epoch) -> scalar``.
    """
    if cfg.name == "bce":
        return BCELoss()
    if cfg.name == "asl":
        return AsymmetricLoss(cfg.asl_gamma_neg, cfg.asl_gamma_pos, cfg.asl_clip, detach_focal=cfg.asl_detach_focal)
    if cfg.name == "ldam_drw":
        return LDAMDRWLoss(
            class_counts,
            max_margin=cfg.ldam_max_margin,
            scale=cfg.ldam_scale if cosine_scale is None else cosine_scale,
            drw_start_epoch=drw_start_epoch(cfg.drw_start_fraction, epochs),
            beta=cfg.drw_beta,
            cosine=cosine_scale is not None,
        )
    raise ValueError(f"unknown loss {cfg.name!r} (config key 'loss.name'); known: {list(LOSSES)}")
