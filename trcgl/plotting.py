"""Headless report pictures: matplotlib's Agg backend set once, figures as PNG bytes, the colours of the groups, and
the pictures more than one report draws (the label graph)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # batch jobs have no display; set before any figure exists
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

GROUP_COLOURS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728"}


def png(fig: plt.Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (tight bounding box); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def label_graph_plot(
    classes: Sequence[str],
    groups: Sequence[str],
    edges: Sequence[tuple[int, int, float]],
    tau: float,
    dataset: str = "",
) -> bytes:
    """The label graph: classes on a circle (grouped, coloured head / medium / tail), an arrow i → j per edge (node i
    aggregates node j; darker for larger P(j|i)); a class without out-edge is drawn hollow, a tail class without one
    also crossed out.

    Args:
        classes: K class names; groups: K of ``head`` / ``medium`` / ``tail``.
        edges: [(i, j, P(j|i))] as :func:`trcgl.data.label_graph.edges_at` gives them at ``tau``.
        tau: the threshold the edges are drawn at (for the title); dataset: its name (for the title).
    """
    k = len(classes)
    tail = [i for i, g in enumerate(groups) if g == "tail"]
    sources = {i for i, _, _ in edges}
    title = (
        f"label graph{' of ' + dataset if dataset else ''} at tau = {tau:g}\n{len(edges)} edges, "
        f"{sum(i in sources for i in tail)} of {len(tail)} tail classes with a neighbour"
    )
    rank = {g: r for r, g in enumerate(GROUP_COLOURS)}
    order = sorted(range(k), key=lambda i: (rank.get(groups[i], len(rank)), i))  # head, medium, tail arcs
    angle = np.empty(k)
    angle[order] = np.pi / 2 - 2 * np.pi * np.arange(k) / max(k, 1)  # clockwise from the top, group by group
    xy = np.stack([np.cos(angle), np.sin(angle)], axis=1)  # (K, 2)
    has_edge = np.isin(np.arange(k), list(sources))  # (K,)
    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    for i, j, p in edges:
        ax.annotate(
            "",
            xy=xy[j],
            xytext=xy[i],
            arrowprops={
                "arrowstyle": "-|>",
                "color": "black",
                "alpha": 0.25 + 0.6 * min(max(p, 0.0), 1.0),
                "lw": 0.8,
                "shrinkA": 7,
                "shrinkB": 7,
                "connectionstyle": "arc3,rad=0.12",  # i → j and j → i stay apart
            },
        )
    for i in range(k):
        colour = GROUP_COLOURS.get(groups[i], "grey")
        face = colour if has_edge[i] else "white"
        ax.scatter(*xy[i], s=110, c=face, edgecolors=colour, linewidths=2, zorder=3)
        if not has_edge[i] and groups[i] == "tail":
            ax.scatter(*xy[i], s=60, c="black", marker="x", linewidths=1.5, zorder=4)
        deg = np.degrees(angle[i]) % 360
        left = 90 < deg < 270
        ax.text(
            *(1.1 * xy[i]),
            classes[i],
            rotation=deg - 180 if left else deg,
            rotation_mode="anchor",
            ha="right" if left else "left",
            va="center",
            fontsize=7,
            color="black" if has_edge[i] or groups[i] != "tail" else GROUP_COLOURS["tail"],
        )
    handles = [plt.Line2D([], [], ls="", marker="o", ms=8, mfc=c, mec=c, label=g) for g, c in GROUP_COLOURS.items()]
    handles += [
        plt.Line2D([], [], ls="", marker="o", ms=8, mfc="white", mec="grey", label="no neighbour"),
        plt.Line2D([], [], ls="", marker="x", ms=7, mec="black", label="tail, no neighbour"),
    ]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(-0.25, -0.2), fontsize=8, frameon=False)
    ax.set_xlim(-1.9, 1.9)
    ax.set_ylim(-1.9, 1.9)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    return png(fig)
