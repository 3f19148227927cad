"""A tiny builder for a self-contained ``report.html``: one file a person opens in any browser, offline.

Everything is inline: the CSS sits in a ``<style>`` element and every picture is a ``data:image/png;base64,...``
URI, so the document loads no external resource and needs no JavaScript. Every text value (titles, captions, table
cells, paragraphs, code) goes through :func:`html.escape`.

Example::

    from trcgl.pipeline.html import Code, Image, Section, Table, render, versions

    html_text = render(
        "Run r42",
        [
            Section("Metrics", [Table(per_class, caption="Per-class AUROC")]),
            Section("Curves", [Image(png_bytes, caption="ROC")]),
            Section("Environment", [Code(yaml.safe_dump(versions()))]),
        ],
        subtitle="TRCGL-Net on PadChest-Synth",
    )

No Ray and no torch here: :func:`versions` reads package versions from their metadata without importing them.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import numbers
import platform
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from trcgl.storage import slugify

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Distribution names whose versions a report records, in the order shown.
VERSIONED_PACKAGES: tuple[str, ...] = (
    "ray",
    "torch",
    "torchvision",
    "timm",
    "diffusers",
    "transformers",
    "torch_geometric",
    "pyarrow",
    "optuna",
)

_CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1.5rem 2rem; color: #1f2328; background: #ffffff; line-height: 1.45; }
header h1 { margin-bottom: 0.2rem; }
header p.subtitle { margin-top: 0; color: #59636e; }
nav.toc { border: 1px solid #d1d9e0; border-radius: 6px; padding: 0.5rem 1rem; background: #f6f8fa; }
nav.toc ol { margin: 0.3rem 0; }
section.report-section { margin-top: 2rem; }
section.report-section h2 { border-bottom: 1px solid #d1d9e0; padding-bottom: 0.2rem; }
table.report-table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem;
                     font-variant-numeric: tabular-nums; }
table.report-table caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
table.report-table th, table.report-table td { border: 1px solid #d1d9e0; padding: 0.25rem 0.6rem; }
table.report-table thead th { background: #f6f8fa; }
table.report-table tbody th { text-align: left; font-weight: 600; }
table.report-table td.num { text-align: right; }
figure.report-figure { margin: 0.8rem 0; display: inline-block; vertical-align: top; }
figure.report-figure img { max-width: 100%; height: auto; border: 1px solid #d1d9e0; }
figure.report-figure figcaption { font-size: 0.85rem; color: #59636e; margin-top: 0.2rem; }
div.report-images { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
div.report-images figure.report-figure { margin: 0; max-width: 100%; }
pre.report-code { background: #f6f8fa; border: 1px solid #d1d9e0; border-radius: 6px; padding: 0.6rem 0.8rem;
                  overflow-x: auto; font-size: 0.85rem; }
p.report-text { white-space: pre-wrap; }
footer { margin-top: 3rem; padding-top: 0.5rem; border-top: 1px solid #d1d9e0; color: #59636e;
         font-size: 0.8rem; }
"""


@dataclass
class Table:
    """A pandas DataFrame rendered as ``<table class="report-table">`` with ``<thead>`` and ``<tbody>``.

    Attributes:
        frame: The data. Column labels become the header row (MultiIndex labels are joined with `` / ``). The
            index is shown as a leading header column unless it is the default ``RangeIndex`` without a name.
        caption: Optional ``<caption>`` text.
        float_format: ``str.format`` pattern applied to float cells (NaN is shown as ``NaN``).
    """

    frame: pd.DataFrame
    caption: str = ""
    float_format: str = "{:.3f}"


@dataclass
class Image:
    """A PNG picture, embedded as a ``data:image/png;base64`` URI inside a ``<figure>``.

    Attributes:
        png: The PNG file's bytes (checked against the 8-byte PNG signature at render time).
        caption: Optional ``<figcaption>`` text; also the image's ``alt`` text.
        width: Optional display width in CSS pixels (the picture keeps its aspect ratio).
    """

    png: bytes
    caption: str = ""
    width: int | None = None

    @classmethod
    def from_figure(cls, fig: Any, caption: str = "", width: int | None = None, dpi: int = 100) -> Image:
        """Builds an Image from a matplotlib figure (saved as PNG in memory; the figure is left open).

        Args:
            fig: A ``matplotlib.figure.Figure``.
            caption: Caption text.
            width: Optional display width in CSS pixels.
            dpi: Resolution of the saved PNG.

        Returns:
            The Image.
        """
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        return cls(buf.getvalue(), caption=caption, width=width)


@dataclass
class Text:
    """A paragraph of plain text (escaped; line breaks are kept)."""

    text: str


@dataclass
class Code:
    """Preformatted text in ``<pre><code>`` (escaped), e.g. the resolved config YAML or the versions."""

    text: str


@dataclass
class Images:
    """A wrapping row (grid) of figures."""

    items: list[Image] = field(default_factory=list)


Block = Table | Image | Text | Code | Images


@dataclass
class Section:
    """A titled part of the report, listed in the table of contents.

    Attributes:
        title: Section heading (``<h2>``).
        blocks: The section's content, in order.
    """

    title: str
    blocks: list[Block] = field(default_factory=list)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _label(value: object) -> str:
    if isinstance(value, tuple):
        return " / ".join(str(v) for v in value)
    return str(value)


def _cell(value: object, float_format: str) -> tuple[str, bool]:
    """Formats one table cell; returns (text, is_numeric)."""
    if value is None:
        return "", False
    if isinstance(value, bool):
        return str(value), False
    if isinstance(value, numbers.Integral):
        return str(int(value)), True
    if isinstance(value, numbers.Real):
        as_float = float(value)
        if math.isnan(as_float):
            return "NaN", True
        return float_format.format(as_float), True
    try:
        if pd.isna(value):
            return "", False
    except (TypeError, ValueError):
        pass
    return str(value), False


def _show_index(frame: pd.DataFrame) -> bool:
    index = frame.index
    if any(name is not None for name in index.names):
        return True
    if isinstance(index, pd.RangeIndex):
        return not (index.start == 0 and index.step == 1)
    return True


def _render_table(table: Table) -> str:
    frame = table.frame
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"Table {table.caption!r}: frame must be a pandas DataFrame, got {type(frame).__name__}")
    show_index = _show_index(frame)
    out = ['<table class="report-table">']
    if table.caption:
        out.append(f"<caption>{_esc(table.caption)}</caption>")
    head = []
    if show_index:
        index_name = " / ".join(str(n) for n in frame.index.names if n is not None)
        head.append(f'<th scope="col">{_esc(index_name)}</th>')
    head.extend(f'<th scope="col">{_esc(_label(col))}</th>' for col in frame.columns)
    out.append("<thead><tr>" + "".join(head) + "</tr></thead>")
    out.append("<tbody>")
    for row_label, row in zip(frame.index, frame.itertuples(index=False, name=None), strict=True):
        cells = []
        if show_index:
            cells.append(f'<th scope="row">{_esc(_label(row_label))}</th>')
        for value in row:
            text, numeric = _cell(value, table.float_format)
            cls = ' class="num"' if numeric else ""
            cells.append(f"<td{cls}>{_esc(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _render_image(image: Image) -> str:
    png = image.png
    if not isinstance(png, bytes | bytearray | memoryview) or bytes(png[:8]) != PNG_SIGNATURE:
        raise ValueError(f"Image {image.caption!r} is not a PNG (its bytes do not start with the PNG signature)")
    if image.width is not None and (not isinstance(image.width, int) or image.width <= 0):
        raise ValueError(f"Image {image.caption!r}: width must be a positive int, got {image.width!r}")
    data = base64.b64encode(bytes(png)).decode("ascii")
    width = f' width="{image.width}"' if image.width is not None else ""
    out = [
        '<figure class="report-figure">',
        f'<img src="data:image/png;base64,{data}" alt="{_esc(image.caption)}"{width}>',
    ]
    if image.caption:
        out.append(f"<figcaption>{_esc(image.caption)}</figcaption>")
    out.append("</figure>")
    return "\n".join(out)


def _render_block(block: Block) -> str:
    if isinstance(block, Table):
        return _render_table(block)
    if isinstance(block, Image):
        return _render_image(block)
    if isinstance(block, Images):
        return '<div class="report-images">\n' + "\n".join(_render_image(i) for i in block.items) + "\n</div>"
    if isinstance(block, Text):
        return f'<p class="report-text">{_esc(block.text)}</p>'
    if isinstance(block, Code):
        return f'<pre class="report-code"><code>{_esc(block.text)}</code></pre>'
    raise TypeError(f"unknown report block type {type(block).__name__}")


def _anchor(index: int, title: str) -> str:
    slug = slugify(title)
    return f"sec-{index}-{slug}" if slug else f"sec-{index}"


def render(title: str, sections: list[Section], subtitle: str = "") -> str:
    """Renders the report as one self-contained HTML document.

    Args:
        title: Document title (``<title>`` and ``<h1>``).
        sections: The sections, in order; each gets an anchor and an entry in the table of contents.
        subtitle: Optional line under the title.

    Returns:
        The HTML text (UTF-8 when written; it declares ``<meta charset="utf-8">``).

    Raises:
        ValueError: An :class:`Image` whose bytes are not a PNG (the message names its caption), or a bad width.
        TypeError: A block of an unknown type, or a :class:`Table` whose frame is not a DataFrame.
    """
    anchors = [_anchor(i, s.title) for i, s in enumerate(sections, start=1)]
    body: list[str] = ["<header>", f"<h1>{_esc(title)}</h1>"]
    if subtitle:
        body.append(f'<p class="subtitle">{_esc(subtitle)}</p>')
    body.append("</header>")
    if sections:
        body.append('<nav class="toc"><strong>Contents</strong><ol>')
        body.extend(f'<li><a href="#{a}">{_esc(s.title)}</a></li>' for a, s in zip(anchors, sections, strict=True))
        body.append("</ol></nav>")
    n_images = 0
    n_tables = 0
    for anchor, section in zip(anchors, sections, strict=True):
        body.append(f'<section class="report-section" id="{anchor}">')
        body.append(f"<h2>{_esc(section.title)}</h2>")
        for block in section.blocks:
            body.append(_render_block(block))
            n_tables += isinstance(block, Table)
            n_images += 1 if isinstance(block, Image) else len(block.items) if isinstance(block, Images) else 0
        body.append("</section>")
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body.append(
        f"<footer>Generated by trcgl.pipeline.html at {_esc(generated)}. "
        "Self-contained: no external resources, no scripts.</footer>"
    )
    log.debug("rendered report %r: %d sections, %d tables, %d images", title, len(sections), n_tables, n_images)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_esc(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )


def _git_sha(cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


def versions(cwd: str | Path | None = None) -> dict[str, str | None]:
    """Versions of Python, the key packages and the code, for the report's environment section.

    Package versions come from installed distribution metadata (nothing is imported); a package that is not
    installed reads ``"absent"``.

    Args:
        cwd: Directory whose git working tree's ``HEAD`` is recorded; defaults to this package's directory.

    Returns:
        ``{"python": ..., "ray": ..., ..., "optuna": ..., "git_sha": sha or None}``; ``git_sha`` is None when git
        is missing or the directory is not in a repository.
    """
    result: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            result[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            result[name] = "absent"
    result["git_sha"] = _git_sha(Path(cwd) if cwd is not None else Path(__file__).resolve().parent)
    return result
