"""Defaults that are data, not code: the sweep's search space and the ablation study's rows.

Kept apart from the schema so the study and the search space read as tables; presets in ``jobs/configs/`` replace
them whole.
"""

from __future__ import annotations

from typing import Any


def default_space() -> dict[str, dict[str, Any]]:
    """The mission's search space: synthetic-data ratios and source, GCN settings, the parts on/off, loss, optimiser."""
    return {
        "train.aug_ratio_tail": {"type": "choice", "values": [0.0, 0.5, 1.0, 2.0]},
        "train.aug_ratio_medium": {"type": "choice", "values": [0.0, 0.5]},
        "synthetic_set": {"type": "choice", "values": ["synthetic", "synthetic_filtered"]},
        "model.gcn": {"type": "choice", "values": [True, False]},
        "model.gcn_tau": {"type": "uniform", "low": 0.05, "high": 0.5},  # _labels.json "graph": edges per tau
        "model.gcn_p": {"type": "uniform", "low": 0.1, "high": 0.4},
        "model.gcn_layers": {"type": "choice", "values": [1, 2, 3]},
        "model.gcn_hidden": {"type": "choice", "values": [64, 128, 256]},
        "model.class_attention": {"type": "choice", "values": [True, False]},
        "model.se": {"type": "choice", "values": [True, False]},
        "loss.name": {"type": "choice", "values": ["bce", "asl"]},
        "train.lr": {"type": "loguniform", "low": 3e-4, "high": 3e-3},
        "train.weight_decay": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
    }


def peer_rows() -> dict[str, dict[str, Any]]:
    """The peers as their reference code trains them, each row with what makes it so (see each comment's source).

    Every key not named keeps the run's config (backbone, data, schedule, bias at the log prior).
    """
    off = {"model.se": False, "model.class_attention": False, "model.csra": False, "model.gcn": False}
    return {
        "backbone + BCE": {**off, "extra": "none"},
        "+ re-sampling": {**off, "extra": "real"},
        # ASL (Ridnik et al. 2021, github.com/Alibaba-MIIL/ASL): gamma- 4, gamma+ 0, clip 0.05, focal weights
        # without gradient (loss.asl_detach_focal, on by default); we average over B*K where the reference sums
        "ASL": {**off, "loss.name": "asl", "extra": "none"},
        # LDAM-DRW (Cao et al. 2019, github.com/kaidic/LDAM-DRW): normalised (cosine) classifier with s = 30,
        # margins in cosine units; multi-label through per-class BCE (trcgl/losses.py)
        "LDAM-DRW": {**off, "loss.name": "ldam_drw", "model.cosine_classifier": True, "extra": "none"},
        # ML-GCN (Chen et al. 2019, github.com/megvii-research/ML-GCN): global max pooling, bias-free GCN layers,
        # its gen_A/gen_adj adjacency with p = 0.25 (tau is the run's: the reference's 0.4 was chosen for COCO);
        # fixed label features from the train labels' PPMI (the reference uses GloVe vectors, not available offline)
        "ML-GCN": {
            **off,
            "model.gcn": True,
            "model.pool": "max",
            "model.gcn_bias": False,
            "model.gcn_adjacency": "reference",
            "model.gcn_p": 0.25,
            "model.label_embedding": "ppmi",
            "extra": "none",
        },
        # CSRA (Zhu & Wu 2021, github.com/Kevinz-code/CSRA): one head, T = 1 (model.csra_temperature), lambda 0.1
        "CSRA": {**off, "model.csra": True, "extra": "none"},
    }


def default_ablation_rows() -> dict[str, dict[str, Any]]:
    """The study of the paper's claims: peers, TRCGL-Net's parts added one at a time on BCE and on ASL (the best
    peer loss of the first study), removed one at a time, synthesis against duplication and fidelity filtering on
    (see :class:`AblationConfig`)."""
    off = {"model.se": False, "model.class_attention": False, "model.csra": False, "model.gcn": False}
    full = {"model.se": True, "model.class_attention": True, "model.csra": False, "model.gcn": True}
    asl = {"loss.name": "asl"}
    return {
        **peer_rows(),
        # TRCGL-Net, one part added at a time (the first step is the backbone + BCE row)
        "+ SE": {**off, "model.se": True, "extra": "none"},
        "+ SE + CA": {**off, "model.se": True, "model.class_attention": True, "extra": "none"},
        "+ SE + CA + GCN (full - diffusion)": {**full, "extra": "none"},
        # the same on the best loss (the first step is the ASL row)
        "ASL + SE": {**off, **asl, "model.se": True, "extra": "none"},
        "ASL + SE + CA": {**off, **asl, "model.se": True, "model.class_attention": True, "extra": "none"},
        "ASL + SE + CA + GCN": {**full, **asl, "extra": "none"},
        "TRCGL-Net (full)": {**full, "extra": "synthetic"},
        "TRCGL-Net (full, ASL)": {**full, **asl, "extra": "synthetic"},
        # the full model minus one part (minus diffusion is the row above)
        "full - SE": {**full, "model.se": False, "extra": "synthetic"},
        "full - CA": {**full, "model.class_attention": False, "extra": "synthetic"},
        "full - GCN": {**full, "model.gcn": False, "extra": "synthetic"},
        # augmentation: synthesis vs duplication, fidelity filtering on
        "full, duplication instead of synthesis": {**full, "extra": "real"},
        "full, fidelity-filtered synthesis": {**full, "extra": "synthetic_filtered"},
    }


def default_comparisons() -> dict[str, str]:
    """Rows of :func:`default_ablation_rows` compared with the row they add one part to (besides the baseline)."""
    return {
        "+ SE + CA": "+ SE",
        "+ SE + CA + GCN (full - diffusion)": "+ SE + CA",
        "ASL + SE": "ASL",
        "ASL + SE + CA": "ASL + SE",
        "ASL + SE + CA + GCN": "ASL + SE + CA",
        "TRCGL-Net (full)": "+ SE + CA + GCN (full - diffusion)",
        "TRCGL-Net (full, ASL)": "ASL + SE + CA + GCN",
        "full - SE": "TRCGL-Net (full)",
        "full - CA": "TRCGL-Net (full)",
        "full - GCN": "TRCGL-Net (full)",
        "full, duplication instead of synthesis": "TRCGL-Net (full)",
        "full, fidelity-filtered synthesis": "TRCGL-Net (full)",
    }
