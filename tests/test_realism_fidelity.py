"""Realism two-sample test, fidelity with controls and the margin-ranked fidelity filter (no Ray)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from trcgl.data.dataset import DatasetInfo
from trcgl.data.images import resize_square
from trcgl.diffusion.fidelity import (
    CONTROL_SUFFIX,
    FIDELITY_COLUMNS,
    control_rows,
    fidelity_keep,
    fidelity_split,
    fidelity_table,
    filter_scores,
    finding_visibility_or_none,
    match_real_rows,
)
from trcgl.diffusion.realism import laplacian_std, radial_spectrum, realism

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
PER_SET = 60


@pytest.fixture(scope="module")
def films() -> np.ndarray:
    """(2 * PER_SET, 64, 64) PadChest-Synth films in [0, 1]: one kind of image, every film another anatomy."""
    from trcgl.data.synth import render_image

    images = [
        render_image(
            image_id=f"realism-{i}",
            classes=[],
            localizations=[],
            projection="PA",
            bits_stored=12,
            size=SIZE,
            dataset_seed=0,
        )
        for i in range(2 * PER_SET)
    ]
    return np.stack(images).astype(np.float32) / 4095.0


def round_trip(images: np.ndarray, low: int = SIZE // 2) -> np.ndarray:
    """The 64 -> 32 -> 64 resize a 32 px generator's rows went through."""
    return np.stack([resize_square(resize_square(x, low), SIZE) for x in images])


# ---------------------------------------------------------------------------------------------- realism


def test_realism_real_vs_real_is_about_half(films):
    result = realism(films[:PER_SET], films[PER_SET:], seed=0)
    assert result.n_synthetic == result.n_real == PER_SET and result.folds == 5
    assert 0.35 <= result.auroc <= 0.65
    assert 0.8 <= result.laplacian_std_ratio <= 1.25


def test_realism_real_vs_blurred_is_near_one(films):
    result = realism(round_trip(films[:PER_SET]), films[PER_SET:], seed=0)
    assert result.auroc > 0.9
    assert result.laplacian_std_ratio < 0.6  # the round trip removes most of the Laplacian's energy


def test_realism_is_deterministic_and_refuses_mixed_sizes(films):
    a, b = films[:20], films[20:40]
    assert realism(a, b, seed=3) == realism(a, b, seed=3)
    with pytest.raises(ValueError, match=r"one size.*\(32, 32\).*\(64, 64\)"):
        realism(np.zeros((4, 32, 32)), b)
    few = realism(a[:1], b)
    assert few.auroc is None and few.folds == 0 and few.laplacian_std_ratio is not None


def test_texture_features_see_blur(films):
    blurred = round_trip(films[:8])
    assert (laplacian_std(blurred) < laplacian_std(films[:8])).all()
    drop = (radial_spectrum(films[:8]) - radial_spectrum(blurred))[:, 8:].mean(axis=1)  # log10 power, upper half
    assert (drop > 0.2).all()  # above half the Nyquist frequency, the round trip removes over a third of the power


# ---------------------------------------------------------------------------------------------- fidelity table


def _hand_built():
    """Class a: 4 real val positives, 4 negatives; the synthetic images score as the positives, their controls as
    the negatives. Class b: two synthetic images without controls."""
    classes = ["a", "b"]
    pos = np.array([0.6, 0.8, 0.3, 0.45])
    neg = np.array([0.1, 0.4, 0.2, 0.5])
    real_scores = np.c_[np.r_[pos, neg], np.linspace(0.1, 0.8, 8)]  # (8, 2)
    real_labels = np.c_[np.r_[np.ones(4), np.zeros(4)], [0, 1, 0, 1, 0, 0, 1, 0]].astype(int)  # (8, 2)
    syn = np.c_[np.r_[pos, 0.9, 0.05], np.zeros(6)]  # (6, 2)
    targets = ["a"] * 4 + ["b"] * 2
    syn[4:, 1] = [0.9, 0.05]
    controls = np.full((6, 2), np.nan)
    controls[:4, 0] = neg
    return classes, syn, targets, real_scores, real_labels, controls


def test_fidelity_table_with_controls_and_visibility():
    classes, syn, targets, real_scores, real_labels, controls = _hand_built()
    table = fidelity_table(
        classes,
        syn,
        targets,
        real_scores,
        real_labels,
        controls,
        visible_pixels={"a": 40, "b": 3},
        visible_min_pixels=16,
    )
    assert list(table.columns) == list(FIDELITY_COLUMNS)
    a, b = (table.set_index("class").loc[c] for c in classes)
    # synthetic = copies of the real positives: the same AUROC as the real positives (13 of 16 pairs)
    assert a["auroc_real"] == pytest.approx(13 / 16)
    assert a["auroc_synthetic"] == a["auroc_real"]
    assert a["auroc_control"] == 0.5  # controls scored as the real negatives: indistinguishable from them
    assert a["auroc_synthetic_vs_control"] == a["auroc_real"]
    assert a["mean_margin"] == pytest.approx(np.mean([0.5, 0.4, 0.1, -0.05]))
    assert (a["synthetic"], a["controls"], a["real_positives"], a["real_negatives"]) == (4, 4, 4, 4)
    assert a["visible_pixels"] == 40 and bool(a["visible"]) is True
    # b: no controls, so every control figure is missing; its real negatives score 0.1..0.8 without the positives
    assert b["controls"] == 0 and pd.isna(b["auroc_control"]) and pd.isna(b["mean_margin"])
    assert b["auroc_synthetic"] == pytest.approx(0.5)  # 0.9 above all 5 negatives, 0.05 below all
    assert b["visible_pixels"] == 3 and bool(b["visible"]) is False


def test_fidelity_table_without_controls_or_visibility_keeps_its_columns():
    classes, syn, targets, real_scores, real_labels, _ = _hand_built()
    table = fidelity_table(classes, syn, targets, real_scores, real_labels)
    assert list(table.columns) == list(FIDELITY_COLUMNS)
    assert table["auroc_control"].isna().all() and table["visible"].isna().all()
    assert table.set_index("class").loc["a", "auroc_synthetic"] == pytest.approx(13 / 16)


def test_fidelity_reads_val_never_test():
    info = DatasetInfo("ds", ["a"], ["tail"], np.array([3]), np.eye(1), 32, [], {"train": 10, "val": 4, "test": 4})
    assert fidelity_split(info) == "val"
    info.split_sizes = {"train": 10, "val": 0, "test": 4}
    with pytest.raises(ValueError, match="val images.*none"):
        fidelity_split(info)  # no fallback to test
    # the generate stage scores real images only through fidelity_split
    source = (REPO / "trcgl" / "diffusion" / "ray_generate.py").read_text()
    calls = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "predict_split"
    ]
    assert calls and all(ast.unparse(c.args[3]) == "fidelity_split(info)" for c in calls)
    assert '"test"' not in source and "'test'" not in source


def test_visibility_only_for_padchest_synth():
    from trcgl.data.synth.visibility import VISIBLE_MIN_PIXELS

    assert finding_visibility_or_none("padchest", ["emphysema"], 64) is None  # real images: no renderer to ask
    pixels, bar = finding_visibility_or_none("padchest-synth", ["emphysema", "normal"], 64)
    assert set(pixels) == {"emphysema", "normal"} and pixels["normal"] == 0 and bar == VISIBLE_MIN_PIXELS


def test_control_rows_keep_label_type_and_drop_missing_controls():
    labels = pa.array([[1, 0], [0, 1], [1, 1]], type=pa.list_(pa.uint8(), 2))
    batch = pa.table(
        {"image_id": ["s0", "s1", "s2"], "control_image": pa.array([b"x", None, b"z"], pa.binary()), "labels": labels}
    )
    out = control_rows(batch)
    assert out["image_id"].to_pylist() == [f"s0{CONTROL_SUFFIX}", f"s2{CONTROL_SUFFIX}"]
    assert out["image"].to_pylist() == [b"x", b"z"] and out.schema.field("labels").type == labels.type


# ---------------------------------------------------------------------------------------------- filter


def test_filter_ranks_by_margin_over_the_control_not_by_texture():
    # the generator's texture raises every score of class a to about 0.3; only image 1's prompt adds to it
    raw = np.array([0.35, 0.32, 0.31, 0.6])
    controls = np.array([0.34, 0.10, 0.31, 0.2])
    targets = ["a", "a", "a", "b"]
    rank, by = filter_scores(raw, controls)
    assert by == "margin" and rank == pytest.approx([0.01, 0.22, 0.0, 0.4])
    assert fidelity_keep(rank, targets, threshold=0.05).tolist() == [0, 1, 0, 1]
    assert fidelity_keep(rank, targets, keep_fraction=0.3).tolist() == [0, 1, 0, 1]
    assert fidelity_keep(raw, targets, keep_fraction=0.3).tolist() == [1, 0, 0, 1]  # raw: texture wins
    # a margin of 0 passes a threshold of 0 (the prompt did not lower the score)
    assert fidelity_keep(rank, targets, threshold=0.0).tolist() == [1, 1, 1, 1]


def test_filter_without_controls_falls_back_to_the_raw_score_and_warns(caplog):
    raw = np.array([0.35, 0.32])
    with caplog.at_level(logging.WARNING, logger="trcgl.diffusion.fidelity"):
        rank, by = filter_scores(raw, None)
        assert by == "score" and rank.tolist() == raw.tolist()
        rank, by = filter_scores(raw, np.array([0.1, np.nan]))  # one image without a control: no mixed ranking
        assert by == "score" and rank.tolist() == raw.tolist()
    assert "1 of 2 synthetic images have no control" in caplog.text


def test_match_real_rows_picks_positives_once_each_seeded():
    labels = np.array([[1, 1], [1, 0], [0, 1], [1, 1], [0, 0], [1, 0]])
    picks = match_real_rows(labels, {0: 3, 1: 5}, seed=0)
    assert len(picks[0]) == 3 and all(labels[picks[0], 0] == 1)
    # class 1 wants 5: it gets every positive of class 1 that class 0 did not take, never a row twice
    assert set(picks[1].tolist()) == {0, 2, 3} - set(picks[0].tolist())
    assert {k: v.tolist() for k, v in picks.items()} == {
        k: v.tolist() for k, v in match_real_rows(labels, {0: 3, 1: 5}, seed=0).items()
    }
