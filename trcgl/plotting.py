"""Headless report pictures: matplotlib's Agg backend set once, figures as PNG bytes, the colours of the groups."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # batch jobs have no display; set before any figure exists
import matplotlib.pyplot as plt  # noqa: E402

GROUP_COLOURS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728"}


def png(fig: plt.Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (tight bounding box); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
