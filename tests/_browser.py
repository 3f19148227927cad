"""A real headless Chromium for tests, driven over the DevTools protocol on a pipe.

``--remote-debugging-pipe``: JSON messages separated by NUL bytes on file descriptors 3 and 4, so no websocket
library and no port. :func:`find_browser` returns None when no binary is installed (Debian: ``apt-get install
chromium``; or point ``$TRCGL_CHROMIUM`` at one); :func:`browser_or_skip` then skips with :func:`skip_reason`, or
fails under ``CI=true``.
"""

from __future__ import annotations

import base64
import fcntl
import glob
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

BROWSER_NAMES = (
    "chromium",
    "chromium-browser",
    "chromium-headless-shell",
    "headless_shell",
    "google-chrome",
    "google-chrome-stable",
    "chrome",
)
BROWSER_PATHS = (
    "/usr/lib/chromium/chromium",
    "/usr/lib/chromium/headless_shell",
    "/usr/lib/chromium/chromium-headless-shell",
    "/opt/google/chrome/chrome",
    "~/.cache/ms-playwright/chromium_headless_shell-*/chrome-linux*/headless_shell",
    "~/.cache/ms-playwright/chromium-*/chrome-linux*/chrome",
)


def find_browser() -> str | None:
    env = os.environ.get("TRCGL_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in BROWSER_NAMES:
        path = shutil.which(name)
        if path:
            return path
    for pattern in BROWSER_PATHS:
        for path in sorted(glob.glob(os.path.expanduser(pattern))):
            if os.access(path, os.X_OK):
                return path
    return None


class Chromium:
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
INSPECT_JS = r"""
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


def browser_or_skip() -> str:
    """The Chromium binary; without one, the test skips saying where it looked, or fails under ``CI=true`` (where
    ``.ci/run`` installs it, so a missing browser is a broken CI, not a reason to skip)."""
    import pytest

    binary = find_browser()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but " + skip_reason())
        pytest.skip(skip_reason())
    return binary


def skip_reason() -> str:
    """Why a browser test skips: every place that was looked at."""
    return (
        "no Chromium binary found: looked at $TRCGL_CHROMIUM, PATH names "
        + ", ".join(BROWSER_NAMES)
        + " and "
        + ", ".join(BROWSER_PATHS)
        + " (install with `apt-get install chromium`)"
    )


def inspect_page(binary: str, page: Path, profile: Path) -> tuple[dict[str, Any], bytes]:
    """Opens ``page`` in headless Chromium; returns what :data:`INSPECT_JS` saw and a PNG screenshot."""
    browser = Chromium(binary, profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.send("Page.enable", session=session)
        nav = browser.send("Page.navigate", {"url": page.as_uri()}, session=session)
        if "errorText" in nav:
            raise RuntimeError(f"chromium could not open {page}: {nav}")
        browser.wait_event("Page.loadEventFired", session)
        result = browser.send(
            "Runtime.evaluate", {"expression": INSPECT_JS, "awaitPromise": True, "returnByValue": True}, session
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result}")
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
        return json.loads(result["result"]["value"]), base64.b64decode(shot["data"])
    finally:
        browser.close()
