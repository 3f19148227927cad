"""The storage outage, security, cluster-file and bad configuration scenarios, with real parts only.

S3 outages go through a switchable loopback TCP proxy in front of the session's moto server; the security scenario
runs a real token-auth Ray head and one real job with a fake AWS secret in the head's environment; bad configurations
go to the real entry points. The figures come from :mod:`trcgl_dev.faults.storage_outage`,
:mod:`trcgl_dev.faults.security`, :mod:`trcgl_dev.faults.cluster_files` and :mod:`trcgl_dev.faults.bad_config`,
which the fault benchmark calls too.
"""

from __future__ import annotations

import socket
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from trcgl_dev.faults import record_figures
from trcgl_dev.faults.bad_config import bad_configs
from trcgl_dev.faults.cluster_files import cluster_start_commands_without_token
from trcgl_dev.faults.proxy import TcpProxy
from trcgl_dev.faults.security import scan_for_secrets
from trcgl_dev.faults.storage_outage import LONG_OUTAGE, OPS, SHORT_OUTAGES, OutageResult

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def _wait(predicate: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ------------------------------------------------------------------------------------------------ the proxy


def test_proxy_cut_drops_open_connections_refuses_new_ones_and_restores(s3_endpoint: str) -> None:
    target = urlparse(s3_endpoint)
    with TcpProxy(target.hostname, target.port) as proxy:
        assert urllib.request.urlopen(proxy.url, timeout=5).status == 200
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        held.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # an unfinished request keeps the connection open
        assert _wait(lambda: proxy.accepted >= 2)
        proxy.cut()
        assert proxy.dropped >= 1 and proxy.is_cut  # the held connection (and any other still open)
        try:
            assert held.recv(1024) == b""
        except ConnectionResetError:
            pass
        held.close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        proxy.restore()
        assert urllib.request.urlopen(proxy.url, timeout=5).status == 200
        timer = proxy.outage(0.5)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        timer.join(timeout=5)
        assert not proxy.is_cut and urllib.request.urlopen(proxy.url, timeout=5).status == 200
    with pytest.raises(ConnectionRefusedError):  # closed: nothing listens any more
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2)


def test_proxy_reset_mode_accepts_then_resets(s3_endpoint: str) -> None:
    target = urlparse(s3_endpoint)
    with TcpProxy(target.hostname, target.port, mode="reset") as proxy:
        proxy.cut()
        try:  # the port still accepts (no ConnectionRefusedError), but resets before any answer: on loopback the
            # reset may even beat connect() returning
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as conn:
                conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert conn.recv(1024) == b""
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert _wait(lambda: proxy.rejected == 1)
        proxy.restore()
        assert urllib.request.urlopen(proxy.url, timeout=5).status == 200


# ------------------------------------------------------------------------------------------------ storage

# The outage cases (trcgl_dev.faults.storage_outage.OUTAGE_CASES): 2 s and 8 s for every op, 30 s once for the folder
# upload; all seven at once, each through its own proxy and prefix, started with the session (tests/conftest.py
# s3_outages, early_work).


@pytest.mark.parametrize("outage_s", SHORT_OUTAGES)
@pytest.mark.parametrize("op", OPS)
def test_short_outage_is_ridden_out_by_the_configured_retries(
    s3_outages: dict[tuple[str, float], OutageResult], op: str, outage_s: float
) -> None:
    r = s3_outages[(op, outage_s)]
    assert r.survived and r.error is None, r
    assert not r.partial_published, r
    # it did wait the outage out (nothing reached the endpoint while cut), and not much longer
    assert outage_s - 0.5 <= r.seconds < outage_s + 20, r
    if op == "folder":
        assert r.later_stage_sees == "complete", r


def test_long_outage_fails_loudly_naming_the_endpoint_and_publishes_nothing(
    s3_outages: dict[tuple[str, float], OutageResult],
) -> None:
    r = s3_outages[LONG_OUTAGE]
    assert not r.survived, r
    assert r.loud and r.error_names_endpoint, r.error  # a StorageError naming the proxy's host:port
    assert not r.partial_published and r.later_stage_sees == "unfinished", r
    assert r.seconds < 60, r  # bounded: retries give up, the job does not hang


# ------------------------------------------------------------------------------------------------ security


def test_secret_scanner_finds_what_it_is_given(tmp_path: Path) -> None:
    secret = f"fake-{uuid.uuid4().hex}"
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "leak.log").write_text(f"env: AWS_SECRET_ACCESS_KEY={secret}\n")
    (tmp_path / "a" / "clean.yaml").write_text("storage:\n  root: s3://bucket/trcgl\n")
    (tmp_path / "a" / "link").symlink_to(tmp_path / "a" / "b" / "leak.log")
    assert scan_for_secrets([tmp_path / "a", tmp_path / "missing"], [secret]) == [str(tmp_path / "a/b/leak.log")]
    assert scan_for_secrets([tmp_path], ["not-there"]) == []


def test_token_auth_refuses_and_no_secret_in_anything_a_job_leaves(pipeline_on_token_head: dict) -> None:
    # the end-to-end pipeline job (tests/conftest.py) runs on the token head with the secret in its environment
    r = record_figures("security", pipeline_on_token_head["security"])
    auth = r.token_auth
    assert (auth.http_no_token, auth.http_wrong_token, auth.http_with_token) == (401, 403, 200), auth
    for refusal in (auth.submit_no_token, auth.submit_wrong_token):
        assert refusal.refused and refusal.says_why, refusal
    assert auth.jobs_created == 0, auth  # nothing slipped in
    job = r.job
    assert job.succeeded, job.log_tail
    assert job.saved_configs, job  # the run's saved config.yaml files were among the scanned files
    # the job ran with the secret in its node's environment (read from /proc, which every Linux machine has)
    assert r.secret_in_node_env is True, r
    assert r.control_found, r  # the scan does find the secret where it is
    assert r.secret_found_in == [], r.secret_found_in


def test_every_ray_start_in_the_cluster_files_uses_token_auth() -> None:
    # The catch-all over every cluster/*.yaml; tests/test_cluster_files.py checks each file's auth set-up in depth.
    r = cluster_start_commands_without_token()
    assert r.ray_start_commands >= 2 and r.without_token == [], r


# ------------------------------------------------------------------------------------------------ config


def test_bad_configs_fail_before_any_work_naming_the_problem(s3_endpoint: str) -> None:
    cases = {c.case: c for c in record_figures("bad configs", bad_configs(s3_endpoint))}
    assert len(cases) == 9, sorted(cases)
    for name, c in cases.items():
        assert c.error_type is not None, f"{name}: nothing was raised"
        assert c.names_problem, c  # for the job CLI cases also: exit code, no Ray / no file written
        assert c.seconds < (120 if "job CLI" in name else 10), c
    assert cases["missing bucket"].error_type == "StorageError"
    assert cases["unwritable local root"].error_type == "StorageError"
