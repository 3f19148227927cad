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
SIGNED_CELL = re.compile(rf"^[+{MINUS}]\d\.\d{{3}} \[[+{MINUS}]\d\.\d{{3}}, [+{MINUS}]\d\.\d{{3}}\]$")


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


# ---------------------------------------------------------------------------------------------------- output


def test_markdown(table: pd.DataFrame) -> None:
    md = table_markdown(table)
    lines = md.strip("\n").split("\n")
    assert len(lines) == 2 + len(table)
    assert lines[0].startswith("| model | seeds | interval | mAP |") and "d_tail_mAP" in lines[0]
    body = {line.split(" | ")[0].removeprefix("| "): line.strip("| ").split(" | ") for line in lines[2:]}
    assert list(body) == list(table["name"])
    header = lines[0].strip("| ").split(" | ")
    cell = {name: dict(zip(header, cells, strict=True)) for name, cells in body.items()}
    assert re.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", cell["weaker"]["mAP"])
    assert re.fullmatch(r"\d\.\d{3} ± \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", cell["baseline"]["mAP"])
    assert cell["baseline"]["d_mAP"] == "+0.000 [+0.000, +0.000]"
    for name in body:
        assert SIGNED_CELL.fullmatch(cell[name]["d_mAP"]) and SIGNED_CELL.fullmatch(cell[name]["d_tail_mAP"])
    assert cell["+tail"]["d_tail_mAP"].startswith("+") and cell["weaker"]["d_mAP"].startswith(MINUS)
    assert "-" not in cell["weaker"]["d_mAP"]  # a Unicode minus, not a hyphen


def test_markdown_shows_each_rows_extra_and_seed_std(table: pd.DataFrame) -> None:
    md = table_markdown(table.assign(extra=["none"] + ["synthetic_edit"] * (len(table) - 1)))
    lines = md.strip("\n").split("\n")
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
    from trcgl.storage import Storage
    from trcgl.study.rows import generated_quality, synthetic_folder

    cfg = load_config("jobs/configs/synthesis.yaml", [f"storage.root={tmp_path}"])
    storage = Storage(str(tmp_path))
    edit = synthetic_folder(cfg.train.run, "synthetic_edit")
    realism = {"auroc": 0.6789, "laplacian_std_ratio": 0.9321, "n_synthetic": 40, "n_real": 41}
    storage.write_json(f"{edit}/realism.json", realism)
    fidelity = pd.DataFrame(
        {"class": ["pneumothorax", "hernia"], "auroc_real": [0.8, 0.6], "auroc_synthetic": [0.4567, 0.5],
         "auroc_synthetic_vs_control": [0.5123, 0.49], "other": [1, 2]}
    )  # fmt: skip
    storage.write_parquet(f"{edit}/fidelity.parquet", pa.Table.from_pandas(fidelity, preserve_index=False))
    found, markdown = generated_quality(cfg, storage)
    assert found == {"synthetic_edit": {"folder": edit, "realism": realism}}  # sample mode: nothing generated
    assert "0.679" in markdown and "0.932" in markdown and "synthetic_sample" not in markdown
    assert "| pneumothorax | 0.800 | 0.457 | 0.512 |" in markdown and "other" not in markdown
    no_generation = load_config("jobs/configs/synthesis.yaml", ["ablation.rows={b: {extra: none}}",
                                                                 "ablation.baseline=b"])  # fmt: skip
    assert generated_quality(no_generation, storage) == ({}, "")
