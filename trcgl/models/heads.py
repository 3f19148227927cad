"""Heads that plug onto any (B, C, h, w) feature map: SE channel gate, class-aware attention, CSRA pooling.

Each knows nothing of the backbone or of where the classifier weights come from (learned or the label GCN);
:mod:`trcgl.models.trcgl_net` composes them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def spatial_softmax(scores: Tensor, temperature: float) -> Tensor:
    """Softmax over the h*w positions of per-class score maps.

    Args:
        scores: (B, K, h, w) spatial logits.
        temperature: divides the logits; lower is sharper.

    Returns:
        (B, K, h, w) non-negative maps that sum to 1 over (h, w) for every (b, k).
    """
    b, k, h, w = scores.shape
    flat = scores.reshape(b, k, h * w) / temperature  # (B, K, h*w)
    return flat.softmax(dim=-1).reshape(b, k, h, w)  # (B, K, h, w)


class SEGate(nn.Module):
    """Squeeze-and-excitation channel reweighting of a feature map (Hu et al. 2018).

    g = sigmoid(W2 relu(W1 avgpool(F))), output F * g, with W1: C → C // reduction (at least 1), W2 back to C.

    Args:
        channels: C.
        reduction: bottleneck ratio.
    """

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.squeeze = nn.Linear(channels, hidden)
        self.excite = nn.Linear(hidden, channels)

    def forward(self, features: Tensor) -> Tensor:
        """(B, C, h, w) → (B, C, h, w), each channel scaled by a gate in (0, 1)."""
        pooled = features.mean(dim=(2, 3))  # (B, C)
        gate = torch.sigmoid(self.excite(torch.relu(self.squeeze(pooled))))  # (B, C)
        return features * gate[:, :, None, None]  # (B, C, h, w)


class ClassAttention(nn.Module):
    """Class-aware spatial attention: one attention map and one pooled feature vector per class.

    Per class k a 1×1 convolution (no bias: a per-class constant cancels in the softmax) gives a spatial logit map;
    a softmax over the h*w positions at ``temperature`` turns it into a map a_k that is non-negative and sums to 1
    over space; the class-specific feature is the attention-weighted average f_k = sum_hw a_k(hw) F(hw).

    Args:
        channels: C.
        num_classes: K.
        temperature: softmax temperature over positions.
    """

    def __init__(self, channels: int, num_classes: int, temperature: float) -> None:
        super().__init__()
        self.logits = nn.Conv2d(channels, num_classes, kernel_size=1, bias=False)
        self.temperature = temperature

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Feature map (B, C, h, w) → (class features (B, K, C), attention maps (B, K, h, w))."""
        maps = spatial_softmax(self.logits(features), self.temperature)  # (B, K, h, w)
        class_features = torch.einsum("bkhw,bchw->bkc", maps, features)  # (B, K, C)
        return class_features, maps


def csra_logits(scores: Tensor, lam: float, temperature: float = 99.0) -> Tensor:
    """CSRA pooling (Zhu & Wu 2021), one head: average pooling plus lambda times a class-specific attention pooling.

    The attention pooling is sum_hw softmax_hw(T * s_k) s_k, the reference single head's (its default T = 1);
    T >= 99 stands for T → ∞, i.e. max pooling, as the reference code treats T = 99.

    Args:
        scores: (B, K, h, w) class score maps (the classifier applied at every position, normalised by the
            classifier norm as in CSRA).
        lam: residual attention weight lambda.
        temperature: T (config key ``model.csra_temperature``), > 0.

    Returns:
        (B, K) logits.
    """
    flat = scores.flatten(2)  # (B, K, h*w)
    if temperature >= 99:
        attended = flat.amax(dim=-1)  # (B, K)
    else:
        attended = (flat * (flat * temperature).softmax(dim=-1)).sum(dim=-1)  # (B, K)
    return flat.mean(dim=-1) + lam * attended  # (B, K)
