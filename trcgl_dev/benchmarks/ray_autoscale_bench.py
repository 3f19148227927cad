"""``python -m jobs.benchmark autoscale``: GPU autoscaling from zero and back, on one machine.

The scenario of ``tests/test_autoscaling.py``: the tiny PadChest-Synth is prepared and a tiny diffusion model
trained (each in its own local Ray, skipped when already in ``--workdir``); then the local autoscaling cluster
(``cluster/local-autoscaling.yaml``: a head with 0 CPUs, ``gpu_worker`` {CPU 1, GPU 1} x 0..2) is started and
``jobs.generate`` runs against it with one GPU per generator actor and ``generate.actors_max`` actors. The GPU
nodes are fake (no CUDA): the actors sample on the CPU, so the figures are about the autoscaler, not the sampling.

Printed (times from the job's start, node times from Ray's State API: raylet start and end of each node):

- time to first GPU node: the first ``gpu_worker`` raylet registered;
- time to full pool: ``min(actors_max, gpu_worker max_workers)`` GPU nodes alive at once;
- job time: the ``jobs.generate`` process, start to exit (driver start-up and the fidelity step included);
- time to scale back to 0: from the job's exit to the last GPU node's end (idle timeout + autoscaler period);
- node-seconds used vs ideal: GPU node-seconds alive (sum over GPU nodes of raylet end - start) against GPU
  node-seconds busy (sum over GPU nodes of the union of the intervals in which a task or actor task ran on that
  node, from the State API's task events: the generator actors' ``submit`` calls, i.e. sampling and writing parts,
  and Ray Data's small calls; the actor constructor, which loads the model, did not show up among them in our
  runs). Ideal is what an autoscaler that adds a node exactly when work starts on it and removes it when its last
  task ends would pay; the ratio (>= 1) is the price of node start-up, actor start-up and model loading, the idle
  timeout and Ray Data's actor-pool scheduling. On the tiny preset the work is seconds and the idle timeout
  dominates; ``--set generate.aug_ratio_tail=4 generate.per_class_max=12`` gives the job more images.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trcgl.ray_runtime import load_cluster_config
from trcgl.storage import GENERATE_PLAN
from trcgl_dev import local_cluster as rcl

log = logging.getLogger(__name__)

RUN = "autoscale"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class AutoscaleBenchResult:
    """The measured figures (seconds; None where a figure was not reached)."""

    images: int
    actors_max: int
    pool: int
    idle_timeout_s: float
    first_gpu_s: float | None
    full_pool_s: float | None
    job_s: float
    scale_to_zero_s: float | None
    gpu_node_seconds: float
    busy_node_seconds: float
    max_gpu_nodes: int
    rc: int
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        def fmt(v: float | None) -> str:
            return "not reached" if v is None else f"{v:.1f} s"

        ratio = self.gpu_node_seconds / self.busy_node_seconds if self.busy_node_seconds > 0 else float("nan")
        return [
            f"autoscale  generate {self.images} images (tiny), 1 fake GPU per actor, actors_max={self.actors_max}, "
            f"gpu_worker 0..{self.pool}, idle timeout {self.idle_timeout_s:.0f} s, job rc={self.rc}",
            f"autoscale  time to first GPU node: {fmt(self.first_gpu_s)}",
            f"autoscale  time to full pool ({self.pool} GPU nodes): {fmt(self.full_pool_s)}"
            f"  (most GPU nodes alive at once: {self.max_gpu_nodes})",
            f"autoscale  job time: {self.job_s:.1f} s",
            f"autoscale  time to scale back to 0: {fmt(self.scale_to_zero_s)}  (after the job's exit)",
            f"autoscale  GPU node-seconds used vs ideal: {self.gpu_node_seconds:.1f} / {self.busy_node_seconds:.1f}"
            f" = {ratio:.2f}x  (alive vs busy running tasks; 1.0 = no idle GPU node time)",
            *[f"autoscale  note: {n}" for n in self.notes],
        ]


def _job_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    return env


def _run_job(module: str, overrides: list[str], log_path: Path) -> None:
    cmd = [sys.executable, "-m", module, "--config", "tiny", "--set", *overrides]
    t0 = time.perf_counter()
    with open(log_path, "wb") as out:
        rc = subprocess.run(cmd, cwd=ROOT, env=_job_env(), stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{module} failed with rc={rc}:\n{tail}")
    log.info("%s done in %.1f s", module, time.perf_counter() - t0)


def prepare_inputs(root: Path, logs: Path) -> None:
    """The tiny dataset and a 1-epoch tiny diffusion model under ``root`` (each job skips work already done)."""
    _run_job("jobs.prepare", [f"storage.root={root}"], logs / "prepare.log")
    _run_job(
        "jobs.train_diffusion",
        [f"storage.root={root}", f"train.run={RUN}", "diffusion.epochs=1"],
        logs / "diffusion.log",
    )


def generate_command(root: Path, actors_max: int, extra: list[str] | None = None) -> list[str]:
    """The generate job of the scenario: 1 GPU per actor, waiting for the autoscaler."""
    return [
        sys.executable,
        "-m",
        "jobs.generate",
        "--config",
        "tiny",
        "--set",
        f"storage.root={root}",
        f"train.run={RUN}",
        "generate.num_gpus=1",
        f"generate.actors_max={actors_max}",
        "ray.autoscaling=true",
        *(extra or []),
    ]


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def node_seconds(
    nodes: list[dict[str, Any]], tasks: list[dict[str, Any]], config: dict[str, Any], now_ms: float
) -> tuple[dict[str, tuple[float, float]], float, float]:
    """GPU nodes' (start, end) in seconds, their alive node-seconds and their busy node-seconds."""
    gpu_nodes = {
        n["node_id"]: (n["start_time_ms"] / 1000, (n.get("end_time_ms") or now_ms) / 1000)
        for n in nodes
        if rcl.gpu_node_count({rcl.node_type_of(n, config): 1}, config) and n.get("start_time_ms")
    }
    alive = sum(end - start for start, end in gpu_nodes.values())
    per_node: dict[str, list[tuple[float, float]]] = {}
    for t in tasks:
        if t.get("node_id") in gpu_nodes and t.get("start_time_ms"):
            end = t.get("end_time_ms") or gpu_nodes[t["node_id"]][1] * 1000
            per_node.setdefault(t["node_id"], []).append((t["start_time_ms"] / 1000, end / 1000))
    busy = sum(_union_seconds(v) for v in per_node.values())
    return gpu_nodes, alive, busy


def measure(
    root: Path,
    state_dir: Path,
    logs: Path,
    actors_max: int,
    idle_timeout_minutes: float | None,
    overrides: list[str] | None = None,
) -> AutoscaleBenchResult:
    """Starts the cluster, runs and watches the generate job, waits for scale-down, stops the cluster."""
    import pyarrow.parquet as pq

    synthetic = root / "runs" / RUN / "synthetic"
    shutil.rmtree(synthetic, ignore_errors=True)  # every measurement generates every image
    cluster = rcl.up(state_dir, idle_timeout_minutes=idle_timeout_minutes)
    try:
        config = load_cluster_config(cluster.config)
        idle_s = float(config["idle_timeout_minutes"]) * 60
        pool_max = int(config["available_node_types"]["gpu_worker"]["max_workers"])
        pool = min(actors_max, pool_max)
        watch = rcl.run_watched(generate_command(root, actors_max, overrides), cluster, logs / "generate.log", cwd=ROOT)
        notes = []
        if watch.rc != 0:
            notes.append("generate failed: " + " | ".join(watch.log.splitlines()[-15:]))
        zero_at, after = rcl.wait_for_gpu_nodes(cluster, 0, idle_s + 120)
        if zero_at is None:
            notes.append(f"GPU nodes still alive {idle_s + 120:.0f} s after the job")
        now_ms = time.time() * 1000
        nodes = rcl.list_nodes(cluster.dashboard_url, cluster.token())
        tasks = rcl.list_tasks(cluster.dashboard_url, cluster.token())
    finally:
        rcl.down(state_dir)
        left = rcl.leftover_processes(state_dir)
        if left:
            log.warning("processes of the cluster left running: %s", left)
    gpu_nodes, alive, busy = node_seconds(nodes, tasks, config, now_ms)
    on_gpu = [t for t in tasks if t.get("node_id") in gpu_nodes]
    notes.append(
        f"{len(on_gpu)} tasks/actor tasks ran on {len(gpu_nodes)} GPU node(s) "
        f"({', '.join(sorted({str(t.get('func_or_class_name', '?')) for t in on_gpu}))[:160]})"
    )
    starts = sorted(s for s, _ in gpu_nodes.values())
    ends = [e for _, e in gpu_nodes.values()]
    full_pool, level, most = None, 0, 0
    for when, step in sorted([(s, 1) for s in starts] + [(e, -1) for e in ends if e < now_ms / 1000]):
        level += step
        most = max(most, level)
        if level >= pool and full_pool is None:
            full_pool = when - watch.started
    plan = synthetic / GENERATE_PLAN
    images = pq.read_table(plan).num_rows if plan.exists() else 0
    samples = watch.samples + after
    max_gpu = max((rcl.gpu_node_count(c, config) for _, c in samples), default=0)
    return AutoscaleBenchResult(
        images=images,
        actors_max=actors_max,
        pool=pool,
        idle_timeout_s=idle_s,
        first_gpu_s=(starts[0] - watch.started) if starts else None,
        full_pool_s=full_pool,
        job_s=watch.ended - watch.started,
        scale_to_zero_s=(max(ends) - watch.ended) if ends and zero_at is not None else None,
        gpu_node_seconds=alive,
        busy_node_seconds=busy,
        max_gpu_nodes=max(max_gpu, most),
        rc=watch.rc,
        notes=notes,
    )


def run(argv: list[str] | None = None) -> int:
    """``python -m jobs.benchmark autoscale [--workdir DIR] [--actors-max 2] [--idle-timeout-minutes M]``.

    Returns:
        0 when the job succeeded and the GPU pool scaled up and back to 0, else 1.
    """
    p = argparse.ArgumentParser(
        prog="python -m jobs.benchmark autoscale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", default=None, help="keep the dataset, model and logs here (default: temp, removed)")
    p.add_argument("--actors-max", type=int, default=2, help="generate.actors_max (one fake GPU node each)")
    p.add_argument("--idle-timeout-minutes", type=float, default=None, help="default: the template's")
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="more overrides for the generate job, e.g. generate.per_class_max=12 diffusion.sample_steps=20",
    )
    args = p.parse_args(argv)
    work = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="trcgl-asb-"))
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    state_dir = Path(tempfile.mkdtemp(prefix="trcgl-asc-"))  # short: Ray's socket paths live under it
    try:
        prepare_inputs(work / "root", logs)
        result = measure(work / "root", state_dir, logs, args.actors_max, args.idle_timeout_minutes, args.overrides)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    for line in result.lines():
        sys.stdout.write(line + "\n")
    ok = result.rc == 0 and result.first_gpu_s is not None and result.scale_to_zero_s is not None
    return 0 if ok else 1
