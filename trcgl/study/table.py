"""Statistics, table and pictures of an ablation study (no Ray): several models scored on the same test images.

- :func:`paired_bootstrap`: the difference of one macro metric between two models on the same images, with a 95 %
  percentile interval from resampling the images (the same resampled indices for both models, i.e. paired).
- :func:`ablation_table`: one row per model (the mean over its training seeds, with the seed std), every metric with
  its interval and the differences d_mAP, d_head_mAP, d_medium_mAP, d_tail_mAP against a baseline: with the paired
  bootstrap interval over the images and, from the per-seed differences (pairing seeds by value), a Student-t
  interval over the seeds.
- :func:`table_markdown`, :func:`per_class_heatmap`, :func:`tail_map_plot`: the table as Markdown, pictures as PNG.

All metric definitions are those of :mod:`trcgl.metrics` (per-class AP/AUC from ``per_class_ap_auc``, macro means
from ``summarise``): a class without positives in the full set or in a resample is left out of the means; a group
with no evaluable class has no value (None in dicts, NaN in frames), and a resample where the metric is undefined is
not used. Resamples come from :func:`trcgl.metrics.bootstrap_draws`, which ``evaluate_scores`` uses too, so with
the same seed every row's intervals and every paired difference use the same resamples of the images.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from trcgl.label_values import UNKNOWN
from trcgl.metrics import (
    GROUPS,
    METRICS,
    TABLE_METRICS,
    bootstrap_draws,
    evaluate_scores,
    none_if_nan,
    per_class_ap_auc,
    resampled_metrics,
    summarise,
)
from trcgl.plotting import GROUP_COLOURS, png

log = logging.getLogger(__name__)

DIFF_METRICS = ("mAP", "head_mAP", "medium_mAP", "tail_mAP")
SHOWN_DIFFS = ("mAP", "tail_mAP")  # the differences table_markdown shows; the frame has all of DIFF_METRICS
SEED_SUFFIXES = ("_seed_mean", "_seed_std", "_seed_lo", "_seed_hi")
MINUS = "\u2212"


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _table_metrics(row: dict, labels: np.ndarray, classes: list[str], groups: list[str]) -> dict[str, float]:
    """{metric: value on all test images} of one row and seed for :data:`TABLE_METRICS`, NaN where undefined."""
    result = evaluate_scores(np.asarray(row["scores"], dtype=np.float64), labels, classes, groups, bootstrap=0)
    return {m: _nan_if_none(result[m]) for m in TABLE_METRICS}


def _percentiles(samples: np.ndarray, point: float) -> tuple[float, float, int]:
    """(2.5 %, 97.5 % percentiles of the non-NaN samples, how many) as ``evaluate_scores`` takes them; NaN bounds
    where no sample or the point is undefined."""
    valid = samples[~np.isnan(samples)]
    if valid.size and not math.isnan(point):
        return float(np.percentile(valid, 2.5)), float(np.percentile(valid, 97.5)), int(valid.size)
    return float("nan"), float("nan"), int(valid.size)


def _seed_interval(diffs: np.ndarray) -> dict[str, float]:
    """Mean, std (ddof 1) and 95 % Student-t interval of the mean of per-seed differences, keyed by
    :data:`SEED_SUFFIXES`; std and interval NaN with fewer than 2 differences, all NaN if one is NaN or none."""
    out = dict.fromkeys(SEED_SUFFIXES, float("nan"))
    if diffs.size == 0 or np.isnan(diffs).any():
        return out
    out["_seed_mean"] = float(diffs.mean())
    if diffs.size > 1:
        std = float(diffs.std(ddof=1))
        half = float(stats.t.ppf(0.975, diffs.size - 1)) * std / math.sqrt(diffs.size)
        out["_seed_std"], out["_seed_lo"], out["_seed_hi"] = std, out["_seed_mean"] - half, out["_seed_mean"] + half
    return out


def _validate(
    labels: np.ndarray, score_sets: Sequence[np.ndarray], classes: Sequence[str], groups: Sequence[str]
) -> None:
    """Raises ValueError unless every score set is a finite (N, K) array for (N, K) {0, 1} labels and K classes."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be (N, K), got {labels.shape}")
    for scores in score_sets:
        if scores.shape != labels.shape:
            raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be (N, K)")
        if not np.isfinite(scores).all():
            raise ValueError(f"scores contain {int((~np.isfinite(scores)).sum())} non-finite values")
    if len(classes) != labels.shape[1] or len(groups) != labels.shape[1]:
        raise ValueError(f"{len(classes)} classes and {len(groups)} groups given for {labels.shape[1]} label columns")
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown groups {unknown}; known: {list(GROUPS)}")
    if not np.isin(labels, (0, 1, UNKNOWN)).all():
        raise ValueError(f"labels must be 0, 1 or {UNKNOWN} (unknown)")


def paired_bootstrap(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    classes: Sequence[str],
    groups: Sequence[str],
    metric: str = "mAP",
    n: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap of metric(b) - metric(a) for two models scored on the same images.

    Each resample draws N image indices with replacement and evaluates both models on those same images, so the
    interval reflects the difference itself rather than two independent intervals. A class without positives in a
    resample is left out of both means (as in :mod:`trcgl.metrics`); a resample where the metric is undefined for
    the group (no evaluable class) is not used.

    Args:
        labels: (N, K) multi-hot targets of the test images.
        scores_a: (N, K) probabilities (or logits) of model a on those images, in the same order.
        scores_b: (N, K) probabilities (or logits) of model b on those images, in the same order.
        classes: K class names.
        groups: K group names, each "head", "medium" or "tail".
        metric: "mAP", "mAUC", "head_mAP", "medium_mAP", "tail_mAP" (or any other key of ``metrics.METRICS``).
        n: number of resamples; 0 for the point difference only.
        seed: seed of the ``np.random.Generator`` drawing the resamples (drawn as ``evaluate_scores`` draws them).

    Returns:
        ``{"diff": metric(b) - metric(a) on all N images, "lo": 2.5 % and "hi": 97.5 % percentiles of the resampled
        differences, "n": resamples used, "metric": metric}``; diff/lo/hi are None where undefined.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {list(METRICS)}")
    y = np.asarray(labels)
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    _validate(y, [a, b], classes, groups)
    y = y.astype(np.float64)
    group_arr = np.asarray(groups)

    point_a = summarise(*per_class_ap_auc(a, y), group_arr)[metric]
    point_b = summarise(*per_class_ap_auc(b, y), group_arr)[metric]
    diff = point_b - point_a
    lo = hi = float("nan")
    used = 0
    if n > 0:
        draws = bootstrap_draws(y.shape[0], n, seed)  # (n, N)
        values_a = resampled_metrics(a, y, group_arr, draws)[metric]  # (n,)
        values_b = values_a if np.array_equal(a, b) else resampled_metrics(b, y, group_arr, draws)[metric]
        lo, hi, used = _percentiles(values_b - values_a, diff)
        if used < n:
            log.info("paired bootstrap %s: %d of %d resamples had no evaluable class", metric, n - used, n)
    return {"diff": none_if_nan(diff), "lo": none_if_nan(lo), "hi": none_if_nan(hi), "n": used, "metric": metric}


def _group_rows(rows: list[dict], baseline: str) -> dict[str, list[dict]]:
    """Rows by name in first-seen order, seeds sorted; checks the images, labels, classes and groups of every row
    against the baseline's first seed."""
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(str(row["name"]), []).append(row)
    if baseline not in by_name:
        raise ValueError(f"baseline {baseline!r} is not among the rows {list(by_name)}")
    ref = min(by_name[baseline], key=lambda r: int(r["seed"]))
    ref_ids = np.asarray(ref["image_ids"])
    ref_labels = np.asarray(ref["labels"])
    for name, group in by_name.items():
        seeds = [int(r["seed"]) for r in group]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"row {name!r}: seed given twice in {seeds}")
        group.sort(key=lambda r: int(r["seed"]))
        for row in group:
            label = f"row {name!r} seed {int(row['seed'])}"
            ids = np.asarray(row["image_ids"])
            if ids.shape != ref_ids.shape or not np.array_equal(ids, ref_ids):
                raise ValueError(
                    f"{label}: image_ids differ from the baseline {baseline!r}'s (same images, same order)"
                )
            if not np.array_equal(np.asarray(row["labels"]), ref_labels):
                raise ValueError(f"{label}: labels differ from the baseline {baseline!r}'s")
            if list(row["classes"]) != list(ref["classes"]) or list(row["groups"]) != list(ref["groups"]):
                raise ValueError(f"{label}: classes or groups differ from the baseline {baseline!r}'s")
            scores = np.asarray(row["scores"])
            if scores.shape != ref_labels.shape:
                raise ValueError(f"{label}: scores {scores.shape}, labels {ref_labels.shape}")
    return by_name


def ablation_table(rows: list[dict], baseline: str, bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per model: metrics with 95 % intervals and paired differences against the baseline.

    Rows of the same ``name`` are seeds of one model. With one seed a metric is its value on the test images and
    the interval is the 95 % bootstrap interval (``interval`` = "bootstrap 95 %", equal to ``evaluate_scores``'s
    for the same seed). With several seeds the metric is the mean over seeds, ``{metric}_std`` the seed standard
    deviation (ddof 1), and the interval the bootstrap interval of that seed mean: on each resample of the images
    every seed's scores are evaluated and the metric averaged over seeds (``interval`` = "seeds + bootstrap").
    (The metric of the seed-averaged *scores* is an ensemble's, often far above the seeds' mean, so its interval
    would not describe the reported mean.) The differences d_mAP, d_head_mAP, d_medium_mAP, d_tail_mAP are (row's
    seed mean) - (baseline's seed mean), with the paired-bootstrap interval of that difference on the same
    resamples; the baseline's own are 0 [0, 0]. Beside them, the seeds' view of the same difference: the per-seed
    differences (row seed s - baseline seed s, for the seeds both have; ``paired_seeds`` of them), their mean, std
    (ddof 1) and the 95 % Student-t interval of their mean. Where both have the same seeds the mean is the
    difference itself; where a row lacks some of the baseline's seeds (or has others) it is the mean over the
    paired seeds only.

    Args:
        rows: dicts with ``name``, ``seed`` (int), ``labels`` (N, K) multi-hot, ``scores`` (N, K), ``classes`` (K),
            ``groups`` (K,) and ``image_ids`` (N,), all on the same test images in the same order.
        baseline: the ``name`` the differences are taken against.
        bootstrap: resamples of the images per interval; 0 for none (intervals NaN).
        seed: seed of the resamples (the same resamples for every row and difference).

    Returns:
        Frame with columns name, seeds, paired_seeds, interval, then for each of mAP, mAUC, head_mAP, medium_mAP,
        tail_mAP the value, ``_lo``, ``_hi`` and ``_std`` (NaN for one seed), then for each of mAP, head_mAP,
        medium_mAP, tail_mAP the difference ``d_{m}``, its bootstrap ``d_{m}_lo``, ``d_{m}_hi`` and its seed
        statistics ``d_{m}_seed_mean``, ``d_{m}_seed_std``, ``d_{m}_seed_lo``, ``d_{m}_seed_hi`` (std and interval
        NaN with fewer than 2 paired seeds); NaN where undefined (e.g. a group without evaluable classes).
        ``attrs["class_groups"]`` is ``{group: [class, ...]}`` in class order, which :func:`table_markdown` lists.

    Raises:
        ValueError: a row's image_ids (or labels, classes, groups) differ from the baseline's, a name has the same
            seed twice, or the baseline is missing.
    """
    by_name = _group_rows(rows, baseline)
    ref = by_name[baseline][0]
    labels = np.asarray(ref["labels"]).astype(np.float64)
    classes, groups = list(ref["classes"]), list(ref["groups"])
    group_arr = np.asarray(groups)
    draws = bootstrap_draws(labels.shape[0], bootstrap, seed)  # (bootstrap, N), shared by every row and difference

    results, resampled, by_seed = {}, {}, {}
    for name, group in by_name.items():
        by_seed[name] = {int(r["seed"]): _table_metrics(r, labels, classes, groups) for r in group}
        # per resample, the mean over seeds of the metric (NaN-ness depends on the labels only, so it is shared)
        seed_draws = [resampled_metrics(np.asarray(r["scores"], np.float64), labels, group_arr, draws) for r in group]
        resampled[name] = {m: np.mean([d[m] for d in seed_draws], axis=0) for m in METRICS}  # {metric: (bootstrap,)}
        several = len(group) > 1
        cells: dict[str, Any] = {
            "name": name,
            "seeds": len(group),
            "paired_seeds": len(set(by_seed[name]) & {int(r["seed"]) for r in by_name[baseline]}),
            "interval": ("seeds + bootstrap" if several else "bootstrap 95 %") if bootstrap > 0 else "none",
        }
        for m in TABLE_METRICS:
            values = np.array([v[m] for v in by_seed[name].values()])  # (seeds,)
            defined = not np.isnan(values).any()
            cells[m] = float(values.mean()) if defined else float("nan")
            cells[f"{m}_lo"], cells[f"{m}_hi"], _ = _percentiles(resampled[name][m], cells[m])
            cells[f"{m}_std"] = float(values.std(ddof=1)) if several and defined else float("nan")
        results[name] = cells
        log.info(
            "ablation row %s: %d seed(s), mAP %.4f, tail_mAP %.4f", name, len(group), cells["mAP"], cells["tail_mAP"]
        )

    base = results[baseline]
    for name, cells in results.items():
        for m in DIFF_METRICS:
            if name == baseline:
                d, lo, hi = (float("nan"),) * 3 if math.isnan(base[m]) else (0.0, 0.0, 0.0)
            else:
                d = cells[m] - base[m]
                lo, hi, _ = _percentiles(resampled[name][m] - resampled[baseline][m], d)
            cells[f"d_{m}"], cells[f"d_{m}_lo"], cells[f"d_{m}_hi"] = d, lo, hi
            paired = sorted(set(by_seed[name]) & set(by_seed[baseline]))
            diffs = np.array([by_seed[name][s][m] - by_seed[baseline][s][m] for s in paired])  # (paired seeds,)
            cells.update({f"d_{m}{suffix}": v for suffix, v in _seed_interval(diffs).items()})

    columns = ["name", "seeds", "paired_seeds", "interval"]
    columns += [f"{m}{suffix}" for m in TABLE_METRICS for suffix in ("", "_lo", "_hi", "_std")]
    columns += [f"d_{m}{suffix}" for m in DIFF_METRICS for suffix in ("", "_lo", "_hi", *SEED_SUFFIXES)]
    frame = pd.DataFrame(list(results.values()), columns=columns)
    frame.attrs["class_groups"] = {g: [c for c, cg in zip(classes, groups, strict=True) if cg == g] for g in GROUPS}
    return frame


def _fmt(value: float, signed: bool = False) -> str:
    """``0.173``; signed: ``+0.021`` / ``−0.004`` (Unicode minus), exact zero as ``+0.000``."""
    if signed:
        text = f"{abs(value):.3f}"
        return (MINUS if value < 0 else "+") + text
    return f"{value:.3f}"


def _cell(value: float, lo: float, hi: float, std: float = float("nan")) -> str:
    """``0.173 [0.164, 0.215]``, with a seed std ``0.173 ± 0.004 [0.164, 0.215]``; "-" where undefined."""
    if pd.isna(value):
        return "-"
    text = _fmt(value)
    if not pd.isna(std):
        text += f" ± {std:.3f}"
    if not (pd.isna(lo) or pd.isna(hi)):
        text += f" [{_fmt(lo)}, {_fmt(hi)}]"
    return text


def _diff_cell(row: Mapping[str, Any], metric: str) -> str:
    """``+0.012 ± 0.008 [boot −0.010, +0.030] [seeds −0.008, +0.032]``; "-" where undefined.

    The difference of the seed means, ± the std of the per-seed differences, the paired bootstrap interval and the
    Student-t interval over the paired seeds (each part left out where NaN). Where the paired seeds are not all of
    the row's or their mean is not the difference (the row's seeds differ from the baseline's), their number, mean
    and std go in the seed interval instead: ``+0.012 [boot …] [seeds −0.008, +0.032; 2 paired, +0.010 ± 0.008]``.
    """
    d, mean, std = row[f"d_{metric}"], row[f"d_{metric}_seed_mean"], row[f"d_{metric}_seed_std"]
    if pd.isna(d):
        return "-"
    partial = row["paired_seeds"] != row["seeds"] or not math.isclose(mean, d, abs_tol=1e-9)
    text = _fmt(d, signed=True)
    if not pd.isna(std) and not partial:
        text += f" ± {std:.3f}"
    lo, hi = row[f"d_{metric}_lo"], row[f"d_{metric}_hi"]
    if not (pd.isna(lo) or pd.isna(hi)):
        text += f" [boot {_fmt(lo, signed=True)}, {_fmt(hi, signed=True)}]"
    lo, hi = row[f"d_{metric}_seed_lo"], row[f"d_{metric}_seed_hi"]
    if not (pd.isna(lo) or pd.isna(hi)):
        paired = f"; {row['paired_seeds']} paired, {_fmt(mean, signed=True)} ± {std:.3f}" if partial else ""
        text += f" [seeds {_fmt(lo, signed=True)}, {_fmt(hi, signed=True)}{paired}]"
    return text


def table_markdown(df: pd.DataFrame) -> str:
    """The :func:`ablation_table` frame as a Markdown table, one line per row, with a footnote on the differences
    and, where the frame's ``attrs`` carry them, the classes of each group.

    Cells are ``0.173 [0.164, 0.215]`` (with several seeds ``0.173 ± 0.004 [0.164, 0.215]``, ± the seed std) and
    differences (d_mAP, d_tail_mAP) ``+0.012 ± 0.008 [boot −0.010, +0.030] [seeds −0.008, +0.032]`` as
    :func:`_diff_cell` writes them; "-" where undefined. A frame with an ``extra`` column (the study's
    :func:`trcgl.study.rows.write_outputs` adds where each row's extra rows come from) shows it after the model.
    """
    labels = ["model", *(["extra"] if "extra" in df.columns else []), "seeds", "interval"]
    header = [*labels, *TABLE_METRICS, *(f"d_{m}" for m in SHOWN_DIFFS)]
    align = ["---"] * len(labels) + ["---:"] * (len(header) - len(labels))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for row in df.to_dict("records"):
        cells = [str(row["name"]).replace("|", "\\|")]
        cells += [str(row["extra"])] if "extra" in df.columns else []
        cells += [str(row["seeds"]), str(row["interval"])]
        cells += [_cell(row[m], row[f"{m}_lo"], row[f"{m}_hi"], row[f"{m}_std"]) for m in TABLE_METRICS]
        cells += [_diff_cell(row, m) for m in SHOWN_DIFFS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{', '.join(f'd_{m}' for m in SHOWN_DIFFS)}: (row's seed mean) {MINUS} (baseline's seed mean) ± the std of "
        f"the per-seed differences (row seed s {MINUS} baseline seed s, on the seeds both have); [boot]: 95 % paired "
        "bootstrap interval over resampled test images; [seeds]: 95 % Student-t interval of the mean per-seed "
        "difference (2 or more paired seeds), with the number of paired seeds and their mean ± std where a row's "
        "seeds differ from the baseline's.",
    ]
    class_groups = df.attrs.get("class_groups")
    if class_groups:
        listed = [f"{g} ({len(names)}): {', '.join(names) or '-'}" for g, names in class_groups.items()]
        lines += ["", "Classes: " + "; ".join(listed) + "."]
    return "\n".join(lines) + "\n"


def comparison_table(
    rows: list[dict], comparisons: Mapping[str, str], bootstrap: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Each compared row against its own reference row (a part against the row it is added to), not the baseline.

    For every ``row → reference`` pair whose rows both have results, :func:`ablation_table` of those two rows with
    the reference as baseline gives the row's differences (seed means, paired bootstrap and seed intervals, on the
    same resamples as the main table for the same ``seed``). Pairs naming a row without results are left out.

    Args:
        rows: as for :func:`ablation_table`.
        comparisons: row name → name of the row it is compared with.
        bootstrap: resamples of the test images.
        seed: seed of the resamples.

    Returns:
        Frame with columns name, reference, seeds, paired_seeds and every d_ column of :func:`ablation_table`.
    """
    present = {str(r["name"]) for r in rows}
    out = []
    for name, reference in comparisons.items():
        if name not in present or reference not in present:
            continue
        pair = [r for r in rows if r["name"] in (name, reference)]
        frame = ablation_table(pair, reference, bootstrap=bootstrap, seed=seed)
        line = frame[frame["name"] == name].iloc[0]
        d_columns = [c for c in frame.columns if c.startswith("d_")]
        out.append({"name": name, "reference": reference, **line[["seeds", "paired_seeds", *d_columns]].to_dict()})
    return pd.DataFrame(out)


def comparison_markdown(df: pd.DataFrame) -> str:
    """The :func:`comparison_table` frame as Markdown: one line per pair, the shown differences as in the main
    table."""
    if df.empty:
        return ""
    header = ["model", "compared with", "seeds", *(f"d_{m}" for m in SHOWN_DIFFS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(SHOWN_DIFFS)) + "|"]
    for row in df.to_dict("records"):
        cells = [str(row["name"]).replace("|", "\\|"), str(row["reference"]).replace("|", "\\|"), str(row["seeds"])]
        cells += [_diff_cell(row, m) for m in SHOWN_DIFFS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_class_heatmap(rows: list[dict], train_counts: Mapping[str, int] | Sequence[int]) -> bytes:
    """Per-class test AP of each model as a heatmap, classes ordered by train frequency (descending).

    Args:
        rows: the :func:`ablation_table` rows (a model with several seeds shows the mean of the seeds' AP).
        train_counts: train positives per class, as {class: count} or (K,) in the rows' class order.

    Returns:
        PNG bytes: models × classes, AP per cell (grey "n/a" where the class has no test positives), white lines
        at the head / medium / tail boundaries, class names coloured by group.
    """
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(str(row["name"]), []).append(row)
    first = rows[0]
    classes, groups = list(first["classes"]), list(first["groups"])
    if isinstance(train_counts, Mapping):
        counts = np.array([train_counts[c] for c in classes], dtype=np.float64)
    else:
        counts = np.asarray(train_counts, dtype=np.float64)
    if counts.shape != (len(classes),):
        raise ValueError(f"train_counts has {counts.shape} entries for {len(classes)} classes")
    order = np.argsort(-counts, kind="stable")  # (K,)

    ap = np.full((len(by_name), len(classes)), np.nan)  # (models, K)
    for i, group in enumerate(by_name.values()):
        per_seed = []
        for r in group:
            y = np.asarray(r["labels"], dtype=np.float64)
            per_seed.append(per_class_ap_auc(np.asarray(r["scores"], dtype=np.float64), y)[0])
        stacked = np.array(per_seed)  # (seeds, K)
        has = ~np.isnan(stacked).all(axis=0)
        ap[i, has] = np.nanmean(stacked[:, has], axis=0)
    ap = ap[:, order]
    ordered_groups = [groups[k] for k in order]

    fig, ax = plt.subplots(figsize=(max(8.0, 0.38 * len(classes) + 2), 1.0 + 0.45 * len(by_name)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(ap), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(ap.shape[0]):
        for j in range(ap.shape[1]):
            value = ap[i, j]
            if np.isnan(value):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=6, color="black")
            else:
                colour = "white" if value < 0.6 else "black"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color=colour)
    for j in range(1, len(ordered_groups)):
        if ordered_groups[j] != ordered_groups[j - 1]:
            ax.axvline(j - 0.5, color="white", lw=2.5)
            ax.axvline(j - 0.5, color="black", lw=0.8, ls="--")
    ax.set_xticks(range(len(classes)), [classes[k] for k in order], rotation=75, ha="right", fontsize=7)
    for tick, g in zip(ax.get_xticklabels(), ordered_groups, strict=True):
        tick.set_color(GROUP_COLOURS.get(g, "black"))
    ax.set_yticks(range(len(by_name)), list(by_name), fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in GROUP_COLOURS.values()]
    ax.legend(handles, list(GROUP_COLOURS), loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=7, frameon=False)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="AP")
    ax.set_title("per-class test AP, classes by train frequency (names coloured by group)")
    return png(fig)


def tail_map_plot(df: pd.DataFrame) -> bytes:
    """Tail mAP per model (the :func:`ablation_table` frame) with its 95 % interval as error bars.

    A percentile interval need not contain the point (always so with several seeds, whose point is the seed mean),
    so each bar is clipped at zero length; models without a tail value are marked "n/a".
    """
    names = [str(n) for n in df["name"]]
    values = df["tail_mAP"].to_numpy(dtype=np.float64)  # (M,)
    lo = df["tail_mAP_lo"].to_numpy(dtype=np.float64)  # (M,)
    hi = df["tail_mAP_hi"].to_numpy(dtype=np.float64)  # (M,)
    err = np.nan_to_num(np.vstack([np.maximum(values - lo, 0.0), np.maximum(hi - values, 0.0)]))  # (2, M)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 1.5), 3.8))
    ax.errorbar(x, np.nan_to_num(values), yerr=err, fmt="o", color=GROUP_COLOURS["tail"], capsize=5, lw=1.5)
    for i, v in enumerate(values):
        ax.text(i + 0.08, (0.0 if np.isnan(v) else v), "n/a" if np.isnan(v) else f"{v:.3f}", fontsize=8, va="bottom")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("tail mAP")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("tail mAP with 95 % intervals")
    return png(fig)
