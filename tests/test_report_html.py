"""The self-contained HTML report: escaping, PNG checks, data-URI embedding, and a real headless Chromium render.

The browser test drives Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages
separated by NUL bytes on file descriptors 3 and 4), so it needs no websocket library and opens no port. It skips
only when no Chromium binary is found (Debian: ``apt-get install chromium``; or point ``$TRCGL_CHROMIUM`` at one).
"""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _browser import browser_or_skip, inspect_page
from PIL import Image as PILImage

from trcgl.pipeline.html import PNG_SIGNATURE, Code, Image, Images, Section, Table, Text, render, versions

# ---------------------------------------------------------------------------------------------------------------
# fixtures: real PNGs


def _pil_png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    """A solid-colour PNG with a differently coloured top-left 4x4 block (so a pixel check means something)."""
    img = PILImage.new("RGB", size, colour)
    img.paste((0, 0, 255), (0, 0, 4, 4))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _matplotlib_png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2), dpi=80)
    ax.plot([0, 1, 2], [0, 1, 0.5], label="AUROC")
    ax.legend()
    try:
        return Image.from_figure(fig).png
    finally:
        plt.close(fig)


def _metrics_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {"auroc": [0.91234, 0.5, np.nan], "support": [12, 7, 0]},
        index=pd.Index(["pneumonia", "effusion", "nodule"], name="label"),
    )


def _config_frame() -> pd.DataFrame:
    return pd.DataFrame({"key": ["lr", "epochs"], "value": ["0.001", "3"]})


# ---------------------------------------------------------------------------------------------------------------
# unit tests


class _TableCounter(HTMLParser):
    """Counts rows in each table's tbody and collects img src attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.body_rows: list[int] = []
        self.head_rows: list[int] = []
        self.img_srcs: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.body_rows.append(0)
            self.head_rows.append(0)
        elif tag in ("thead", "tbody"):
            self._in = tag
        elif tag == "tr" and self._in == "tbody":
            self.body_rows[-1] += 1
        elif tag == "tr" and self._in == "thead":
            self.head_rows[-1] += 1
        elif tag == "img":
            self.img_srcs.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("thead", "tbody"):
            self._in = None


def test_text_and_table_cells_are_escaped():
    evil = "<script>alert('x')</script>"
    frame = pd.DataFrame({"name": [evil], evil: [1.0]})
    blocks = [Text(evil), Code(evil), Table(frame, caption=evil), Image(_pil_png((8, 8), (255, 0, 0)), evil)]
    doc = render(evil, [Section(evil, blocks)], subtitle=evil)
    assert "<script" not in doc.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in doc
    assert "<table class=" in doc and "<thead>" in doc and "<tbody>" in doc


def test_non_png_is_rejected_naming_the_caption():
    jpeg_ish = b"\xff\xd8\xff\xe0" + b"\x00" * 32
    with pytest.raises(ValueError, match="roc-curve"):
        render("r", [Section("s", [Image(jpeg_ish, caption="roc-curve")])])
    with pytest.raises(ValueError, match="in-a-grid"):
        render("r", [Section("s", [Images([Image(_pil_png((4, 4), (0, 0, 0)), "ok"), Image(b"", "in-a-grid")])])])


def test_images_are_data_uris_and_nothing_is_external():
    pngs = [_pil_png((10, 6), (255, 0, 0)), _pil_png((5, 5), (0, 255, 0)), _matplotlib_png()]
    doc = render(
        "run",
        [
            Section("one", [Image(pngs[0], "a", width=100)]),
            Section("grid", [Images([Image(pngs[1], "b"), Image(pngs[2], "c")])]),
        ],
    )
    parser = _TableCounter()
    parser.feed(doc)
    assert len(parser.img_srcs) == 3
    for src, png in zip(parser.img_srcs, pngs, strict=True):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == png
    assert 'src="http' not in doc
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", doc)
    assert "<link" not in doc and "<script" not in doc and "@import" not in doc and "url(" not in doc


def test_tables_have_right_rows_toc_and_formatting():
    metrics = _metrics_frame()
    big = pd.DataFrame({"x": range(25)})
    doc = render(
        "run",
        [Section("Metrics", [Table(metrics, caption="per class")]), Section("Metrics", [Table(big)])],
        subtitle="sub",
    )
    parser = _TableCounter()
    parser.feed(doc)
    assert parser.body_rows == [3, 25]
    assert parser.head_rows == [1, 1]
    assert "0.912" in doc and "0.91234" not in doc and "NaN" in doc
    assert '<th scope="row">pneumonia</th>' in doc  # a named index is shown
    # two sections with the same title get distinct anchors, both linked from the table of contents
    anchors = re.findall(r'<section class="report-section" id="([^"]+)"', doc)
    assert len(anchors) == 2 and len(set(anchors)) == 2
    for anchor in anchors:
        assert f'href="#{anchor}"' in doc
    assert "<footer>" in doc and "Generated by" in doc


def test_versions_reports_packages_and_git(tmp_path: Path):
    v = versions()
    for key in ("python", "ray", "torch", "torchvision", "timm", "diffusers", "transformers", "torch_geometric"):
        assert key in v
    assert "pyarrow" in v and "optuna" in v and "git_sha" in v
    assert all(isinstance(v[k], str) and v[k] for k in v if k != "git_sha")
    assert v["git_sha"] is None or re.fullmatch(r"[0-9a-f]{40,64}", v["git_sha"])
    assert versions(cwd=tmp_path)["git_sha"] is None  # outside a repository: None, no exception


def test_png_signature_constant():
    assert _pil_png((2, 2), (1, 2, 3)).startswith(PNG_SIGNATURE)


def test_report_renders_in_headless_chromium(tmp_path: Path):
    binary = browser_or_skip()
    red = _pil_png((40, 24), (255, 0, 0))
    plot = _matplotlib_png()
    plot_size = PILImage.open(io.BytesIO(plot)).size
    metrics = _metrics_frame()
    config = _config_frame()
    doc = render(
        "Run <r1>",
        [
            Section("Metrics", [Table(metrics, caption="Per-class AUROC"), Text("AUROC per label & support.")]),
            Section("Config", [Table(config, caption="Resolved config"), Code("model:\n  name: trcgl\n")]),
            Section("Figures", [Image(red, "solid red", width=120), Images([Image(plot, "matplotlib curve")])]),
        ],
        subtitle="browser test",
    )
    report = tmp_path / "report.html"
    report.write_text(doc, encoding="utf-8")

    page, png = inspect_page(binary, report, tmp_path / "profile")
    assert png.startswith(PNG_SIGNATURE)
    (tmp_path / "screenshot.png").write_bytes(png)  # kept in pytest's tmp dir for a person to look at

    assert page["url"] == report.as_uri()
    assert page["title"] == "Run <r1>"
    assert page["resources"] == []  # nothing fetched besides the document itself
    assert len(page["toc"]) == 3

    tables = page["tables"]
    assert [t["caption"] for t in tables] == ["Per-class AUROC", "Resolved config"]
    assert all(t["cls"] == "report-table" and t["height"] > 0 for t in tables)
    assert tables[0]["head"] == ["label", "auroc", "support"]
    assert tables[0]["rows"] == [["pneumonia", "0.912", "12"], ["effusion", "0.500", "7"], ["nodule", "NaN", "0"]]
    assert tables[1]["head"] == ["key", "value"]
    assert tables[1]["rows"] == [["lr", "0.001"], ["epochs", "3"]]

    images = page["images"]
    assert [i["alt"] for i in images] == ["solid red", "matplotlib curve"]
    for img in images:
        assert img["complete"] and img["naturalWidth"] > 0 and img["naturalHeight"] > 0, img
        assert img["shownWidth"] > 0, img
    assert (images[0]["naturalWidth"], images[0]["naturalHeight"]) == (40, 24)
    assert images[0]["shownWidth"] == 120
    assert (images[1]["naturalWidth"], images[1]["naturalHeight"]) == plot_size
    assert images[0]["pixel"] == [0, 0, 255, 255]  # the decoded pixels are the PNG's own
