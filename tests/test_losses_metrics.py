"""Losses (BCE, ASL, LDAM-DRW) and metrics (per-class AP/AUC against scikit-learn, groups, bootstrap CIs)."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, roc_auc_score

from trcgl.config import LossConfig
from trcgl.losses import LDAMDRWLoss, build_loss, drw_start_epoch
from trcgl.metrics import METRICS, evaluate_scores, per_class_frame

COUNTS = np.array([500, 120, 30, 4, 1])  # train positives per class, head → tail
K = len(COUNTS)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(16, K, generator=gen)).requires_grad_()
    targets = (torch.rand(16, K, generator=gen) < 0.3).float()
    return logits, targets


# ---------------------------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("name", ["bce", "asl", "ldam_drw"])
def test_losses_run_finite_with_gradient(name: str) -> None:
    loss_fn = build_loss(LossConfig(name=name), COUNTS, epochs=10)
    logits, targets = batch()
    for epoch in (0, 9):
        loss = loss_fn(logits, targets, epoch)
        assert loss.ndim == 0 and torch.isfinite(loss)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_asl_without_focusing_or_clip_is_bce() -> None:
    asl = build_loss(LossConfig(name="asl", asl_gamma_neg=0.0, asl_gamma_pos=0.0, asl_clip=0.0), COUNTS, 10)
    logits, targets = batch()
    torch.testing.assert_close(asl(logits, targets, 0), F.binary_cross_entropy_with_logits(logits, targets))


def test_asl_matches_the_reference_implementation() -> None:
    cfg = LossConfig(name="asl", asl_gamma_neg=4.0, asl_gamma_pos=1.0, asl_clip=0.05)
    logits, targets = batch(1)
    # Ridnik et al.'s AsymmetricLoss.forward, which sums; ours is the mean over B*K
    p = torch.sigmoid(logits)
    p_neg = (1 - p + cfg.asl_clip).clamp(max=1)
    loss = targets * torch.log(p.clamp(min=1e-8)) + (1 - targets) * torch.log(p_neg.clamp(min=1e-8))
    pt = p * targets + p_neg * (1 - targets)
    loss = loss * torch.pow(1 - pt, cfg.asl_gamma_pos * targets + cfg.asl_gamma_neg * (1 - targets))
    reference = -loss.sum() / targets.numel()
    torch.testing.assert_close(build_loss(cfg, COUNTS, 10)(logits, targets, 0), reference)


def test_ldam_margins_and_drw_switch() -> None:
    cfg = LossConfig(name="ldam_drw", ldam_max_margin=0.5, ldam_scale=10.0, drw_start_fraction=0.6, drw_beta=0.999)
    loss_fn = build_loss(cfg, COUNTS, epochs=10)
    assert isinstance(loss_fn, LDAMDRWLoss)
    margins = loss_fn.margins.numpy()
    np.testing.assert_allclose(margins, 0.5 * (COUNTS / COUNTS.min()) ** -0.25, rtol=1e-6)  # max 0.5 on the rarest
    assert loss_fn.drw_start_epoch == 6  # round(0.6 * 10)

    weights = (1 - 0.999) / (1 - 0.999 ** COUNTS.astype(float))
    weights = weights / weights.mean()
    torch.testing.assert_close(loss_fn.class_weights(5), torch.ones(K))
    torch.testing.assert_close(loss_fn.class_weights(6), torch.tensor(weights, dtype=torch.float32))
    assert loss_fn.class_weights(6)[-1] > loss_fn.class_weights(6)[0]  # tail positives weigh more

    logits, targets = batch(2)
    shifted = 10.0 * (logits - torch.tensor(margins) * targets)
    torch.testing.assert_close(loss_fn(logits, targets, 5), F.binary_cross_entropy_with_logits(shifted, targets))
    drw = F.binary_cross_entropy_with_logits(shifted, targets, pos_weight=torch.tensor(weights, dtype=torch.float32))
    torch.testing.assert_close(loss_fn(logits, targets, 6), drw)
    assert not torch.allclose(loss_fn(logits, targets, 5), loss_fn(logits, targets, 6))


def test_drw_epoch_rounds_half_up() -> None:
    assert drw_start_epoch(0.5, 5) == 3
    assert drw_start_epoch(0.6, 8) == 5
    assert drw_start_epoch(0.0, 8) == 0


def test_unknown_loss_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"'focal'.*loss\.name.*bce.*asl.*ldam_drw"):
        build_loss(dataclasses.replace(LossConfig(), name="focal"), COUNTS, 10)


# ---------------------------------------------------------------------------------------------------- metrics

GROUPS = ["head", "head", "medium", "medium", "tail", "tail"]
CLASSES = [f"c{k}" for k in range(len(GROUPS))]


def random_data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, len(GROUPS))) < [0.4, 0.2, 0.1, 0.05, 0.03, 0.02]).astype(np.int64)
    scores = rng.normal(size=targets.shape) + 1.5 * targets
    scores[:, 1] = np.round(scores[:, 1], 1)  # ties
    return scores, targets


def sklearn_per_class(scores: np.ndarray, targets: np.ndarray) -> tuple[list, list]:
    ap = [average_precision_score(targets[:, k], scores[:, k]) for k in range(targets.shape[1])]
    auc = [roc_auc_score(targets[:, k], scores[:, k]) for k in range(targets.shape[1])]
    return ap, auc


def test_per_class_ap_auc_match_sklearn() -> None:
    for seed in range(3):
        scores, targets = random_data(seed=seed)
        result = evaluate_scores(scores, targets, CLASSES, GROUPS, bootstrap=0)
        ap, auc = sklearn_per_class(scores, targets)
        for row, ap_k, auc_k in zip(result["per_class"], ap, auc, strict=True):
            assert row["status"] == "ok"
            assert abs(row["ap"] - ap_k) < 1e-9 and abs(row["auc"] - auc_k) < 1e-9
        assert abs(result["mAP"] - np.mean(ap)) < 1e-9 and abs(result["mAUC"] - np.mean(auc)) < 1e-9
        # heavy ties: scores with only three distinct values
        coarse = np.round(scores)
        coarse_result = evaluate_scores(coarse, targets, CLASSES, GROUPS, bootstrap=0)
        ap, auc = sklearn_per_class(coarse, targets)
        np.testing.assert_allclose([r["ap"] for r in coarse_result["per_class"]], ap, atol=1e-9)
        np.testing.assert_allclose([r["auc"] for r in coarse_result["per_class"]], auc, atol=1e-9)


def test_groups_and_classes_without_positives() -> None:
    scores, targets = random_data()
    targets[:, 4] = 0  # a tail class without positives
    targets[:, 1] = 1  # a head class without negatives: AP 1, no AUC
    result = evaluate_scores(scores, targets, CLASSES, GROUPS, bootstrap=0)
    rows = result["per_class"]
    assert rows[4] == {
        "class": "c4",
        "group": "tail",
        "positives": 0,
        "negatives": 300,
        "ap": None,
        "auc": None,
        "status": "no_positives",
    }
    assert rows[1]["status"] == "no_negatives" and rows[1]["auc"] is None and rows[1]["ap"] == pytest.approx(1.0)
    assert result["classes_without_positives"] == ["c4"]

    ap, auc = sklearn_per_class(scores[:, [0, 2, 3, 5]], targets[:, [0, 2, 3, 5]])
    ap = dict(zip([0, 2, 3, 5], ap, strict=True))
    auc = dict(zip([0, 2, 3, 5], auc, strict=True))
    assert result["mAP"] == pytest.approx(np.mean([ap[0], 1.0, ap[2], ap[3], ap[5]]), abs=1e-12)
    assert result["mAUC"] == pytest.approx(np.mean([auc[0], auc[2], auc[3], auc[5]]), abs=1e-12)
    assert result["head_mAP"] == pytest.approx(np.mean([ap[0], 1.0]), abs=1e-12)
    assert result["head_mAUC"] == pytest.approx(auc[0], abs=1e-12)
    assert result["medium_mAP"] == pytest.approx(np.mean([ap[2], ap[3]]), abs=1e-12)
    assert result["tail_mAP"] == pytest.approx(ap[5], abs=1e-12)  # c4 skipped, not counted as 0

    targets[:, 5] = 0  # now no tail class is evaluable
    result = evaluate_scores(scores, targets, CLASSES, GROUPS, bootstrap=20)
    assert result["tail_mAP"] is None and result["tail_mAUC"] is None and result["ci"]["tail_mAP"] is None
    assert result["classes_without_positives"] == ["c4", "c5"]
    json.dumps(result)  # JSON-able: no NaN, no numpy types

    frame = per_class_frame(result)
    assert list(frame.columns) == ["class", "group", "positives", "negatives", "ap", "auc", "status"]
    assert len(frame) == len(CLASSES) and frame.loc[4, "status"] == "no_positives"


def test_bootstrap_intervals() -> None:
    scores, targets = random_data(n=400)
    result = evaluate_scores(scores, targets, CLASSES, GROUPS, bootstrap=100, seed=3)
    assert set(result["ci"]) == set(METRICS)
    for name in METRICS:
        lo, hi = result["ci"][name]
        assert lo <= result[name] <= hi, name
        assert hi - lo < 0.5
    again = evaluate_scores(scores, targets, CLASSES, GROUPS, bootstrap=100, seed=3)
    assert again["ci"] == result["ci"]
    other = evaluate_scores(scores, targets, CLASSES, GROUPS, bootstrap=100, seed=4)
    assert other["ci"] != result["ci"]


def test_bootstrap_is_fast() -> None:
    rng = np.random.default_rng(0)
    targets = (rng.random((500, 30)) < np.linspace(0.005, 0.3, 30)).astype(np.int64)
    scores = rng.random((500, 30)) + targets
    groups = ["head"] * 10 + ["medium"] * 10 + ["tail"] * 10
    start = time.perf_counter()
    evaluate_scores(scores, targets, [f"c{k}" for k in range(30)], groups, bootstrap=200)
    assert time.perf_counter() - start < 5.0


def test_metric_input_errors() -> None:
    scores, targets = random_data()
    with pytest.raises(ValueError, match="'rare'"):
        evaluate_scores(scores, targets, CLASSES, GROUPS[:-1] + ["rare"])
    with pytest.raises(ValueError, match="targets"):
        evaluate_scores(scores, targets[:, :3], CLASSES, GROUPS)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate_scores(np.full_like(scores, np.nan), targets, CLASSES, GROUPS)


def test_asl_gradients_follow_the_reference_with_detached_focal_weights() -> None:
    """The reference training builds ASL with ``disable_torch_grad_focal_loss=True``: d/dz of each term is its focal
    weight (a constant) times d/dz of its log term. Differentiating through the weight (``asl_detach_focal=False``)
    gives other gradients, larger for the negatives."""
    cfg = LossConfig(name="asl", asl_gamma_neg=4.0, asl_gamma_pos=1.0, asl_clip=0.05)
    logits, targets = batch(3)
    z, y = logits.detach().double(), targets.double()
    p = torch.sigmoid(z)
    p_m = (p - cfg.asl_clip).clamp(min=0)
    # hand-derived: positives w+ = (1 - p)^g+ and d log p / dz = 1 - p; negatives w- = p_m^g- and
    # d log(1 - p_m) / dz = -p (1 - p) / (1 - p_m) where p > clip, 0 where the clip zeroes p_m
    dlog_neg = torch.where(p > cfg.asl_clip, -p * (1 - p) / (1 - p_m), torch.zeros_like(p))
    expected = -(y * (1 - p) ** 1.0 * (1 - p) + (1 - y) * p_m**4.0 * dlog_neg) / y.numel()

    (detached,) = torch.autograd.grad(build_loss(cfg, COUNTS, 10)(logits, targets, 0), logits)
    torch.testing.assert_close(detached.double(), expected, rtol=1e-4, atol=1e-7)

    full_cfg = dataclasses.replace(cfg, asl_detach_focal=False)
    (full,) = torch.autograd.grad(build_loss(full_cfg, COUNTS, 10)(logits, targets, 0), logits)
    neg = (targets == 0) & (torch.sigmoid(logits.detach()) > 0.3)
    # the focal weight's own gradient has the same sign as the log term's, so it adds to every negative's
    assert (full[neg].abs() > 1.2 * detached[neg].abs()).all()
    assert full[neg].abs().sum() > 2 * detached[neg].abs().sum()


def test_ldam_with_a_cosine_classifier_puts_margins_in_cosine_units() -> None:
    """With the normalised classifier the logits are z = s cos + b; LDAM subtracts s * m_k from positives only."""
    cfg = LossConfig(name="ldam_drw", ldam_max_margin=0.5, ldam_scale=10.0, drw_start_fraction=0.6, drw_beta=0.999)
    loss_fn = build_loss(cfg, COUNTS, epochs=10, cosine_scale=30.0)
    # one image, two classes by hand: the rarest class (count 1, margin 0.5) positive at cos 0.2,
    # the head class (count 500, margin 0.5 * 500^-1/4) negative at cos -0.1; bias 0
    logits = torch.zeros(1, K)
    logits[0, 4], logits[0, 0] = 30 * 0.2, 30 * -0.1
    targets = torch.zeros(1, K)
    targets[0, 4] = 1.0
    # the positive's logit becomes 30 (0.2 - 0.5) = -9; every negative keeps its logit
    terms = [math.log1p(math.exp(-3.0))] + [math.log(2.0)] * 3 + [math.log1p(math.exp(9.0))]
    assert loss_fn(logits, targets, 0).item() == pytest.approx(sum(terms) / K, rel=1e-6)
    # and it is not the raw-logit form s (z - m y) with s = ldam_scale
    raw = build_loss(cfg, COUNTS, epochs=10)(logits, targets, 0).item()
    assert raw != pytest.approx(loss_fn(logits, targets, 0).item(), rel=1e-3)
