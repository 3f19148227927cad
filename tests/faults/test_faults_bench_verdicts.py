"""``python -m jobs.benchmark faults``: its lines' verdicts and its exit status (no scenario is run here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trcgl_dev.benchmarks import ray_faults_bench
from trcgl_dev.faults.storage_outage import LONG_OUTAGE, SHORT_OUTAGES, OutageResult

pytestmark = pytest.mark.faults


def _outage(op: str, outage_s: float, **changes: object) -> OutageResult:
    short = outage_s in SHORT_OUTAGES
    fields = dict(
        op=op, client="s3fs", outage_s=outage_s, retries=10, connect_timeout_s=5.0, survived=short,
        seconds=outage_s + 1, error=None if short else "StorageError: ... 127.0.0.1:9", loud=not short,
        error_names_endpoint=not short, endpoint_back_before_error=not short, partial_published=False,
        later_stage_sees=("complete" if short else "unfinished") if op == "folder" else None,
        connections_forwarded=1, connections_reset=0,
    )  # fmt: skip
    return OutageResult(**{**fields, **changes})


def test_verdict_names_the_failed_checks() -> None:
    assert ray_faults_bench._verdict({"a": True, "b": True}) == "ok"
    assert ray_faults_bench._verdict({"a": False, "b": True, "c": False}) == "FAILED (a, c)"


def test_outage_verdicts() -> None:
    checks = ray_faults_bench._outage_checks
    assert all(checks(_outage("folder", 8.0)).values())
    assert all(checks(_outage(*LONG_OUTAGE)).values())
    assert not all(checks(_outage("folder", 8.0, later_stage_sees="unfinished")).values())
    assert not all(checks(_outage("write", 2.0, partial_published=True)).values())
    assert not all(checks(_outage("write", 30.0, survived=True, error=None, loud=False)).values())  # not ridden out


@pytest.mark.parametrize(("failed_lines", "status"), [(0, 0), (2, 1)])
def test_faults_command_exits_non_zero_when_a_line_failed(
    failed_lines: int, status: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from jobs.benchmark import main

    ran: list[set[str]] = []

    def fake_run_scenarios(workdir: Path, only: set[str]) -> int:
        ran.append(only)
        return failed_lines

    monkeypatch.setattr(ray_faults_bench, "run_scenarios", fake_run_scenarios)
    assert main(["faults", "--workdir", str(tmp_path), "--only", "bad-config"]) == status
    assert ran == [{"bad-config"}]
