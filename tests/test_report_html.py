"""The self-contained HTML report: escaping, PNG checks, data-URI embedding, and a real headless Chromium render.

The browser test drives Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages
separated by NUL bytes on file descriptors 3 and 4), so it needs no websocket library and opens no port. It skips
only when no Chromium binary is found (Debian: ``apt-get install chromium``; or point ``$TRCGL_CHROMIUM`` at one).
"""

from __future__ import annotations

import base64
import fcntl
import glob
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image as PILImage

from trcgl.report_html import PNG_SIGNATURE, Code, Image, Images, Section, Table, Text, render, versions

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


# ---------------------------------------------------------------------------------------------------------------
# the real headless browser

_BROWSER_NAMES = (
    "chromium",
    "chromium-browser",
    "chromium-headless-shell",
    "headless_shell",
    "google-chrome",
    "google-chrome-stable",
    "chrome",
)
_BROWSER_PATHS = (
    "/usr/lib/chromium/chromium",
    "/usr/lib/chromium/headless_shell",
    "/usr/lib/chromium/chromium-headless-shell",
    "/opt/google/chrome/chrome",
    "~/.cache/ms-playwright/chromium_headless_shell-*/chrome-linux*/headless_shell",
    "~/.cache/ms-playwright/chromium-*/chrome-linux*/chrome",
)


def _find_browser() -> str | None:
    env = os.environ.get("TRCGL_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in _BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    for pattern in _BROWSER_PATHS:
        for path in sorted(glob.glob(os.path.expanduser(pattern))):
            if os.access(path, os.X_OK):
                return path
    return None


class _Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3: our commands, fd 4: its replies)."""

    def __init__(self, binary: str, profile: Path, timeout: float = 30.0) -> None:
        self._deadline = time.monotonic() + timeout
        self._next_id = 0
        self._buf = b""
        self.events: list[dict[str, Any]] = []
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()

        def _child_fds() -> None:  # in the child: its ends of the pipes become fds 3 and 4
            a = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(res_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--mute-audio",
            "--hide-scrollbars",
            "--window-size=1280,1600",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            pass_fds=(3, 4),
            preexec_fn=_child_fds,  # runs only fcntl/dup2 in the child
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(res_w)
        self._w = cmd_w
        self._r = res_r

    def _read_message(self) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium over the DevTools pipe")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise EOFError(f"chromium closed the DevTools pipe (exit code {self.proc.poll()})")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str) -> dict[str, Any]:
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method and event.get("sessionId") == session:
                    return self.events.pop(i)
            self.events.append(self._read_message())

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self._deadline = time.monotonic() + 5
                self.send("Browser.close")
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        finally:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            os.close(self._w)
            os.close(self._r)


# Runs in the page after load: the tables as text, and for each <img> whether it decoded and one pixel's colour.
_INSPECT_JS = r"""
(async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map((i) => i.decode().catch(() => null)));
  const pixel = (img) => {
    if (!img.naturalWidth) return null;
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    return [...ctx.getImageData(0, 0, 1, 1).data];
  };
  return JSON.stringify({
    title: document.title,
    url: location.href,
    tables: [...document.querySelectorAll('table')].map((t) => ({
      cls: t.className,
      caption: t.caption ? t.caption.textContent : '',
      head: [...t.tHead.rows[0].cells].map((c) => c.textContent),
      rows: [...t.tBodies[0].rows].map((r) => [...r.cells].map((c) => c.textContent)),
      height: t.getBoundingClientRect().height,
    })),
    images: imgs.map((i) => ({
      complete: i.complete, naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
      shownWidth: i.width, alt: i.alt, pixel: pixel(i),
    })),
    resources: performance.getEntriesByType('resource').map((e) => e.name),
    toc: [...document.querySelectorAll('nav.toc a')].map((a) => a.getAttribute('href')),
  });
})()
"""


def test_report_renders_in_headless_chromium(tmp_path: Path):
    binary = _find_browser()
    if binary is None:
        pytest.skip(
            "no Chromium binary found: looked at $TRCGL_CHROMIUM, PATH names "
            + ", ".join(_BROWSER_NAMES)
            + " and "
            + ", ".join(_BROWSER_PATHS)
            + " (install with `apt-get install chromium`)"
        )
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

    browser = _Chromium(binary, tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.send("Page.enable", session=session)
        nav = browser.send("Page.navigate", {"url": report.as_uri()}, session=session)
        assert "errorText" not in nav, nav
        browser.wait_event("Page.loadEventFired", session)
        result = browser.send(
            "Runtime.evaluate", {"expression": _INSPECT_JS, "awaitPromise": True, "returnByValue": True}, session
        )
        assert "exceptionDetails" not in result, result
        page = json.loads(result["result"]["value"])
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
        png = base64.b64decode(shot["data"])
        assert png.startswith(PNG_SIGNATURE)
        (tmp_path / "screenshot.png").write_bytes(png)  # kept in pytest's tmp dir for a person to look at
    finally:
        browser.close()

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
