"""Ablation statistics (paired bootstrap), table, Markdown and pictures on synthetic long-tailed test labels."""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from trcgl.config import GroupConfig
from trcgl.data.splits import group_of
from trcgl.metrics import evaluate_scores, per_class_ap_auc, summarise
from trcgl.study.table import (
    MINUS,
    ablation_table,
    comparison_markdown,
    comparison_table,
    paired_bootstrap,
    per_class_heatmap,
    table_markdown,
    tail_map_plot,
)

log = logging.getLogger(__name__)

N = 400
# test positives per class out of N: 5 head (> 10 %), 15 medium, 10 tail (< 1 %: 2-3 positives, one absent)
COUNTS = np.array(
    [140, 110, 80, 60, 48] + [36, 30, 24, 20, 18, 16, 14, 12, 10, 9, 8, 7, 6, 5, 5] + [3] * 4 + [2] * 5 + [0]
)
K = len(COUNTS)
CLASSES = [f"finding_{k:02d}" for k in range(K)]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIGNED = rf"[+{MINUS}]\d\.\d{{3}}"
# a difference: value, ± the std of the per-seed differences, paired bootstrap interval, Student-t interval over seeds
DIFF_CELL = re.compile(rf"^{SIGNED}( ± \d\.\d{{3}})? \[boot {SIGNED}, {SIGNED}\]( \[seeds {SIGNED}, {SIGNED}\])?$")


def make_labels(seed: int = 0) -> np.ndarray:
    """(N, K) multi-hot labels with exactly COUNTS positives per class, on random images."""
    rng = np.random.default_rng(seed)
    y = np.zeros((N, K), dtype=np.int64)
    for k, c in enumerate(COUNTS):
        y[rng.choice(N, size=c, replace=False), k] = 1
    return y


LABELS = make_labels()
# groups from prevalence as trcgl.data.splits does (here the test prevalence stands in for the train one)
GROUPS = group_of(LABELS.mean(axis=0), GroupConfig())
TAIL = np.array([g == "tail" for g in GROUPS])
IMAGE_IDS = np.array([f"img_{i:04d}" for i in range(N)])


def model_scores(seed: int, signal: float = 1.2) -> np.ndarray:
    """(N, K) probabilities of a mediocre model: sigmoid(signal * (2y - 1) + noise)."""
    rng = np.random.default_rng(100 + seed)
    logits = signal * (2 * LABELS - 1) + rng.normal(0.0, 1.5, size=(N, K))
    return 1.0 / (1.0 + np.exp(-logits))


def better_on_tail(scores: np.ndarray, seed: int = 0) -> np.ndarray:
    """The same scores except on tail columns: labels * 0.9 + noise in [0, 0.1) (tail AP 1)."""
    rng = np.random.default_rng(200 + seed)
    out = scores.copy()
    out[:, TAIL] = LABELS[:, TAIL] * 0.9 + 0.1 * rng.random((N, int(TAIL.sum())))
    return out


def row(name: str, seed: int, scores: np.ndarray, order: np.ndarray | None = None) -> dict:
    idx = np.arange(N) if order is None else order
    return {
        "name": name,
        "seed": seed,
        "labels": LABELS[idx],
        "scores": scores[idx],
        "classes": CLASSES,
        "groups": GROUPS,
        "image_ids": IMAGE_IDS[idx],
    }


def test_synthetic_labels_are_long_tailed() -> None:
    assert GROUPS.count("head") == 5 and GROUPS.count("medium") == 15 and GROUPS.count("tail") == 10
    assert set(LABELS[:, TAIL].sum(axis=0)) == {0, 2, 3}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    base = [row("baseline", s, model_scores(s)) for s in (0, 1, 2)]
    tail = [row("+tail", s, better_on_tail(model_scores(s), s)) for s in (0, 1, 2)]
    same = [row("baseline seed 0", 0, model_scores(0))]  # vs the 3-seed average: close, not identical
    worse = [row("weaker", 0, model_scores(7, signal=0.4))]
    return base + tail + same + worse


@pytest.fixture(scope="module")
def table(rows: list[dict]) -> pd.DataFrame:
    return ablation_table(rows, baseline="baseline", bootstrap=200, seed=3)


# ---------------------------------------------------------------------------------------------------- paired bootstrap


@pytest.mark.parametrize("metric", ["mAP", "mAUC", "head_mAP", "medium_mAP", "tail_mAP"])
def test_identical_scores_give_zero_difference(metric: str) -> None:
    a = model_scores(0)
    out = paired_bootstrap(LABELS, a, a.copy(), CLASSES, GROUPS, metric=metric, n=200, seed=0)
    assert out["diff"] == 0.0 and out["lo"] == 0.0 and out["hi"] == 0.0
    assert out["lo"] <= 0.0 <= out["hi"] and out["n"] == 200


def test_better_on_tail_is_significant_only_on_tail() -> None:
    a = model_scores(0)
    b = better_on_tail(a)
    start = time.perf_counter()
    tail = paired_bootstrap(LABELS, a, b, CLASSES, GROUPS, metric="tail_mAP", n=1000, seed=0)
    log.info("paired bootstrap N=%d K=%d n=1000: %.2f s", N, K, time.perf_counter() - start)
    assert tail["diff"] > 0 and tail["lo"] > 0 and tail["hi"] >= tail["lo"]
    assert tail["n"] == 1000  # some tail class keeps a positive in every resample
    full = evaluate_scores(b, LABELS, CLASSES, GROUPS, bootstrap=0)["tail_mAP"]
    assert full == pytest.approx(1.0) and tail["diff"] == pytest.approx(
        1.0 - evaluate_scores(a, LABELS, CLASSES, GROUPS, bootstrap=0)["tail_mAP"]
    )
    head = paired_bootstrap(LABELS, a, b, CLASSES, GROUPS, metric="head_mAP", n=200, seed=0)
    assert head["diff"] == 0.0 and head["lo"] == 0.0 and head["hi"] == 0.0


def test_paired_bootstrap_rejects_bad_input() -> None:
    a = model_scores(0)
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap(LABELS, a, a, CLASSES, GROUPS, metric="accuracy", n=10)
    with pytest.raises(ValueError, match="must both be"):
        paired_bootstrap(LABELS, a, a[:-1], CLASSES, GROUPS, n=10)


# ---------------------------------------------------------------------------------------------------- table


def test_table_rows_and_seeds(table: pd.DataFrame, rows: list[dict]) -> None:
    assert list(table["name"]) == ["baseline", "+tail", "baseline seed 0", "weaker"]
    t = table.set_index("name")
    assert t.loc["baseline", "seeds"] == 3 and t.loc["baseline", "interval"] == "seeds + bootstrap"
    assert t.loc["weaker", "seeds"] == 1 and t.loc["weaker", "interval"] == "bootstrap 95 %"
    per_seed = [evaluate_scores(r["scores"], LABELS, CLASSES, GROUPS, bootstrap=0)["mAP"] for r in rows[:3]]
    assert t.loc["baseline", "mAP"] == pytest.approx(np.mean(per_seed))
    assert t.loc["baseline", "mAP_std"] == pytest.approx(np.std(per_seed, ddof=1)) and t.loc["baseline", "mAP_std"] > 0
    assert np.isnan(t.loc["weaker", "mAP_std"])
    # one seed: the interval is evaluate_scores's (same resamples, same definitions)
    assert [t.loc["weaker", "mAP_lo"], t.loc["weaker", "mAP_hi"]] == evaluate_scores(
        rows[-1]["scores"], LABELS, CLASSES, GROUPS, bootstrap=200, seed=3
    )["ci"]["mAP"]
    # several seeds: the interval of the seed mean, i.e. per resample the metric averaged over the seeds
    draws = np.random.default_rng(3).integers(0, N, size=(200, N))
    boot = [
        np.mean(
            [
                summarise(*per_class_ap_auc(r["scores"][i], LABELS[i].astype(float)), np.array(GROUPS))["tail_mAP"]
                for r in rows[:3]
            ]
        )
        for i in draws
    ]
    assert t.loc["baseline", "tail_mAP_lo"] == pytest.approx(np.percentile(boot, 2.5), abs=1e-12)
    assert t.loc["baseline", "tail_mAP_hi"] == pytest.approx(np.percentile(boot, 97.5), abs=1e-12)
    for m in ("mAP", "mAUC", "head_mAP", "medium_mAP", "tail_mAP"):
        assert table[m].notna().all() and (table[f"{m}_lo"] <= table[m]).all() and (table[m] <= table[f"{m}_hi"]).all()


def test_table_differences(table: pd.DataFrame, rows: list[dict]) -> None:
    t = table.set_index("name")
    for m in ("d_mAP", "d_tail_mAP"):
        assert (t.loc["baseline", [m, f"{m}_lo", f"{m}_hi"]] == 0.0).all()
    assert t.loc["+tail", "d_tail_mAP"] > 0 and t.loc["+tail", "d_tail_mAP_lo"] > 0
    assert t.loc["weaker", "d_mAP"] < 0 and t.loc["weaker", "d_mAP_hi"] < 0
    assert t.loc["+tail", "d_tail_mAP"] == pytest.approx(t.loc["+tail", "tail_mAP"] - t.loc["baseline", "tail_mAP"])
    for name in ("+tail", "weaker", "baseline seed 0"):  # the seed-mean difference lies in its paired interval
        for m in ("d_mAP", "d_tail_mAP"):
            assert t.loc[name, f"{m}_lo"] <= t.loc[name, m] <= t.loc[name, f"{m}_hi"]
    # one seed each: the table's difference is paired_bootstrap's, on the same resamples
    single = ablation_table([rows[0], rows[-1]], baseline="baseline", bootstrap=200, seed=3).set_index("name")
    pb = paired_bootstrap(LABELS, rows[0]["scores"], rows[-1]["scores"], CLASSES, GROUPS, "mAP", n=200, seed=3)
    assert single.loc["weaker", "d_mAP"] == pytest.approx(pb["diff"], abs=1e-12)
    assert (single.loc["weaker", "d_mAP_lo"], single.loc["weaker", "d_mAP_hi"]) == (pb["lo"], pb["hi"])


def test_identical_rows_in_table_differ_by_zero(rows: list[dict]) -> None:
    twin = dict(rows[0], name="twin")
    t = ablation_table([rows[0], twin], baseline="baseline", bootstrap=100, seed=0).set_index("name")
    assert (t.loc["twin", ["d_mAP", "d_mAP_lo", "d_mAP_hi", "d_tail_mAP", "d_tail_mAP_lo", "d_tail_mAP_hi"]] == 0).all()


def test_shuffled_image_order_names_the_row(rows: list[dict]) -> None:
    order = np.random.default_rng(5).permutation(N)
    shuffled = row("shuffled model", 0, model_scores(0), order=order)
    with pytest.raises(ValueError, match="shuffled model"):
        ablation_table([rows[0], shuffled], baseline="baseline", bootstrap=10, seed=0)
    with pytest.raises(ValueError, match="baseline 'nope'"):
        ablation_table([rows[0]], baseline="nope", bootstrap=10, seed=0)
    with pytest.raises(ValueError, match="seed given twice"):
        ablation_table([rows[0], rows[0]], baseline="baseline", bootstrap=10, seed=0)


def test_deterministic_for_a_fixed_seed(rows: list[dict], table: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(ablation_table(rows, baseline="baseline", bootstrap=200, seed=3), table)
    a, b = model_scores(0), model_scores(1)
    first = paired_bootstrap(LABELS, a, b, CLASSES, GROUPS, metric="mAP", n=200, seed=11)
    assert paired_bootstrap(LABELS, a, b, CLASSES, GROUPS, metric="mAP", n=200, seed=11) == first
    assert paired_bootstrap(LABELS, a, b, CLASSES, GROUPS, metric="mAP", n=200, seed=12)["lo"] != first["lo"]


# ---------------------------------------------------------------------------------------------------- seeds, by hand

# A study small enough to score by hand: 8 images, one class per group. Each row and seed is given by the ranks
# (1 = top score) of every class's positives, so AP and AUC follow from textbook formulas, not from trcgl.metrics.
HAND_N = 8
HAND_CLASSES = ["hc", "mc", "tc"]
HAND_GROUPS = ["head", "medium", "tail"]
HAND_POSITIVES = ((0, 1, 2), (3, 4), (5,))  # images positive for each class
HAND_RANKS = {  # (name, seed): ranks of each class's positives
    ("base", 0): ((1, 2, 4), (3, 5), (2,)),
    ("base", 1): ((1, 3, 4), (2, 6), (4,)),
    ("base", 2): ((2, 3, 5), (1, 4), (3,)),
    ("three", 0): ((1, 2, 3), (1, 3), (1,)),  # every baseline seed
    ("three", 1): ((1, 2, 5), (1, 2), (2,)),
    ("three", 2): ((1, 2, 3), (2, 3), (1,)),
    ("two", 0): ((1, 3, 5), (2, 4), (1,)),  # lacks the baseline's seed 1
    ("two", 2): ((1, 2, 4), (1, 5), (2,)),
    ("odd", 1): ((2, 3, 4), (1, 6), (5,)),  # seed 7 is not the baseline's: one paired seed
    ("odd", 7): ((1, 4, 6), (2, 3), (1,)),
    ("one", 2): ((1, 2, 3), (4, 5), (1,)),  # one seed
}
T975 = {1: 12.706204736174703, 2: 4.302652729749464}  # Student t 97.5 % quantiles by degrees of freedom
HAND_METRICS = ("mAP", "mAUC", "head_mAP", "medium_mAP", "tail_mAP")


def hand_labels() -> np.ndarray:
    y = np.zeros((HAND_N, len(HAND_CLASSES)), dtype=np.int64)
    for k, images in enumerate(HAND_POSITIVES):
        y[list(images), k] = 1
    return y


def hand_scores(ranks: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """(N, K) scores putting class k's positives (in image order) at ranks[k] and its negatives, in image order, at
    the remaining ranks."""
    y = hand_labels()
    scores = np.zeros(y.shape)
    for k, positive_ranks in enumerate(ranks):
        negative_ranks = [r for r in range(1, HAND_N + 1) if r not in positive_ranks]
        rank_of = dict(zip(np.flatnonzero(y[:, k]), positive_ranks, strict=True))
        rank_of |= dict(zip(np.flatnonzero(y[:, k] == 0), negative_ranks, strict=True))
        scores[:, k] = [1.0 - rank_of[i] / (HAND_N + 1) for i in range(HAND_N)]
    return scores


def hand_metrics(ranks: tuple[tuple[int, ...], ...]) -> dict[str, float]:
    """mAP, mAUC and group mAPs from the ranks: AP = mean over positives of (positives so far) / rank, AUC = the
    share of (positive, negative) pairs with the positive above."""
    ap, auc = [], []
    for positive_ranks in ranks:
        r = sorted(positive_ranks)
        p = len(r)
        ap.append(np.mean([i / r_i for i, r_i in enumerate(r, start=1)]))
        auc.append(sum((HAND_N - r_i) - (p - i) for i, r_i in enumerate(r, start=1)) / (p * (HAND_N - p)))
    return {"mAP": np.mean(ap), "mAUC": np.mean(auc), "head_mAP": ap[0], "medium_mAP": ap[1], "tail_mAP": ap[2]}


def hand_row(name: str, seed: int) -> dict:
    return {
        "name": name,
        "seed": seed,
        "labels": hand_labels(),
        "scores": hand_scores(HAND_RANKS[name, seed]),
        "classes": HAND_CLASSES,
        "groups": HAND_GROUPS,
        "image_ids": np.arange(HAND_N),
    }


def hand_seeds(name: str) -> dict[int, dict[str, float]]:
    return {seed: hand_metrics(ranks) for (n, seed), ranks in HAND_RANKS.items() if n == name}


@pytest.fixture(scope="module")
def hand_table() -> pd.DataFrame:
    rows = [hand_row(name, seed) for name, seed in HAND_RANKS]
    return ablation_table(rows, baseline="base", bootstrap=50, seed=0)


def test_hand_scores_have_the_ranks_asked_for() -> None:
    scores = hand_scores(HAND_RANKS["odd", 1])
    assert [int(r) for r in np.argsort(np.argsort(-scores[:, 1]))[[3, 4]] + 1] == [1, 6]
    worked = hand_metrics(((1, 2, 3), (1, 3), (8,)))  # medium: precision 1/1 and 2/3; 6 + 5 of 2 * 6 pairs
    assert worked == pytest.approx(
        {"head_mAP": 1.0, "medium_mAP": 5 / 6, "tail_mAP": 1 / 8, "mAP": (1 + 5 / 6 + 1 / 8) / 3,
         "mAUC": (1 + 11 / 12 + 0) / 3}
    )  # fmt: skip


def test_hand_study_seed_mean_and_std(hand_table: pd.DataFrame) -> None:
    t = hand_table.set_index("name")
    assert list(hand_table["name"]) == ["base", "three", "two", "odd", "one"]
    assert t["seeds"].to_dict() == {"base": 3, "three": 3, "two": 2, "odd": 2, "one": 1}
    assert t["paired_seeds"].to_dict() == {"base": 3, "three": 3, "two": 2, "odd": 1, "one": 1}
    for name in t.index:
        values = np.array([[m[k] for k in HAND_METRICS] for m in hand_seeds(name).values()])  # (seeds, metrics)
        for j, m in enumerate(HAND_METRICS):
            assert t.loc[name, m] == pytest.approx(values[:, j].mean(), abs=1e-12), (name, m)
            if len(values) > 1:
                assert t.loc[name, f"{m}_std"] == pytest.approx(values[:, j].std(ddof=1), abs=1e-12), (name, m)
            else:
                assert np.isnan(t.loc[name, f"{m}_std"])


@pytest.mark.parametrize("metric", ["mAP", "head_mAP", "medium_mAP", "tail_mAP"])
def test_hand_study_per_seed_differences(hand_table: pd.DataFrame, metric: str) -> None:
    t = hand_table.set_index("name")
    base = hand_seeds("base")
    base_mean = np.mean([v[metric] for v in base.values()])
    for name, paired in (("base", [0, 1, 2]), ("three", [0, 1, 2]), ("two", [0, 2]), ("odd", [1]), ("one", [2])):
        own = hand_seeds(name)
        assert sorted(set(own) & set(base)) == paired
        # the difference of the seed means, over all of each row's seeds
        assert t.loc[name, f"d_{metric}"] == pytest.approx(np.mean([v[metric] for v in own.values()]) - base_mean)
        diffs = np.array([own[s][metric] - base[s][metric] for s in paired])  # by seed value
        assert t.loc[name, f"d_{metric}_seed_mean"] == pytest.approx(diffs.mean(), abs=1e-12), name
        cols = [f"d_{metric}_seed_std", f"d_{metric}_seed_lo", f"d_{metric}_seed_hi"]
        if len(paired) < 2:
            assert t.loc[name, cols].isna().all(), name
            continue
        std = diffs.std(ddof=1)
        half = T975[len(paired) - 1] * std / np.sqrt(len(paired))
        expected = [std, diffs.mean() - half, diffs.mean() + half]
        assert t.loc[name, cols].to_numpy(dtype=float) == pytest.approx(expected, abs=1e-12), name
    assert t.loc["three", f"d_{metric}_seed_mean"] == pytest.approx(t.loc["three", f"d_{metric}"], abs=1e-12)
    assert (t.loc["base", [f"d_{metric}_seed_mean", f"d_{metric}_seed_std"]] == 0.0).all()


def test_hand_study_pairs_by_seed_value_not_position(hand_table: pd.DataFrame) -> None:
    """Row "two" has seeds 0 and 2: its differences are against the baseline's seeds 0 and 2, not 0 and 1."""
    t = hand_table.set_index("name")
    base, two = hand_seeds("base"), hand_seeds("two")
    by_position = np.mean([two[0]["tail_mAP"] - base[0]["tail_mAP"], two[2]["tail_mAP"] - base[1]["tail_mAP"]])
    by_value = np.mean([two[s]["tail_mAP"] - base[s]["tail_mAP"] for s in (0, 2)])
    assert abs(by_position - by_value) > 0.01  # the test would notice pairing by position
    assert t.loc["two", "d_tail_mAP_seed_mean"] == pytest.approx(by_value, abs=1e-12)


def test_hand_study_markdown(hand_table: pd.DataFrame) -> None:
    md = table_markdown(hand_table)
    table, notes = md.split("\n\n", 1)
    lines = table.split("\n")
    header = lines[0].strip("| ").split(" | ")
    cell = {c[0]: dict(zip(header, c, strict=True)) for c in (line.strip("| ").split(" | ") for line in lines[2:])}
    t = hand_table.set_index("name")

    def signed(value: float) -> str:
        return ("+" if value >= 0 else MINUS) + f"{abs(value):.3f}"

    three = t.loc["three"]  # all of the baseline's seeds: difference ± seed std, both intervals
    expected = (
        f"{signed(three['d_tail_mAP'])} ± {three['d_tail_mAP_seed_std']:.3f} "
        f"[boot {signed(three['d_tail_mAP_lo'])}, {signed(three['d_tail_mAP_hi'])}] "
        f"[seeds {signed(three['d_tail_mAP_seed_lo'])}, {signed(three['d_tail_mAP_seed_hi'])}]"
    )
    assert cell["three"]["d_tail_mAP"] == expected
    assert DIFF_CELL.fullmatch(cell["three"]["d_mAP"])
    two = t.loc["two"]  # lacks a baseline seed: the seed interval says how many it pairs, their mean and std
    assert " ± " not in cell["two"]["d_mAP"].split(" [boot ")[0]
    assert cell["two"]["d_mAP"].endswith(
        f"[seeds {signed(two['d_mAP_seed_lo'])}, {signed(two['d_mAP_seed_hi'])}; "
        f"2 paired, {signed(two['d_mAP_seed_mean'])} ± {two['d_mAP_seed_std']:.3f}]"
    )
    for name in ("odd", "one"):  # one paired seed: no seed std, no seed interval
        assert "[seeds" not in cell[name]["d_mAP"] and " ± " not in cell[name]["d_mAP"]
        assert DIFF_CELL.fullmatch(cell[name]["d_tail_mAP"])
    assert re.fullmatch(r"\d\.\d{3} ± \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", cell["odd"]["mAP"])  # 2 seeds
    assert re.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", cell["one"]["mAP"])  # 1 seed: no std
    assert "[seeds]: 95 % Student-t interval" in notes
    assert "Classes: head (1): hc; medium (1): mc; tail (1): tc." in notes


def test_difference_columns(hand_table: pd.DataFrame) -> None:
    suffixes = ("", "_lo", "_hi", "_seed_mean", "_seed_std", "_seed_lo", "_seed_hi")
    expected = [f"d_{m}{s}" for m in ("mAP", "head_mAP", "medium_mAP", "tail_mAP") for s in suffixes]
    assert [c for c in hand_table.columns if c.startswith("d_")] == expected
    assert list(hand_table.columns[:4]) == ["name", "seeds", "paired_seeds", "interval"]
    assert hand_table.attrs["class_groups"] == {"head": ["hc"], "medium": ["mc"], "tail": ["tc"]}


# ---------------------------------------------------------------------------------------------------- output


def test_markdown(table: pd.DataFrame) -> None:
    md = table_markdown(table)
    lines = md.split("\n\n")[0].split("\n")
    assert len(lines) == 2 + len(table)
    assert lines[0].startswith("| model | seeds | interval | mAP |") and "d_tail_mAP" in lines[0]
    body = {line.split(" | ")[0].removeprefix("| "): line.strip("| ").split(" | ") for line in lines[2:]}
    assert list(body) == list(table["name"])
    header = lines[0].strip("| ").split(" | ")
    cell = {name: dict(zip(header, cells, strict=True)) for name, cells in body.items()}
    assert re.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", cell["weaker"]["mAP"])
    assert re.fullmatch(r"\d\.\d{3} ± \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", cell["baseline"]["mAP"])
    assert cell["baseline"]["d_mAP"] == "+0.000 ± 0.000 [boot +0.000, +0.000] [seeds +0.000, +0.000]"
    for name in body:
        assert DIFF_CELL.fullmatch(cell[name]["d_mAP"]) and DIFF_CELL.fullmatch(cell[name]["d_tail_mAP"])
    assert "[seeds " in cell["+tail"]["d_tail_mAP"] and "[seeds " not in cell["weaker"]["d_mAP"]  # 3 seeds vs 1
    assert cell["+tail"]["d_tail_mAP"].startswith("+") and cell["weaker"]["d_mAP"].startswith(MINUS)
    assert "-" not in cell["weaker"]["d_mAP"]  # a Unicode minus, not a hyphen


def test_markdown_shows_each_rows_extra_and_seed_std(table: pd.DataFrame) -> None:
    md = table_markdown(table.assign(extra=["none"] + ["synthetic_edit"] * (len(table) - 1)))
    lines = md.split("\n\n")[0].split("\n")
    assert lines[0].startswith("| model | extra | seeds | interval | mAP |")
    header = lines[0].strip("| ").split(" | ")
    cell = dict(zip(header, lines[2].strip("| ").split(" | "), strict=True))
    assert cell["extra"] == "none" and cell["model"] == table["name"].iloc[0]
    assert re.fullmatch(r"\d\.\d{3} ± \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", cell["tail_mAP"])  # seed std, interval


def test_pictures_are_png(rows: list[dict], table: pd.DataFrame) -> None:
    train_counts = {c: int(10 * n) for c, n in zip(CLASSES, COUNTS, strict=True)}
    heat = per_class_heatmap(rows, train_counts)
    assert heat.startswith(PNG_SIGNATURE) and len(heat) > 1000
    assert per_class_heatmap(rows, 10 * COUNTS).startswith(PNG_SIGNATURE)
    plot = tail_map_plot(table)
    assert plot.startswith(PNG_SIGNATURE) and len(plot) > 1000
    with pytest.raises(ValueError, match="train_counts"):
        per_class_heatmap(rows, COUNTS[:-1])


def test_study_outputs_carry_each_generated_folders_realism_and_fidelity(tmp_path) -> None:
    """The study's table.md and report show what its generator made: the realism record and the per-class fidelity
    of each folder its rows draw, read from where generate wrote them (a folder not generated is left out)."""
    from trcgl.config import load_config
    from trcgl.storage import FIDELITY, REALISM, Storage
    from trcgl.study.rows import generated_quality, synthetic_folder

    cfg = load_config("jobs/configs/synthesis.yaml", [f"storage.root={tmp_path}"])
    storage = Storage(str(tmp_path))
    edit = synthetic_folder(cfg.train.run, "synthetic_edit")
    realism = {"auroc": 0.6789, "laplacian_std_ratio": 0.9321, "n_synthetic": 40, "n_real": 41}
    storage.write_json(f"{edit}/{REALISM}", realism)
    fidelity = pd.DataFrame(
        {"class": ["pneumothorax", "hernia"], "auroc_real": [0.8, 0.6], "auroc_synthetic": [0.4567, 0.5],
         "auroc_synthetic_vs_control": [0.5123, 0.49], "other": [1, 2]}
    )  # fmt: skip
    storage.write_parquet(f"{edit}/{FIDELITY}", pa.Table.from_pandas(fidelity, preserve_index=False))
    found, markdown = generated_quality(cfg, storage)
    assert found == {"synthetic_edit": {"folder": edit, "realism": realism}}  # sample mode: nothing generated
    assert "0.679" in markdown and "0.932" in markdown and "synthetic_sample" not in markdown
    assert "| pneumothorax | 0.800 | 0.457 | 0.512 |" in markdown and "other" not in markdown
    no_generation = load_config("jobs/configs/synthesis.yaml", ["ablation.rows={b: {extra: none}}",
                                                                 "ablation.baseline=b"])  # fmt: skip
    assert generated_quality(no_generation, storage) == ({}, "")


def test_comparisons_take_each_row_against_its_own_reference(rows: list[dict], table: pd.DataFrame) -> None:
    """A comparison's difference is the two rows' seed means of the main table subtracted (another code path: the
    main table is taken against the baseline), its intervals are paired on the same resamples, and a pair naming a
    row without results is left out."""
    comparisons = {"+tail": "baseline", "weaker": "baseline seed 0", "+tail ": "missing row"}
    frame = comparison_table(rows, comparisons, bootstrap=200, seed=3)
    assert list(frame["name"]) == ["+tail", "weaker"] and list(frame["reference"]) == ["baseline", "baseline seed 0"]
    means = table.set_index("name")
    for name, reference in (("+tail", "baseline"), ("weaker", "baseline seed 0")):
        line = frame.set_index("name").loc[name]
        for metric in ("mAP", "tail_mAP"):
            assert line[f"d_{metric}"] == pytest.approx(means.loc[name, metric] - means.loc[reference, metric])
            assert line[f"d_{metric}_lo"] <= line[f"d_{metric}"] <= line[f"d_{metric}_hi"]
    # against the baseline the comparison is the main table's own difference, interval included (same resamples)
    tail_line = frame.set_index("name").loc["+tail"]
    for column in ("d_tail_mAP", "d_tail_mAP_lo", "d_tail_mAP_hi", "d_tail_mAP_seed_lo", "d_tail_mAP_seed_hi"):
        assert tail_line[column] == pytest.approx(means.loc["+tail", column])
    assert tail_line["d_tail_mAP_lo"] > 0  # better on the tail, as the main table finds
    assert frame.set_index("name").loc["weaker", "d_mAP_hi"] < 0  # the weak model loses to the one-seed reference
    markdown = comparison_markdown(frame)
    assert markdown.count("\n") == 4 and "| weaker | baseline seed 0 | 1 |" in markdown
    assert comparison_markdown(comparison_table(rows, {"x": "y"})) == ""
