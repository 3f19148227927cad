"""Fault scenarios that kill a job's driver process (its whole process group, SIGKILL) and run the same command
again: the classifier job (scenario 2) and the sweep (scenario 4). Each job runs as ``python -m jobs.X``, as a user
would run it: a driver on the Ray the caller is connected to (the cluster outlives the killed driver, as under ``ray
job submit``), or with its own local Ray when the caller has none. The figures come from what the jobs left in
storage.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def job_env() -> dict[str, str]:
    """The environment of a job a scenario starts: ours, with ``RAY_ADDRESS`` naming the Ray this process is
    connected to, if any. The job is then one more driver on that cluster, as under ``ray job submit``: killing it
    leaves the cluster up, and Ray ends the dead driver's actors, tasks and placement groups, which the rerun must
    not trip over. Without a connected Ray the job starts its own local one (and the kill takes it down too)."""
    from trcgl.ray_runtime import connected_address

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    address = connected_address()
    if address:
        env["RAY_ADDRESS"] = address
    return env


def kill_when(
    cmd: list[str], ready: Callable[[], bool], log_path: Path, timeout_s: float = 600.0, poll_s: float = 0.5
) -> float:
    """Starts ``cmd`` in its own process group and SIGKILLs the group once ``ready()`` holds.

    Returns:
        Seconds from start to the kill.

    Raises:
        RuntimeError: the job exited, or ``ready()`` did not hold within ``timeout_s`` (the job is killed first);
            the message ends with the job's last log lines.
    """
    t0 = time.perf_counter()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=job_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd[:4])} exited ({proc.returncode}) before the kill point: "
                                   + log_path.read_text(errors="replace")[-2000:])  # fmt: skip
            if time.perf_counter() - t0 > timeout_s:
                raise RuntimeError(f"kill point not reached in {timeout_s:.0f} s: "
                                   + log_path.read_text(errors="replace")[-2000:])  # fmt: skip
            time.sleep(poll_s)
        return time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


def run_job(cmd: list[str], timeout_s: float = 600.0) -> subprocess.CompletedProcess:
    """Runs ``cmd`` to the end (output captured)."""
    return subprocess.run(cmd, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=timeout_s)


def _registered(classifier: Path) -> list[int]:
    """Epochs of the checkpoints Ray Train has registered for a run (its checkpoint manager's snapshot)."""
    snapshot = classifier / "checkpoint_manager_snapshot.json"
    if not snapshot.exists():
        return []
    try:
        data = json.loads(snapshot.read_text())
    except json.JSONDecodeError:  # caught mid-write
        return []
    return sorted(int(r["metrics"]["epoch"]) for r in data.get("checkpoint_results", []))


def _history(classifier: Path) -> list[dict[str, Any]]:
    path = classifier / "history.json"
    return json.loads(path.read_text()) if path.exists() else []


def train_ids(root: Path, dataset: str, diffusion_weights: dict[str, float] | None = None) -> list[str]:
    """Image ids of a prepared dataset's train split as an epoch feeds them: once each for the classifier; repeated
    by group weight for diffusion training (``diffusion_weights``, as ``repeat_by_group`` does)."""
    import pyarrow.compute as pc

    from trcgl.data.dataset import read_dataset
    from trcgl.storage import Storage

    table = read_dataset(Storage(str(root)), dataset)
    train = table.filter(pc.equal(table["split"], "train")).select(["image_id", "labels"])
    if diffusion_weights is None:
        return train["image_id"].to_pylist()
    from trcgl.data.dataset import load_dataset_info
    from trcgl.diffusion.grouping import repeat_by_group

    info = load_dataset_info(Storage(str(root)), dataset)
    return repeat_by_group(train.to_pandas(), info.groups, diffusion_weights)["image_id"].tolist()


def epochs_saw_each_row_once(history: list[dict[str, Any]], ids: list[str], workers: int) -> bool:
    """Whether every epoch in ``history`` saw each of ``ids`` once, over all workers (count and id checksum).

    Ray Train splits a dataset into equal shards (DDP needs the same number of batches on every worker), which
    leaves out ``len(ids) % workers`` rows per epoch, different ones each epoch. So the count must be
    ``len(ids) - len(ids) % workers`` and the checksum the full one less at most that many rows' CRC-32s.
    """
    from trcgl.train.ray_common import id_checksum

    dropped = len(ids) % workers
    full = id_checksum(ids)
    for h in history:
        if h.get("train_images") != len(ids) - dropped:
            return False
        missing = full - int(h.get("train_id_checksum", -1))
        if not (missing == 0 if dropped == 0 else 0 < missing < dropped * 2**32):
            return False
    return bool(history)


def classifier_driver_kill(root: Path, dataset: str, workdir: Path, epochs: int = 2) -> dict[str, Any]:
    """Scenario 2: ``jobs.train_classifier`` killed (driver and its local Ray) after its first registered
    checkpoint, the same command run again, then a different run name trained on the current Ray.

    The different run has the configuration of scenario 1's fault-free classifier reference
    (:func:`trcgl_dev.faults.ray_worker_kill.reference_run`, same ``epochs``), so that scenario can reuse it: its result
    is ``fresh_result`` (callers pop it before recording the figures).

    Returns:
        Figures: ``killed_at_s``, ``last_registered`` (epoch of the newest registered checkpoint at the kill),
        ``reported`` (epochs rank 0 had reported), ``resumed_from`` (first epoch the rerun trained; -1 if it did
        not train), ``resumed_at_or_after_checkpoint``, ``epochs`` (epochs in the final history, each once?
        ``epochs_unique``), ``rows_ok`` (every epoch saw each train row once: :func:`epochs_saw_each_row_once`),
        ``rerun_rc``, ``fresh_start_epoch`` (the other run's first epoch: 0 = started fresh), ``fresh_epochs``.
    """
    from trcgl_dev.faults.ray_worker_kill import reference_run

    run = "kill-driver"
    base = [sys.executable, "-m", "jobs.train_classifier", "--config", "tiny", "--set", f"storage.root={root}",
            f"train.dataset={dataset}", f"train.epochs={epochs}", "train.bootstrap=10"]  # fmt: skip
    classifier = root / "runs" / run / "classifier"
    killed_at = kill_when([*base, f"train.run={run}"], lambda: bool(_registered(classifier)), workdir / "first.log")
    last_registered = max(_registered(classifier))
    reported = len(_history(classifier))
    rerun = run_job([*base, f"train.run={run}"])
    history = _history(classifier)
    epochs_seen = [int(h["epoch"]) for h in history]
    resumed = [int(h.get("start_epoch", 0)) for h in history if int(h.get("start_epoch", 0)) > 0]
    resumed_from = min(resumed) if resumed else (0 if history else -1)
    rows_ok = epochs_saw_each_row_once(history, train_ids(root, dataset), 2)  # tiny: 2 Train workers
    fresh_run = "kill-driver-other"
    fresh = reference_run(root, dataset, "classifier", epochs, run=fresh_run)
    fresh_history = _history(root / "runs" / fresh_run / "classifier")
    figures = {
        "killed_at_s": round(killed_at, 1),
        "last_registered": last_registered,
        "reported": reported,
        "resumed_from": resumed_from,
        "resumed_at_or_after_checkpoint": resumed_from >= last_registered + 1,
        "resumed_from_latest_reported": resumed_from == reported,
        "epochs": len(epochs_seen),
        "epochs_unique": epochs_seen == list(range(epochs)),
        "rows_ok": rows_ok,
        "rerun_rc": rerun.returncode,
        "rerun_log": (rerun.stdout + rerun.stderr)[-1500:] if rerun.returncode else "",
        "fresh_start_epoch": int(fresh_history[0].get("start_epoch", -1)) if fresh_history else -1,
        "fresh_epochs": [int(h["epoch"]) for h in fresh_history],
        "fresh_result": fresh,
    }
    log.info("classifier driver kill: %s", {k: v for k, v in figures.items() if k not in ("rerun_log", "fresh_result")})
    return figures


def sweep_driver_kill(root: Path, workdir: Path, trials: int = 2) -> dict[str, Any]:
    """Scenario 4: ``jobs.sweep`` killed once its first trial finished, then the same command again.

    Returns:
        Figures: ``killed_at_s``, ``finished_before_kill``, ``retrained`` (finished trials trained again: their
        summaries rewritten), ``trials`` / ``unique_trials`` on the leaderboard, ``configs_sampled_twice``,
        ``resumed`` (the rerun restored the Tune experiment), ``rerun_rc``.
    """
    import pandas as pd

    space = ("sweep.space={train.lr: {type: loguniform, low: 0.001, high: 0.004}, "
             "model.gcn: {type: choice, values: [true, false]}}")  # fmt: skip
    cmd = [sys.executable, "-m", "jobs.sweep", "--config", "tiny", "--set", f"storage.root={root}",
           "train.run=kill-sweep", f"sweep.num_samples={trials}", "train.epochs=1", "sweep.scheduler=asha",
           "train.bootstrap=10", space]  # fmt: skip
    folder = root / "runs" / "kill-sweep" / "sweep"
    killed_at = kill_when(
        cmd, lambda: bool(list((folder / "trials").glob("*/classifier/summary.json"))), workdir / "sweep.log"
    )
    done = {p.parts[-3]: p.stat().st_mtime for p in (folder / "trials").glob("*/classifier/summary.json")}
    rerun = run_job(cmd)
    figures: dict[str, Any] = {
        "killed_at_s": round(killed_at, 1),
        "finished_before_kill": len(done),
        "rerun_rc": rerun.returncode,
        "resumed": "resuming the sweep" in rerun.stderr,
    }
    if rerun.returncode != 0:
        figures["rerun_log"] = rerun.stderr[-1500:]
        return figures
    board = pd.read_parquet(folder / "leaderboard.parquet")
    params = board[[c for c in board.columns if c.startswith("param.")]].astype(str).agg("|".join, axis=1)
    figures.update(
        {
            "retrained": sum(
                (folder / "trials" / t / "classifier" / "summary.json").stat().st_mtime != m for t, m in done.items()
            ),
            "trials": len(board),
            "unique_trials": int(board["trial_id"].nunique()),
            "finished_kept": sorted(done) == sorted(set(done) & set(board["trial_id"])),
            "configs_sampled_twice": int(len(params) - params.nunique()),
        }
    )
    log.info("sweep driver kill: %s", figures)
    return figures
