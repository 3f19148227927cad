"""A token-auth Ray head for tests and fault scenarios, and the ``ray`` command helpers they share.

:func:`token_head` starts ``ray start --head --block`` with ``RAY_AUTH_MODE=token`` on free loopback ports, with a
token file, a Ray temp dir and (by default) a HOME of its own, in a process group of its own, and stops it by pid and
process group on exit. Nothing here runs ``ray stop``: that stops every Ray on the host, other engineers' and other
tests' included.

Every port is picked free (:func:`trcgl.ray_runtime.free_port`) rather than left to Ray's defaults, because another
Ray on the host (a test session's local Ray and its job agent) may already hold those.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trcgl.ray_runtime import free_port

log = logging.getLogger(__name__)

# Variables that would point a child process at another Ray or at another token.
_RAY_POINTERS = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


def ray_cli() -> list[str]:
    """The ``ray`` command of this interpreter's Ray.

    The console script beside ``sys.executable`` when it exists, else Ray's CLI entry point run by this interpreter:
    a ``ray`` found first on ``PATH`` may belong to another environment and another Ray version.
    """
    beside = Path(sys.executable).parent / "ray"
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]


def clean_env() -> dict[str, str]:
    """This process's environment without ``RAY_ADDRESS`` and the ``RAY_AUTH_*`` variables.

    A child started with it neither joins the Ray this process may be connected to nor authenticates with a token
    it was not given on purpose.
    """
    return {k: v for k, v in os.environ.items() if k not in _RAY_POINTERS}


def http_get(url: str, token: str | None = None, timeout: float = 10.0) -> tuple[int, str]:
    """A GET with a bearer token when given.

    Returns:
        (HTTP status, body); a connection error gives status 0 and the error text as the body, so a caller can
        poll an endpoint that is not up yet.
    """
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, urllib.error.URLError) as exc:
        return 0, str(exc)


def stop_group(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Stops a ``ray start --block`` process and everything in its process group.

    SIGTERM first: with ``--block`` the head then stops the processes it started. Whatever of the group is still
    there after ``timeout_s`` gets SIGKILL. The head is reaped here, because a zombie group leader keeps
    ``killpg(pgid, 0)`` succeeding and the group would look alive.
    """
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            break
        time.sleep(0.3)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
        log.warning("killed what was left of the head's process group %d after %.0f s", proc.pid, timeout_s)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.error("the head (pid %d) survived SIGKILL", proc.pid)


@dataclass
class TokenHead:
    """A running token-auth head started by :func:`token_head`.

    Attributes:
        address: the dashboard URL (``ray job submit --address``, the Jobs REST API).
        pid: the ``ray start --head --block`` process, leader of the head's process group.
        temp_dir: Ray's ``--temp-dir`` (session logs of the head and of every job).
        token_path: the token file (0600) the head and its authorised clients use.
        home: the HOME of the head and of its clients when :func:`token_head` gave it one of its own (so ``~/.ray``
            is never the user's); None when they keep the caller's HOME.
        log_path: the head's stdout and stderr.
        env: the head's environment; it names the token file, so it is also what an authorised client runs with.
    """

    address: str
    pid: int
    temp_dir: Path
    token_path: Path
    home: Path | None
    log_path: Path
    env: dict[str, str]

    def token(self) -> str:
        """The token the head accepts."""
        return self.token_path.read_text().strip()


@contextmanager
def token_head(
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    num_cpus: int = 2,
    num_gpus: int | None = 0,
    own_home: bool = True,
    timeout_s: float = 120.0,
    keep_temp_dir: bool = False,
) -> Iterator[TokenHead]:
    """Starts a token-auth head, yields it once its Jobs API answers with the token, stops it on exit.

    Args:
        workdir: where the token, the head's log and (``own_home``) its HOME go.
        extra_env: more environment for the head (and so for every job it runs).
        num_cpus: CPUs the head advertises.
        num_gpus: GPUs the head advertises; None lets Ray detect them.
        own_home: give the head and its clients a HOME under ``workdir``, so nothing they write under ``~`` mixes
            with the user's (a scan of the head's HOME then sees only the head's files); False keeps the caller's
            HOME and with it the caches a job may use.
        timeout_s: how long to wait until the Jobs API answers.
        keep_temp_dir: leave Ray's temp dir (session logs) in place after the stop, for the caller to scan and
            remove; otherwise it is removed.

    Yields:
        The running head.

    Raises:
        RuntimeError: the head exited or its Jobs API did not answer within ``timeout_s``.
    """
    # lazy: local_cluster imports ray_cli from here at module level
    from trcgl_dev.local_cluster import ensure_token

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    home: Path | None = None
    if own_home:
        home = workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
    token = ensure_token(workdir / "auth_token")
    # AF_UNIX socket paths are limited to 107 bytes and Ray puts its sockets under the temp dir: keep it short
    temp_dir = Path(tempfile.mkdtemp(prefix="trcgl-th-", dir="/tmp"))
    dash = free_port()
    env = {
        **clean_env(),
        **({"HOME": str(home)} if home else {}),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_DISABLE_USAGE_STATS": "1",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM stops it at once rather than draining for 30 s
        **(extra_env or {}),
    }
    cmd = [
        *ray_cli(), "start", "--head", "--block", f"--port={free_port()}", f"--num-cpus={num_cpus}",
        *([] if num_gpus is None else [f"--num-gpus={num_gpus}"]),
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        "--disable-usage-stats", f"--temp-dir={temp_dir}",
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
    ]  # fmt: skip
    log_path = workdir / "head.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    head = TokenHead(f"http://127.0.0.1:{dash}", proc.pid, temp_dir, token, home, log_path, env)
    try:
        deadline = time.monotonic() + timeout_s
        while http_get(f"{head.address}/api/jobs/", head.token())[0] != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"the token head exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the token head did not answer within {timeout_s:.0f} s")
            time.sleep(0.5)
        log.info("token head up at %s (pid %d)", head.address, proc.pid)
        yield head
    finally:
        stopping = time.monotonic()
        stop_group(proc)
        log.info("token head stopped in %.1f s", time.monotonic() - stopping)
        if not keep_temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
