"""A moto S3 server on loopback and the fake credentials it takes, shared by the tests' S3 fixture and the fault
benchmark.

moto accepts any key, so the credentials here are placeholders; setting them keeps real credentials from ever being
sent to the loopback server and lets a run against it work on a machine that has none.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port; yields its endpoint URL once it answers.

    The server is stopped by its own pid on exit (SIGTERM, then SIGKILL after 10 s).

    Raises:
        RuntimeError: the server exited or did not answer within 30 s.
    """
    # lazy: trcgl.ray_runtime imports ray, and tests/conftest.py imports this module before it sets Ray's environment
    from trcgl.ray_runtime import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto server did not start on {url}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


# The loopback server accepts any key; tests/conftest.py sets these before Ray starts. Random per process, so a scan
# for a leaked secret looks for this run's value, never a literal that could occur by chance.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": f"trcgl-test-key-{secrets.token_hex(4)}",
    "AWS_SECRET_ACCESS_KEY": f"trcgl-test-secret-{secrets.token_hex(12)}",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def fake_credentials() -> Iterator[None]:
    """:data:`FAKE_CREDENTIALS` in this process's environment; the previous values are restored on exit.

    Enter it before Ray starts: Ray's workers inherit the environment of the process that starts Ray, so they talk to
    the loopback server with these too.
    """
    before = {k: os.environ.get(k) for k in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
