"""Render and prepare survive a SIGKILL at any point: the job commands are killed mid-way, run again, and finish the
rest with every image and every row present exactly once.

The two kills are the two ways a job dies: the render with the local Ray it started (the job process and every Ray
process under it, as on a laptop), the prepare as one more driver on a running Ray (the session's, as under
``ray job submit``: Ray ends the dead driver's tasks). The reruns run on the session's Ray too, which saves three local
Ray starts; starting one is covered by tests/test_jobs.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psutil
import pytest

from trcgl.config import load_config
from trcgl.data.images import decode_xray, encode_png16
from trcgl.data.prepare import plan_prepare, resolve_inputs
from trcgl.data.synth import source
from trcgl.data.synth.render import render_image
from trcgl.storage import Storage, source_dir
from trcgl_dev.faults.driver_kill import job_env

# In a two-lane run (tests/conftest.py, two_lanes) this file runs in the tiny lane, though it uses no tiny fixture:
# the other lane is the longer, and for its last minute or two it ran alone, with a core often idle (BENCHMARKS.md,
# "Test suite").
pytestmark = [pytest.mark.slow, pytest.mark.lane("tiny")]
ROOT = Path(__file__).resolve().parent.parent
# 120 rows of 64 px in tasks of 6 and shards of 8 rows: 20 render tasks and 15 shards, enough that a kill lands in the
# middle of each stage
SETTINGS = ["synth.rows=120", "synth.batch_size=6", "data.shard_rows=8"]


def _command(module: str, root: Path) -> list[str]:
    return [sys.executable, "-m", module, "--config", "tiny", "--set", f"storage.root={root}", *SETTINGS,
            "--log-level", "WARNING", "--format", "json"]  # fmt: skip


def _own_ray() -> dict[str, str]:
    """A job environment without ``RAY_ADDRESS``: the job starts its own local Ray."""
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def _kill_when(
    cmd: list[str], count: Callable[[], int], at_least: int, env: dict[str, str], timeout_s: float = 240.0
) -> int:
    """Runs ``cmd`` with ``env``; once ``count()`` reaches ``at_least``, SIGKILLs it and every process under it (its
    own Ray, when it started one).

    Returns:
        ``count()`` after the kill (what a rerun finds).
    """
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while count() < at_least:
        if proc.poll() is not None:
            pytest.fail(f"{cmd[2]} ended (rc {proc.returncode}) before the kill: {proc.stderr.read()[-2000:]!r}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{cmd[2]} made {count()} of {at_least} files in {timeout_s} s")
        time.sleep(0.02)
    tree = psutil.Process(proc.pid).children(recursive=True)  # with its own Ray: raylet, GCS, workers
    os.kill(proc.pid, signal.SIGKILL)
    for child in tree:
        try:
            child.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(tree, timeout=10)
    proc.stderr.close()
    return count()


def _run(cmd: list[str]) -> dict:
    """Runs ``cmd`` to the end as a driver on the session's Ray; its JSON summary."""
    out = subprocess.run(cmd, cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_render_then_prepare_resume_after_sigkill(ray_local: None, tmp_path: Path) -> None:
    cfg = load_config("tiny", [f"storage.root={tmp_path}", *SETTINGS])
    storage = Storage(str(tmp_path))
    name = source.source_name(cfg)
    images = tmp_path / source_dir(name) / "images"
    plan = source.render_plan(source.select_subset(cfg, source.read_full_csv()))
    ids = zip(plan.image_dir, plan.image_id, strict=True)
    expected = {source.image_rel(name, cfg.synth.layout, d, i) for d, i in ids}

    def pngs() -> int:
        return sum(1 for p in images.rglob("*.png") if ".tmp-" not in p.name) if images.exists() else 0

    # render: killed with its own Ray after a quarter of the images, then run to the end
    killed_at = _kill_when(_command("jobs.synthesize_padchest", tmp_path), pngs, len(plan) // 4, _own_ray())
    assert 0 < killed_at < len(plan), "the kill landed while images were being rendered"
    assert storage.manifest(source_dir(name)) is None
    report = _run(_command("jobs.synthesize_padchest", tmp_path))
    assert report["rows"] == len(plan)
    assert report["already_present"] >= killed_at and report["rendered"] == len(plan) - report["already_present"]
    files = [f for f in storage.list_files(f"{source_dir(name)}/images") if ".tmp-" not in f]
    assert sorted(files) == sorted(expected), "every planned image exists once, and nothing else"
    manifest = storage.manifest(source_dir(name))
    assert not any(".tmp-" in f for f in manifest["files"]), "a killed write's temp file is never published"
    bits = dict(zip(plan.image_id, plan.bits_stored, strict=True))
    for rel in files:
        decode_xray(storage.read_bytes(rel), int(bits[rel.rsplit("/", 1)[1]]))  # every file decodes whole
    # byte-identical to an uninterrupted render, for rows rendered before and after the kill
    for r in plan.iloc[:: max(1, len(plan) // 6)].itertuples():
        pixels = render_image(
            image_id=r.image_id,
            classes=json.loads(r.classes),
            localizations=json.loads(r.localizations),
            projection=r.projection,
            bits_stored=int(r.bits_stored),
            size=cfg.synth.size,
            dataset_seed=cfg.synth.seed,
        )
        rel = source.image_rel(name, cfg.synth.layout, r.image_dir, r.image_id)
        assert storage.read_bytes(rel) == encode_png16(pixels), rel

    # prepare: a driver on the session's Ray, killed after a few shards, then run to the end
    prep = plan_prepare(cfg, *resolve_inputs(cfg, storage))
    folder = tmp_path / "datasets" / prep.name

    def parts() -> int:
        return len(list(folder.glob("part-*.parquet"))) if folder.exists() else 0

    parts_at_kill = _kill_when(_command("jobs.prepare", tmp_path), parts, 3, job_env())
    assert 0 < parts_at_kill < prep.num_shards, "the kill landed while shards were being written"
    summary = _run(_command("jobs.prepare", tmp_path))
    assert summary["dataset"] == prep.name and summary["skipped_shards"] >= parts_at_kill
    rows = pd.read_parquet(folder, columns=["image_id"])
    assert rows["image_id"].is_unique, "no row written twice"
    assert set(rows["image_id"]) == set(prep.rows["image_id"]) and summary["rows_written"] == len(prep.rows)
