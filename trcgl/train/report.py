"""Report pictures for a classifier evaluation (matplotlib, headless). Each function returns PNG bytes."""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from trcgl.config import Config
from trcgl.data.dataset import DatasetInfo
from trcgl.data.images import decode_prepared
from trcgl.data.label_graph import edges_at
from trcgl.plotting import GROUP_COLOURS, label_graph_plot, png
from trcgl.storage import Storage
from trcgl.train.checkpoint import load_model

log = logging.getLogger(__name__)


def long_tail_plot(table: pd.DataFrame, title: str) -> bytes:
    """Per-class AP (bars) with train frequency (line, log scale), classes ordered by train frequency."""
    t = table.sort_values("train_count", ascending=False).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(t)), 4.5))
    ap = t["ap"].astype(float).fillna(0.0)
    ax.bar(range(len(t)), ap, color=[GROUP_COLOURS.get(g, "grey") for g in t["group"]])
    for i, status in enumerate(t["status"]):
        if status != "ok":
            ax.text(i, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(t)), t["class"], rotation=75, ha="right", fontsize=8)
    ax.set_ylabel("AP")
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    ax2.plot(range(len(t)), np.maximum(t["train_count"], 1), "k.-", lw=1)
    ax2.set_yscale("log")
    ax2.set_ylabel("train positives (log)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in GROUP_COLOURS.values()]
    ax.legend(handles, list(GROUP_COLOURS), loc="upper right", fontsize=8)
    ax.set_title(title)
    return png(fig)


def group_bars(result: dict, title: str) -> bytes:
    """Head / medium / tail / all mAP and mAUC with 95 % bootstrap intervals."""
    names = ["head", "medium", "tail", "all"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, metric in zip(axes, ["mAP", "mAUC"], strict=True):
        keys = [f"{g}_{metric}" if g != "all" else metric for g in names]
        vals = [result.get(k) for k in keys]
        ci = [result.get("ci", {}).get(k) for k in keys]
        x = np.arange(len(names))
        heights = [v if v is not None else 0.0 for v in vals]
        # a percentile interval need not contain the point estimate: clip the bars at zero length
        err = np.array(
            [
                [max(0.0, v - c[0]), max(0.0, c[1] - v)] if (v is not None and c) else [0.0, 0.0]
                for v, c in zip(vals, ci, strict=True)
            ]
        ).T
        ax.bar(x, heights, yerr=err, capsize=4, color=[GROUP_COLOURS.get(n, "grey") for n in names])
        for i, v in enumerate(vals):
            ax.text(i, (v or 0) + 0.02, "n/a" if v is None else f"{v:.3f}", ha="center", fontsize=8)
        ax.set_xticks(x, names)
        ax.set_ylim(0, 1.05)
        ax.set_title(metric)
    fig.suptitle(title)
    return png(fig)


def training_curves(history: list[dict]) -> bytes:
    """Train loss and val mAP / mAUC / tail mAP per epoch."""
    h = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].plot(h["epoch"], h["train_loss"], "o-")
    axes[0].set_title("train loss")
    axes[0].set_xlabel("epoch")
    for key in ("val_mAP", "val_mAUC", "val_tail_mAP"):
        if key in h:
            axes[1].plot(h["epoch"], pd.to_numeric(h[key], errors="coerce"), "o-", label=key)
    axes[1].set_title("validation")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylim(0, 1)
    axes[1].legend(fontsize=8)
    return png(fig)


def attention_overlays(
    model: torch.nn.Module, images: np.ndarray, class_names: list[str], class_index: list[int], titles: list[str]
) -> bytes:
    """Class attention maps over test images: one row per class, positives for that class.

    Args:
        model: classifier in eval mode with class attention (or CSRA) maps.
        images: (R, M, S, S) images per row.
        class_names: R names; class_index: R class indices; titles: R row titles.
    """
    rows, cols = images.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    with torch.no_grad():
        for r in range(rows):
            x = torch.from_numpy(images[r][:, None].astype(np.float32))  # (M, 1, S, S)
            logits, maps = model(x, return_attention=True)  # (M, K), (M, K, h, w)
            att = torch.nn.functional.interpolate(
                maps[:, class_index[r]][:, None], size=x.shape[-2:], mode="bilinear", align_corners=False
            )[:, 0]  # (M, S, S)
            probs = torch.sigmoid(logits[:, class_index[r]])
            for c in range(cols):
                ax = axes[r][c]
                ax.imshow(images[r][c], cmap="gray")
                ax.imshow(att[c].numpy(), cmap="jet", alpha=0.35)
                ax.set_title(f"{class_names[r]}\np={probs[c]:.2f}" if c == 0 else f"p={probs[c]:.2f}", fontsize=8)
                ax.axis("off")
            axes[r][0].set_ylabel(titles[r])
    return png(fig)


def pick_attention_examples(
    storage: Storage, info: DatasetInfo, table: pd.DataFrame, split: str, n_classes: int, per_class: int = 4
) -> tuple[list[int], np.ndarray]:
    """The classes with the most split positives, one from each group first, and up to ``per_class`` images each."""
    t = table[table["positives"] > 0].sort_values("positives", ascending=False)
    order = []
    for g in ("tail", "medium", "head"):
        order += t[t["group"] == g]["class"].head(1).tolist()
    order += [c for c in t["class"] if c not in order]
    chosen = [info.classes.index(c) for c in order[:n_classes] if c != "normal"][:n_classes]
    images = []
    for k in chosen:
        found: list[np.ndarray] = []
        for p in info.parts:
            tab = pq.read_table(storage.pyarrow_fs.open_input_file(p), columns=["split", "labels", "image"])
            tab = tab.filter(pc.equal(tab["split"], split))
            for lab, img in zip(tab["labels"].to_pylist(), tab["image"].to_pylist(), strict=True):
                if lab[k] == 1:
                    found.append(decode_prepared(img))
                if len(found) == per_class:
                    break
            if len(found) == per_class:
                break
        while found and len(found) < per_class:
            found.append(found[-1])
        images.append(np.stack(found) if found else None)
    keep = [i for i, im in enumerate(images) if im is not None]
    return [chosen[i] for i in keep], np.stack([images[i] for i in keep]) if keep else np.zeros((0,))


def make_report(
    cfg: Config,
    storage: Storage,
    checkpoint_uri: str,
    info: DatasetInfo,
    result: dict,
    table: pd.DataFrame,
    split: str,
    history: list[dict] | None,
) -> dict[str, bytes]:
    """All report pictures as {file name: PNG bytes}: per-class AP, groups, training curves, the label graph at the
    checkpoint's ``model.gcn_tau`` (GCN models) and class attention overlaid on test images (attention models)."""
    name = f"{result['dataset']} / {split}"
    pictures = {
        "per_class_ap_vs_frequency.png": long_tail_plot(table, f"per-class AP, classes by train frequency ({name})"),
        "groups.png": group_bars(result, f"head / medium / tail ({name}, 95 % bootstrap CI)"),
    }
    if history:
        pictures["training_curves.png"] = training_curves(history)
    model, meta = load_model(checkpoint_uri, cfg.storage)
    if meta["config"]["model"]["gcn"]:
        tau = float(meta["config"]["model"]["gcn_tau"])
        edges = edges_at(info.cooccurrence, tau)
        pictures["label_graph.png"] = label_graph_plot(info.classes, info.groups, edges, tau, info.name)
    if meta["config"]["model"]["class_attention"] or meta["config"]["model"]["csra"]:
        idx, images = pick_attention_examples(storage, info, table, split, cfg.train.report_attention_classes)
        if len(idx):
            names = [info.classes[k] for k in idx]
            titles = [info.groups[k] for k in idx]
            pictures["attention_maps.png"] = attention_overlays(model, images, names, idx, titles)
    return pictures
