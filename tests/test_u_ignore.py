"""U-Ignore: a label value UNKNOWN (255) is left out by every loss, metric, threshold, count and plan
(trcgl.label_values). Each check compares against the same computation on the known entries alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from trcgl.config import GenerateConfig, GroupConfig, LossConfig, TrainConfig
from trcgl.data.dataset import DatasetInfo
from trcgl.data.splits import cooccurrence, label_summary
from trcgl.diffusion.plan import make_plan
from trcgl.label_values import UNKNOWN
from trcgl.losses import build_loss
from trcgl.metrics import evaluate_scores, per_class_ap_auc
from trcgl.train.data import choose_synthetic
from trcgl.train.thresholds import f1_optimal

COUNTS = np.array([40, 12, 3])
K = len(COUNTS)


def with_unknowns(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores (n, K), labels (n, K) with UNKNOWN entries, the known mask (n, K)); every class keeps a known positive
    and a known negative."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, K)) < 0.35).astype(np.uint8)
    labels[:2] = [[1] * K, [0] * K]
    unknown = rng.random((n, K)) < 0.3
    unknown[:2] = False
    labels[unknown] = UNKNOWN
    return rng.random((n, K)), labels, ~unknown


@pytest.mark.parametrize("name", ["bce", "asl", "ldam_drw"])
def test_losses_leave_unknown_terms_out(name: str) -> None:
    loss_fn = build_loss(LossConfig(name=name), COUNTS, epochs=4)
    _, labels, known = with_unknowns(0, n=12)
    targets = torch.from_numpy(labels.astype(np.float32))
    logits = (3 * torch.randn(12, K, generator=torch.Generator().manual_seed(1))).requires_grad_()
    loss = loss_fn(logits, targets, 3)
    (grad,) = torch.autograd.grad(loss, logits)
    unknown = torch.from_numpy(~known)
    assert torch.isfinite(loss) and (grad[unknown] == 0).all() and (grad[~unknown] != 0).any()
    moved = logits.detach().clone()
    moved[unknown] += 5.0  # whatever the model says where the label is not known
    assert torch.allclose(loss_fn(moved, targets, 3), loss)
    # the mean is over the known terms: K copies of the batch with one known term each average back to the loss
    if name != "ldam_drw":  # (LDAM's margins depend on the class column, so single-term calls do not apply)
        terms = [
            float(loss_fn(logits.detach()[b : b + 1, k : k + 1], targets[b : b + 1, k : k + 1], 3))
            for b, k in zip(*np.nonzero(known), strict=True)
        ]
        assert float(loss.detach()) == pytest.approx(np.mean(terms), rel=1e-5)


def test_ap_auc_and_counts_are_those_of_the_known_images() -> None:
    scores, labels, known = with_unknowns(2)
    ap, auc = per_class_ap_auc(scores, labels.astype(np.float64))
    for k in range(K):
        rows = known[:, k]
        assert ap[k] == pytest.approx(average_precision_score(labels[rows, k], scores[rows, k]))
        assert auc[k] == pytest.approx(roc_auc_score(labels[rows, k], scores[rows, k]))
    result = evaluate_scores(scores, labels, ["a", "b", "c"], ["head", "medium", "tail"], bootstrap=20)
    assert [c["positives"] for c in result["per_class"]] == (labels == 1).sum(axis=0).tolist()
    assert [c["negatives"] for c in result["per_class"]] == (labels == 0).sum(axis=0).tolist()
    assert all(result["ci"][m] is not None for m in ("mAP", "mAUC"))
    # an all-known copy with the unknown entries filled in as negatives scores differently: they were left out
    zeros = np.where(known, labels, 0)
    assert not np.allclose(per_class_ap_auc(scores, zeros)[0], ap)


def test_thresholds_are_chosen_on_the_known_images_of_each_class() -> None:
    scores, labels, known = with_unknowns(3)
    values, f1, positives = f1_optimal(scores, labels)
    for k in range(K):
        rows = known[:, k]
        v, f, p = f1_optimal(scores[rows, k : k + 1], labels[rows, k : k + 1])
        assert (values[k], f1[k], positives[k]) == (v[0], f[0], p[0])


def test_counts_and_cooccurrence_count_positives_and_the_summary_reports_unknowns() -> None:
    _, labels, known = with_unknowns(4)
    splits = np.array(["train"] * 30 + ["val"] * 5 + ["test"] * 5)
    summary = label_summary(["a", "b", "c"], labels, splits, GroupConfig())
    assert list(summary["counts"]["train"].values()) == (labels[:30] == 1).sum(axis=0).tolist()
    assert list(summary["unknown"]["val"].values()) == (~known[30:35]).sum(axis=0).tolist()
    positives = (labels == 1).astype(np.int64)
    assert (cooccurrence(labels) == positives.T @ positives).all()
    assert "unknown" not in label_summary(["a", "b", "c"], positives, splits, GroupConfig())


def test_plan_edits_only_known_negatives_and_prompts_name_only_positives() -> None:
    classes = ["normal", "nodule", "mass"]
    labels = [[1, 0, 0], [0, UNKNOWN, 0], [0, 0, UNKNOWN], [0, 1, 0], [0, 0, 1], [0, UNKNOWN, UNKNOWN], [1, 0, 0]]
    rows = pd.DataFrame(
        {
            "image_id": [f"r{i}" for i in range(len(labels))],
            "labels": labels,
            "localizations": [[] for _ in labels],
            "projection": ["PA"] * len(labels),
            "file": ["part-00000.parquet"] * len(labels),
        }
    )
    info = DatasetInfo("ds", classes, ["head", "tail", "tail"], np.array([2, 1, 1]), np.eye(3), 32, [], {})
    plan = make_plan(info, rows, GenerateConfig(mode="edit", aug_ratio_tail=20.0, per_class_max=12, seed=0))
    by_id = dict(zip(rows["image_id"], labels, strict=True))
    assert set(plan["target_class"]) == {"nodule", "mass"}
    for target, row_labels, donor, prompt in zip(
        plan["target_class"], plan["labels"], plan["donor_id"], plan["prompt"], strict=True
    ):
        k = classes.index(target)
        assert by_id[donor][k] == 0  # never a donor whose label for the class is unknown
        other = 3 - k  # the other finding keeps the donor's value, unknown included
        assert row_labels[other] == by_id[donor][other]
        if row_labels[other] == UNKNOWN:
            assert classes[other] not in prompt and target in prompt
    assert {"r1", "r2"} & set(plan["donor_id"]) and "r5" not in set(plan["donor_id"])


def test_unknown_labels_do_not_count_as_synthetic_positives() -> None:
    info = DatasetInfo("ds", ["a", "b"], ["head", "tail"], np.array([30, 4]), np.eye(2), 32, [], {})
    synthetic = np.array([[UNKNOWN, 1], [0, 1], [1, 1], [0, 1], [UNKNOWN, 1], [0, 1]], dtype=np.uint8)
    chosen, per_class = choose_synthetic(synthetic, info, TrainConfig(aug_ratio_tail=1.0, seed=0))
    assert len(chosen) == 4 and per_class == {"b": 4}
