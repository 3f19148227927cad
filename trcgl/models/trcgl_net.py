"""TRCGL-Net: backbone → SE channel gate → class-aware attention → label-GCN classifiers, and its peers.

One model, every part a switch in :class:`~trcgl.config.ModelConfig`::

    x (B, 1, H, W) in [0, 1]
      └─ Backbone (timm, normalises inside)   → F (B, C, h, w)
         └─ SEGate                  [model.se] → F (B, C, h, w)          ┐ forward_features
            └─ Dropout              [model.dropout]                       ┘
               W (K, C): LabelGCN over the label graph [model.gcn], else a learned (K, C) matrix
               ├─ class attention   [model.class_attention]: maps a (B, K, h, w), f_k = sum_hw a_k F,
               │                                             logits_k = <f_k, W_k> + b_k
               ├─ CSRA              [model.csra]:  s_k = <F, W_k> / |W_k| per position,
               │                                   logits_k = mean_hw s_k + lambda max_hw s_k + b_k
               └─ pooled (neither): s_k = <F, W_k> per position, logits_k = mean_hw s_k + b_k
                                    (= linear / ML-GCN classifier on the average-pooled feature)

Peers: plain backbone (se, class_attention, gcn, csra off), ML-GCN (gcn only), CSRA (csra on), TRCGL-Net
(se, class_attention, gcn on).

Attention maps (``return_attention=True``) always sum to 1 over space per (b, k): the class-attention maps, or,
without class attention, a spatial softmax (temperature ``model.attention_temperature``) of the class score maps
s_k: the CSRA attention at finite temperature, or class activation maps for the pooled heads.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import torch
from torch import Tensor, nn

from trcgl.config import ModelConfig
from trcgl.models.backbone import Backbone, read_uri_bytes
from trcgl.models.gcn import LabelGCN, build_adjacency
from trcgl.models.heads import ClassAttention, SEGate, csra_logits, spatial_softmax

log = logging.getLogger(__name__)

LEARNED_EMBEDDING = "learned"


class LearnedClassifier(nn.Module):
    """A plain (K, C) classifier matrix, the no-GCN counterpart of :class:`LabelGCN` (same call: ``module()``)."""

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        bound = channels**-0.5  # nn.Linear's default init range
        self.weight = nn.Parameter(torch.empty(num_classes, channels).uniform_(-bound, bound))  # (K, C)

    def forward(self) -> Tensor:
        return self.weight  # (K, C)


def check_config(cfg: ModelConfig, num_classes: int, cooccurrence: np.ndarray | None) -> None:
    """Raises ValueError, naming the config keys, for combinations the model cannot build."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if cfg.attention_temperature <= 0:
        raise ValueError(f"config key 'model.attention_temperature' must be > 0, got {cfg.attention_temperature}")
    if cfg.csra and cfg.class_attention:
        raise ValueError("config keys 'model.csra' and 'model.class_attention' are mutually exclusive; switch one off")
    if cfg.gcn and cooccurrence is None:
        raise ValueError("config key 'model.gcn' is on but no co-occurrence matrix was given to build the label graph")
    if cooccurrence is not None and np.shape(cooccurrence) != (num_classes, num_classes):
        raise ValueError(
            f"co-occurrence matrix has shape {np.shape(cooccurrence)}, expected {(num_classes, num_classes)} "
            f"for {num_classes} classes"
        )


def load_label_embeddings(uri: str) -> Tensor:
    """A (K, D) float32 tensor from a .npy file (local path or s3://)."""
    array = np.load(io.BytesIO(read_uri_bytes(uri)), allow_pickle=False)
    log.info("label embeddings %s from %s", array.shape, uri)
    return torch.from_numpy(np.asarray(array, dtype=np.float32))


class TRCGLNet(nn.Module):
    """TRCGL-Net and its peers (see the module docstring for the data flow).

    Args:
        cfg: the ``model`` config section.
        num_classes: K.
        cooccurrence: (K, K) train co-occurrence counts (diagonal = per-class counts); required when ``cfg.gcn``.
    """

    def __init__(self, cfg: ModelConfig, num_classes: int, cooccurrence: np.ndarray | None = None) -> None:
        super().__init__()
        check_config(cfg, num_classes, cooccurrence)
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = Backbone(cfg.backbone, cfg.pretrained)
        channels = self.backbone.num_features
        self.se = SEGate(channels, cfg.se_reduction) if cfg.se else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)
        self.attention = (
            ClassAttention(channels, num_classes, cfg.attention_temperature) if cfg.class_attention else None
        )
        if cfg.gcn:
            embeddings = (
                None if cfg.label_embedding == LEARNED_EMBEDDING else load_label_embeddings(cfg.label_embedding)
            )
            self.classifier: nn.Module = LabelGCN(
                build_adjacency(cooccurrence, cfg.gcn_tau, cfg.gcn_p),
                out_dim=channels,
                hidden=cfg.gcn_hidden,
                layers=cfg.gcn_layers,
                embedding_dim=cfg.label_embedding_dim,
                embeddings=embeddings,
            )
        else:
            self.classifier = LearnedClassifier(num_classes, channels)
        self.bias = nn.Parameter(torch.zeros(num_classes))  # (K,)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, 1, H, W) in [0, 1] → gated feature map (B, C, h, w) (backbone + SE gate)."""
        return self.se(self.backbone(x))

    def forward_head(self, features: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Feature map (B, C, h, w) → logits (B, K) [, attention maps (B, K, h, w)]."""
        features = self.dropout(features)
        weight = self.classifier()  # (K, C)
        if self.attention is not None:
            class_features, maps = self.attention(features)  # (B, K, C), (B, K, h, w)
            logits = (class_features * weight).sum(dim=-1)  # (B, K)
        else:
            scores = torch.einsum("bchw,kc->bkhw", features, weight)  # (B, K, h, w)
            if self.cfg.csra:
                scores = scores / weight.norm(dim=1)[None, :, None, None]  # (B, K, h, w) CSRA's normalised classifier
                logits = csra_logits(scores, self.cfg.csra_lambda)  # (B, K)
            else:
                logits = scores.mean(dim=(2, 3))  # (B, K)
            maps = spatial_softmax(scores, self.cfg.attention_temperature) if return_attention else None
        logits = logits + self.bias  # (B, K)
        return (logits, maps) if return_attention else logits

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Classifies a batch.

        Args:
            x: (B, 1, H, W) images in [0, 1]; the backbone normalises them.
            return_attention: also return the per-class attention maps.

        Returns:
            logits (B, K), or (logits (B, K), attention maps (B, K, h, w) summing to 1 over (h, w)).
        """
        return self.forward_head(self.forward_features(x), return_attention)


def build_model(cfg: ModelConfig, num_classes: int, cooccurrence: np.ndarray | None = None) -> TRCGLNet:
    """The model the ``model`` config section describes (see :class:`TRCGLNet`)."""
    model = TRCGLNet(cfg, num_classes, cooccurrence)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "model %s: se=%s class_attention=%s csra=%s gcn=%s, %d classes, %.2fM trainable parameters",
        cfg.backbone,
        cfg.se,
        cfg.class_attention,
        cfg.csra,
        cfg.gcn,
        num_classes,
        n_params / 1e6,
    )
    return model
