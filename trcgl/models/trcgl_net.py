"""TRCGL-Net: backbone → SE channel gate → class-aware attention → label-GCN classifiers, and its peers.

One model, every part a switch in :class:`~trcgl.config.ModelConfig`::

    x (B, 1, H, W) in [0, 1]
      └─ Backbone (timm, normalises inside) [model.output_stride] → F (B, C, h, w)
         └─ SEGate                  [model.se] → F (B, C, h, w)          ┐ forward_features
            └─ Dropout              [model.dropout]                       ┘
               W (K, C): LabelGCN over the label graph [model.gcn], else a learned (K, C) matrix
               ├─ class attention   [model.class_attention]: maps a (B, K, h, w), f_k = sum_hw a_k F,
               │                                             logits_k = <f_k, W_k> + b_k
               ├─ CSRA              [model.csra]:  s_k = <F, W_k> / |W_k| per position,
               │                                   logits_k = mean_hw s_k + lambda sum_hw softmax(T s_k) s_k + b_k
               └─ pooled (neither): f = mean_hw F or max_hw F [model.pool], logits_k = <f, W_k> + b_k
                                    (= linear / ML-GCN classifier on the pooled feature)

With ``model.cosine_classifier`` the class attention and pooled heads use <f/|f|, W_k/|W_k|> * s (s =
``model.cosine_scale``) in place of <f, W_k>: LDAM's normalised classifier. The bias b starts at the train log prior
(``model.bias_init``), so every class starts at its prevalence rather than at p = 0.5.

Peers, as their reference code builds them (``ablation.rows`` in trcgl/config/defaults.py): plain backbone (se,
class_attention, gcn, csra off); ML-GCN (gcn on, max pooling, bias-free GCN layers, fixed PPMI label features, the
reference adjacency); CSRA (csra on, T = 1); LDAM-DRW (cosine classifier, s = 30); TRCGL-Net (se, class_attention,
gcn on).

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
from trcgl.models.gcn import LabelGCN, build_adjacency, ppmi_embeddings
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


POOLS = ("mean", "max")
BIAS_INITS = ("log_prior", "zero")
PPMI_EMBEDDING = "ppmi"


def check_config(cfg: ModelConfig, num_classes: int, cooccurrence: np.ndarray | None) -> None:
    """Raises ValueError, naming the config keys, for combinations the model cannot build."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if cfg.attention_temperature <= 0:
        raise ValueError(f"config key 'model.attention_temperature' must be > 0, got {cfg.attention_temperature}")
    if cfg.csra_temperature <= 0:
        raise ValueError(f"config key 'model.csra_temperature' must be > 0, got {cfg.csra_temperature}")
    if cfg.output_stride not in (8, 16, 32):
        raise ValueError(f"config key 'model.output_stride' must be 8, 16 or 32, got {cfg.output_stride}")
    if cfg.pool not in POOLS:
        raise ValueError(f"config key 'model.pool' must be one of {list(POOLS)}, got {cfg.pool!r}")
    if cfg.bias_init not in BIAS_INITS:
        raise ValueError(f"config key 'model.bias_init' must be one of {list(BIAS_INITS)}, got {cfg.bias_init!r}")
    if cfg.cosine_scale <= 0:
        raise ValueError(f"config key 'model.cosine_scale' must be > 0, got {cfg.cosine_scale}")
    if cfg.csra and cfg.class_attention:
        raise ValueError("config keys 'model.csra' and 'model.class_attention' are mutually exclusive; switch one off")
    if cfg.csra and cfg.cosine_classifier:
        raise ValueError(
            "config keys 'model.csra' and 'model.cosine_classifier' are mutually exclusive (CSRA normalises its "
            "classifier itself); switch one off"
        )
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
        num_train: N, the number of train images behind ``cooccurrence``; needed for the log-prior bias and PPMI
            label features (without it the bias starts at 0, as for a model whose weights are loaded next).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        num_classes: int,
        cooccurrence: np.ndarray | None = None,
        num_train: int | None = None,
    ) -> None:
        super().__init__()
        check_config(cfg, num_classes, cooccurrence)
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = Backbone(cfg.backbone, cfg.pretrained, cfg.output_stride)
        channels = self.backbone.num_features
        self.se = SEGate(channels, cfg.se_reduction) if cfg.se else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)
        self.attention = (
            ClassAttention(channels, num_classes, cfg.attention_temperature) if cfg.class_attention else None
        )
        if cfg.gcn:
            self.classifier: nn.Module = LabelGCN(
                build_adjacency(cooccurrence, cfg.gcn_tau, cfg.gcn_p, cfg.gcn_adjacency),
                out_dim=channels,
                hidden=cfg.gcn_hidden,
                layers=cfg.gcn_layers,
                embedding_dim=cfg.label_embedding_dim,
                embeddings=label_features(cfg, cooccurrence, num_train),
                bias=cfg.gcn_bias,
            )
        else:
            self.classifier = LearnedClassifier(num_classes, channels)
        self.bias = nn.Parameter(initial_bias(cfg.bias_init, cooccurrence, num_train, num_classes))  # (K,)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, 1, H, W) in [0, 1] → gated feature map (B, C, h, w) (backbone + SE gate)."""
        return self.se(self.backbone(x))

    def forward_head(self, features: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Feature map (B, C, h, w) → logits (B, K) [, attention maps (B, K, h, w)]."""
        features = self.dropout(features)
        weight = self.classifier()  # (K, C)
        cosine = self.cfg.cosine_classifier
        if cosine:
            weight = nn.functional.normalize(weight, dim=1)  # (K, C) unit rows
        if self.attention is not None:
            class_features, maps = self.attention(features)  # (B, K, C), (B, K, h, w)
            if cosine:
                class_features = nn.functional.normalize(class_features, dim=-1)  # (B, K, C)
            logits = (class_features * weight).sum(dim=-1)  # (B, K)
        else:
            scores = torch.einsum("bchw,kc->bkhw", features, weight)  # (B, K, h, w)
            if self.cfg.csra:
                scores = scores / weight.norm(dim=1)[None, :, None, None]  # (B, K, h, w) CSRA's normalised classifier
                logits = csra_logits(scores, self.cfg.csra_lambda, self.cfg.csra_temperature)  # (B, K)
            else:
                pooled = features.amax(dim=(2, 3)) if self.cfg.pool == "max" else features.mean(dim=(2, 3))  # (B, C)
                if cosine:
                    pooled = nn.functional.normalize(pooled, dim=1)  # (B, C)
                logits = pooled @ weight.T  # (B, K)
            maps = spatial_softmax(scores, self.cfg.attention_temperature) if return_attention else None
        if cosine:
            logits = logits * self.cfg.cosine_scale  # (B, K)
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


def label_features(cfg: ModelConfig, cooccurrence: np.ndarray, num_train: int | None) -> Tensor | None:
    """Fixed (K, D) label-node features for ``model.label_embedding``, or None for learned ones."""
    if cfg.label_embedding == LEARNED_EMBEDDING:
        return None
    if cfg.label_embedding == PPMI_EMBEDDING:
        if num_train is None:
            # a checkpoint being loaded: the features are a buffer of its state dict, so any (K, D) placeholder works
            return torch.zeros(cooccurrence.shape[0], min(cfg.label_embedding_dim, cooccurrence.shape[0]))
        return ppmi_embeddings(cooccurrence, num_train, cfg.label_embedding_dim)
    return load_label_embeddings(cfg.label_embedding)


def initial_bias(kind: str, cooccurrence: np.ndarray | None, num_train: int | None, num_classes: int) -> Tensor:
    """(K,) classifier bias at init: zeros, or the log prior b_k = log(pi_k / (1 - pi_k)), so sigmoid(b_k) = pi_k.

    pi_k is the train prevalence C[k, k] / N, clipped to [0.5 / N, 1 - 0.5 / N] so that a class without (or with
    only) positives gets a finite bias. Zeros when the counts are not given (a model whose weights are loaded next).
    """
    if kind == "zero" or cooccurrence is None or not num_train:
        return torch.zeros(num_classes)
    floor = 0.5 / num_train
    prior = np.clip(np.diag(np.asarray(cooccurrence, dtype=np.float64)) / num_train, floor, 1.0 - floor)  # (K,)
    return torch.tensor(np.log(prior / (1.0 - prior)), dtype=torch.float32)


def build_model(
    cfg: ModelConfig, num_classes: int, cooccurrence: np.ndarray | None = None, num_train: int | None = None
) -> TRCGLNet:
    """The model the ``model`` config section describes (see :class:`TRCGLNet` for the arguments)."""
    model = TRCGLNet(cfg, num_classes, cooccurrence, num_train)
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
