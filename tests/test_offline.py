"""Nothing downloads weights or data at run time unless a user's config names them: real jobs run with outbound
network blocked.

A blocked process's environment puts ``tests/_offline`` first on ``PYTHONPATH``: its ``sitecustomize.py`` makes
every ``connect`` to another machine raise (see that module), in the driver and, because Ray's processes inherit the
environment of the process that starts Ray, in every Ray worker too. ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` /
``HF_DATASETS_OFFLINE`` are set as well, so a hub lookup fails in the libraries' own offline mode before it reaches
the network. The job checked is the end-to-end pipeline job (tests/conftest.py ``pipeline_on_token_head``: its
token-auth head runs with the blocker, so the job's driver and workers do): it prepares, trains the diffusion model
(diffusers UNet, transformers text encoder), generates, sweeps and trains classifiers (timm backbone, torch-geometric
GCN, class attention). A future default that names a hub id or fetches a data set then fails the job, or at the
latest this test's check that its driver and Ray workers had no connection refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import OFFLINE_BLOCKER, offline_additions

MESSAGE = "network blocked by tests/test_offline.py"


def offline_env(log: Path) -> dict[str, str]:
    """This process's environment with :func:`conftest.offline_additions` and no ``RAY_ADDRESS``."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | offline_additions(log)


def read_events(log: Path) -> list[dict]:
    """The blocker's JSON lines (none when no process wrote any)."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


PROBE = textwrap.dedent(
    """
    import json, socket, sys, threading, time

    out = {"module": getattr(sys.modules.get("sitecustomize"), "__file__", None)}

    def refused(call):
        t0 = time.perf_counter()
        try:
            call()
        except OSError as exc:
            return [str(exc), time.perf_counter() - t0]
        return [None, time.perf_counter() - t0]

    def plain():
        with socket.socket() as s:
            s.settimeout(10)
            s.connect(("93.184.216.34", 80))

    def plain_ex():
        with socket.socket() as s:
            s.settimeout(10)
            s.connect_ex(("93.184.216.34", 443))

    out["connect"] = refused(plain)
    out["connect_ex"] = refused(plain_ex)
    out["create_connection"] = refused(lambda: socket.create_connection(("example.com", 443), timeout=10))
    out["ipv6"] = refused(lambda: socket.create_connection(("2606:2800:220:1::1", 80), timeout=10))

    # loopback still works: a server on 127.0.0.1 answers by address and by name
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(2)
    port = srv.getsockname()[1]
    threading.Thread(target=lambda: [srv.accept()[0].sendall(b"hi") for _ in range(2)], daemon=True).start()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        out["loopback"] = c.recv(2).decode()
    with socket.create_connection(("localhost", port), timeout=10) as c:
        out["localhost"] = c.recv(2).decode()
    a, b = socket.socketpair()
    a.sendall(b"ux")
    out["unix"] = b.recv(2).decode()
    print(json.dumps(out))
    """
)


def test_blocker_refuses_outside_addresses_at_once_and_keeps_loopback(tmp_path: Path) -> None:
    """The blocker itself, in a fresh interpreter started like the jobs below: outside addresses (by IPv4, IPv6 and
    name; connect, connect_ex and create_connection) fail at once with its message, loopback and unix sockets work."""
    log = tmp_path / "offline.jsonl"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], env=offline_env(log), cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["module"] == str(OFFLINE_BLOCKER / "sitecustomize.py"), out  # ours, not another sitecustomize
    for call in ("connect", "connect_ex", "create_connection", "ipv6"):
        error, seconds = out[call]
        assert error is not None and error.startswith(MESSAGE), (call, error)
        assert seconds < 1.0, (call, seconds)  # refused before any packet or DNS lookup, not timed out
    assert "example.com" in out["create_connection"][0]
    assert (out["loopback"], out["localhost"], out["unix"]) == ("hi", "hi", "ux")
    events = read_events(log)
    assert [e["event"] for e in events] == ["installed"] + ["blocked"] * 4, events


@pytest.mark.slow
def test_pipeline_job_runs_with_the_network_blocked(pipeline_on_token_head: dict) -> None:
    """The end-to-end pipeline job ran with outbound network blocked in its driver and every Ray worker: it
    finished, and neither its driver nor a Ray worker tried to reach another machine."""
    job = pipeline_on_token_head["security"].job
    events = read_events(pipeline_on_token_head["offline_log"])
    blocked = [e for e in events if e["event"] == "blocked"]
    assert job.succeeded, f"{blocked}\n{job.log_tail}"
    # the blocker was live where the models were built and trained: the job's driver and Ray's Python workers
    installed = [e["cmdline"] for e in events if e["event"] == "installed"]
    assert any("-m jobs.pipeline" in c for c in installed), installed
    assert any("default_worker.py" in c for c in installed), installed
    # a refused connection the caller swallowed (a fallback after a failed download, a call home) fails too, where
    # the job's code runs: the driver and Ray's workers. Ray's own system processes are left out: its dashboard
    # probes the cloud metadata address (169.254.169.254) at start-up even with usage stats off, refused or not
    ours = [e for e in blocked if "-m jobs.pipeline" in e["cmdline"] or "default_worker.py" in e["cmdline"]]
    assert ours == [], ours
