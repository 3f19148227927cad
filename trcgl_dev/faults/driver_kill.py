"""The driver-kill scenarios: a job's driver process killed (its whole process group, SIGKILL), then the same command
run again. The classifier driver kill (``jobs.train_classifier``) and the sweep driver kill (``jobs.sweep``) are here;
the generation kill (:mod:`trcgl_dev.faults.generation_kill`) uses the same :func:`kill_when` and :func:`run_job`.

Each job runs as ``python -m jobs.X``, as a user would run it: a driver on the Ray the caller is connected to (the
cluster outlives the killed driver, as under ``ray job submit``), or with its own local Ray when the caller has none.
The figures come from what the jobs left in storage.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trcgl.config import load_config
from trcgl_dev.faults import Figures
from trcgl_dev.faults.ray_worker_kill import OTHER_RUN, ReferenceRun, fault_overrides, run_begun_after
from trcgl_dev.faults.run_files import epochs_saw_each_row_once, read_history, registered_epochs, train_ids

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def job_env() -> dict[str, str]:
    """The environment of a job a scenario starts: ours, with ``RAY_ADDRESS`` naming the Ray this process is
    connected to, if any.

    The job is then one more driver on that cluster, as under ``ray job submit``: killing it leaves the cluster up,
    and Ray ends the dead driver's actors, tasks and placement groups, which the rerun must not trip over. Without a
    connected Ray the job starts its own local one (and the kill takes it down too).
    """
    from trcgl.ray_runtime import connected_address

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    address = connected_address()
    if address:
        env["RAY_ADDRESS"] = address
    return env


def kill_when(
    cmd: list[str],
    ready: Callable[[], bool],
    log_path: Path,
    timeout_s: float = 600.0,
    poll_s: float = 0.5,
    env: dict[str, str] | None = None,
) -> float:
    """Starts ``cmd`` in its own process group and SIGKILLs the group once ``ready()`` holds.

    ``env``: the job's environment (default :func:`job_env`; e.g. ``{**os.environ, **LocalCluster.env()}`` for a
    driver on the local autoscaling cluster).

    Returns:
        Seconds from start to the kill.

    Raises:
        RuntimeError: the job exited, or ``ready()`` did not hold within ``timeout_s`` (the job is killed first);
            the message ends with the job's last log lines.
    """
    t0 = time.perf_counter()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=job_env() if env is None else env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
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


def run_job(cmd: list[str], timeout_s: float = 600.0, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs ``cmd`` to the end in the repository, with ``env`` (default :func:`job_env`; output captured)."""
    env = job_env() if env is None else env
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)


@dataclass
class ClassifierDriverKillResult(Figures):
    """What :func:`classifier_driver_kill` measured.

    Attributes:
        killed_at_s: seconds from the job's start to the kill.
        last_registered: epoch of the newest checkpoint Ray Train had registered at the kill.
        reported: epochs rank 0 had reported at the kill.
        resumed_from: first epoch the rerun trained (0: from scratch; -1: it trained nothing).
        resumed_at_or_after_checkpoint: ``resumed_from >= last_registered + 1``.
        resumed_from_latest_reported: ``resumed_from == reported``.
        epochs: epochs in the final history.
        epochs_unique: the final history holds each epoch exactly once.
        each_row_once: every epoch saw each train row once over the workers, less exactly the equal split's
            remainder (:func:`~trcgl_dev.faults.run_files.epochs_saw_each_row_once`).
        rerun_rc: exit code of the rerun.
        rerun_log: the end of the rerun's output when it failed, else "".
        fresh_run: the run name of the fault-free run under another name, trained after the kill ("": none was
            asked for).
        fresh_run_shared: that run was the caller's (the shared classifier reference) rather than trained here.
        fresh_start_epoch: the fresh run's first epoch (0: it did not pick up the killed run; -1: no history).
        fresh_epochs: the epochs the fresh run trained.
    """

    killed_at_s: float
    last_registered: int
    reported: int
    resumed_from: int
    resumed_at_or_after_checkpoint: bool
    resumed_from_latest_reported: bool
    epochs: int
    epochs_unique: bool
    each_row_once: bool
    rerun_rc: int
    rerun_log: str
    fresh_run: str
    fresh_run_shared: bool
    fresh_start_epoch: int
    fresh_epochs: list[int]


def classifier_driver_kill(
    root: Path,
    dataset: str,
    workdir: Path,
    epochs: int = 2,
    fresh: Callable[[], ReferenceRun] | None = None,
    run: str = "kill-driver",
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> ClassifierDriverKillResult:
    """``jobs.train_classifier`` killed (driver and, without a connected Ray, its local Ray) after its first
    registered checkpoint, the same command run again, then, with ``fresh``, a run under another name looked at.

    The job has the configuration of the train-worker kill's fault-free classifier reference
    (:func:`~trcgl_dev.faults.ray_worker_kill.fault_overrides`, same ``epochs``) plus ``extra``. The run under
    another name must start at epoch 0 although the killed run's checkpoints sit beside it: ``fresh`` gives the
    shared reference, called after the kill and the rerun, and serves when it began after the kill; otherwise a
    run is trained here (:func:`~trcgl_dev.faults.ray_worker_kill.run_begun_after`).

    Args:
        root: the storage root holding the prepared dataset.
        dataset: the prepared dataset's name.
        workdir: scratch for the killed job's log.
        epochs: epochs of every run here.
        fresh: gives the shared fault-free classifier reference (trained on first call); None: no run under another
            name is looked at.
        run: the killed job's run name.
        extra: more overrides of the killed job and its rerun (e.g. where its workers go).
        env: the jobs' environment (default :func:`job_env`).
    """
    overrides = [*fault_overrides(root, dataset, "classifier", epochs), f"train.run={run}", *(extra or [])]
    cmd = [sys.executable, "-m", "jobs.train_classifier", "--config", "tiny", "--set", *overrides]
    classifier = root / "runs" / run / "classifier"
    killed_at = kill_when(cmd, lambda: bool(registered_epochs(classifier)), workdir / "first.log", env=env)
    killed_wall = time.time()  # kill_when has killed the job's process group when it returns
    last_registered = max(registered_epochs(classifier))
    reported = len(read_history(classifier))
    rerun = run_job(cmd, env=env)
    history = read_history(classifier)
    epochs_seen = [int(h["epoch"]) for h in history]
    resumed = [int(h.get("start_epoch", 0)) for h in history if int(h.get("start_epoch", 0)) > 0]
    resumed_from = min(resumed) if resumed else (0 if history else -1)
    workers = load_config("tiny", overrides).train.num_workers
    each_row_once = epochs_saw_each_row_once(history, train_ids(root, dataset), workers)
    other = run_begun_after(root, dataset, epochs, killed_wall, fresh()) if fresh is not None else None
    fresh_history = read_history(root / "runs" / other.run / "classifier") if other is not None else []
    figures = ClassifierDriverKillResult(
        killed_at_s=round(killed_at, 1),
        last_registered=last_registered,
        reported=reported,
        resumed_from=resumed_from,
        resumed_at_or_after_checkpoint=resumed_from >= last_registered + 1,
        resumed_from_latest_reported=resumed_from == reported,
        epochs=len(epochs_seen),
        epochs_unique=epochs_seen == list(range(epochs)),
        each_row_once=each_row_once,
        rerun_rc=rerun.returncode,
        rerun_log=(rerun.stdout + rerun.stderr)[-1500:] if rerun.returncode else "",
        fresh_run=other.run if other is not None else "",
        fresh_run_shared=other is not None and other.run != OTHER_RUN,
        fresh_start_epoch=int(fresh_history[0].get("start_epoch", -1)) if fresh_history else -1,
        fresh_epochs=[int(h["epoch"]) for h in fresh_history],
    )
    log.info("classifier driver kill: %s", figures)
    return figures


# The sweep driver kill's space and seed. Trials run one at a time, 2 epochs each, under ASHA with rungs at epochs 1
# and 2 (grace period 1, reduction factor 2). Optuna's seeded start-up draws for this space come as TRAINS, FROZEN,
# THIRD (checked on the leaderboard): a learning rate that trains, one that leaves the model at its initial weights,
# and a third. ASHA stops a trial at a rung when its val mAP there is below the median of what earlier trials recorded
# at that rung, so the frozen second trial is stopped after epoch 1 and the third must start after it: the stopped
# trial's placement group has to be freed (Ray Train's placement-group cleaner asks the dashboard's State API, README
# "Sweeps"), or the third waits forever for its CPUs. Three distinct values, so a config sampled twice is a fault.
TRAINS, FROZEN, THIRD = 0.004, 1e-7, 0.002
SWEEP_SEED = 28
SWEEP_EPOCHS = 2
TRIAL_DIR = re.compile(r"_([0-9a-f]{8})_(\d+)_")  # Tune's trial folder: ..._{trial_id}_{counter}_{params}


def tune_statuses(experiment: Path) -> dict[str, str]:
    """Trial id -> status in the newest experiment state Tune has saved in ``experiment`` ({} when none yet, or when
    caught mid-write). That file is what a restore starts from, so it is what a kill leaves the rerun."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
        trials = [json.loads(t[0]) for t in data["trial_data"]]
        return {t["trial_id"]: t["status"] for t in trials}
    except (FileNotFoundError, json.JSONDecodeError, KeyError, IndexError, TypeError):
        return {}


def trial_start_order(experiment: Path) -> list[str]:
    """Trial ids in the order Tune created them (its folder counter); with one trial at a time, start order."""
    counters = {}
    for folder in experiment.iterdir():
        found = TRIAL_DIR.search(folder.name)
        if folder.is_dir() and found:
            counters[found.group(1)] = int(found.group(2))
    return sorted(counters, key=counters.get)


@dataclass
class SweepDriverKillResult(Figures):
    """What :func:`sweep_driver_kill` measured. The leaderboard figures are None when the rerun failed.

    Attributes:
        killed_at_s: seconds from the sweep's start to the kill.
        finished_before_kill: trials whose summary existed at the kill.
        stopped_before_kill: trials Tune had saved as ended without a summary (stopped by ASHA) at the kill.
        new_workers_at_kill: Train workers alive at the kill that were not alive before Tune saved a stopped trial:
            the next trial's (2 when both got the CPUs the stopped trial held).
        rerun_rc: exit code of the rerun.
        resumed: the rerun restored the Tune experiment (its log says "resuming the sweep").
        rerun_log: the end of the rerun's stderr when it failed, else "".
        retrained: trials finished or stopped before the kill that were trained again (their history rewritten).
        trials: rows on the final leaderboard.
        unique_trials: distinct trial ids on it.
        finished_kept: every trial finished before the kill is on it.
        configs_sampled_twice: leaderboard rows whose sampled parameters repeat another row's.
        lrs: each trial's learning rate, in start order.
        stopped_early: each trial's ``stopped_early``, in start order.
        epochs: each trial's epochs, in start order.
        test_scored: each trial has test metrics (a trial that ran all its epochs), in start order.
    """

    killed_at_s: float
    finished_before_kill: int
    stopped_before_kill: int
    new_workers_at_kill: int
    rerun_rc: int
    resumed: bool
    rerun_log: str = ""
    retrained: int | None = None
    trials: int | None = None
    unique_trials: int | None = None
    finished_kept: bool | None = None
    configs_sampled_twice: int | None = None
    lrs: list[float] | None = None
    stopped_early: list[bool] | None = None
    epochs: list[int] | None = None
    test_scored: list[bool] | None = None


def sweep_driver_kill(root: Path, workdir: Path, timeout_s: float = 600.0) -> SweepDriverKillResult:
    """``jobs.sweep`` under ASHA killed once ASHA has stopped a trial and the next trial's Train workers are up, then
    the same command again (see :data:`TRAINS` for the sweep). The caller must be connected to the Ray the sweep
    runs on, with its dashboard (the kill point asks its State API).

    One run checks two things: a trial ASHA stops leaves nothing behind that the next trial needs (else the kill
    point is never reached and the scenario fails after ``timeout_s``), and a killed sweep resumes without training a
    trial twice or losing one. Each trial trains on two Train workers: with one, ``check_cpu_budget`` would cap its
    worker below 1 CPU and a leaked placement group would no longer block the next trial on 2 CPUs.

    Args:
        root: the storage root holding the prepared tiny dataset.
        workdir: scratch for the killed sweep's log.
        timeout_s: how long the first run may take to reach the kill point.
    """
    import pandas as pd

    space = f"sweep.space={{train.lr: {{type: choice, values: [{TRAINS}, {FROZEN:.1e}, {THIRD}]}}}}"
    cmd = [sys.executable, "-m", "jobs.sweep", "--config", "tiny", "--set", f"storage.root={root}",
           "train.run=kill-sweep", "sweep.num_samples=3", f"train.epochs={SWEEP_EPOCHS}", "train.bootstrap=10",
           "train.num_workers=2", "sweep.scheduler=asha", "sweep.max_concurrent_trials=1", "sweep.grace_period=1",
           "sweep.reduction_factor=2", f"sweep.seed={SWEEP_SEED}", space]  # fmt: skip
    folder = root / "runs" / "kill-sweep" / "sweep"

    def summary(trial: str) -> Path:
        return folder / "trials" / trial / "classifier" / "summary.json"

    def stopped() -> list[str]:
        return [t for t, s in tune_statuses(folder / "tune").items() if s == "TERMINATED" and not summary(t).exists()]

    seen: set[str] = set()  # Train workers seen alive before any trial was stopped
    new: set[str] = set()  # alive ones not in seen, at the last poll

    def next_placed() -> bool:
        """After Tune has saved a trial as stopped, Train workers are alive that were not alive before: the next
        trial's worker group got its placement group. Asked before that trial's first report, so ASHA has not judged
        it yet (a stop there would end the sweep before the kill)."""
        from trcgl_dev.ray_state import list_actors

        wanted = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
        alive = {a.actor_id for a in list_actors(filters=wanted, raise_on_missing_output=False)}
        if not stopped():
            seen.update(alive)
            return False
        new.clear()
        new.update(alive - seen)
        return len(new) >= 2  # both workers of the next trial

    killed_at = kill_when(cmd, next_placed, workdir / "sweep.log", timeout_s=timeout_s, poll_s=1.0)
    stopped_at_kill = stopped()
    done = {p.parts[-3]: p.stat().st_mtime for p in (folder / "trials").glob("*/classifier/summary.json")}
    histories = {t: (folder / "trials" / t / "classifier" / "history.json").stat().st_mtime
                 for t in [*done, *stopped_at_kill]}  # fmt: skip
    rerun = run_job(cmd)
    figures = SweepDriverKillResult(
        killed_at_s=round(killed_at, 1),
        finished_before_kill=len(done),
        stopped_before_kill=len(stopped_at_kill),
        new_workers_at_kill=len(new),
        rerun_rc=rerun.returncode,
        resumed="resuming the sweep" in rerun.stderr,
    )
    if rerun.returncode != 0:
        figures.rerun_log = rerun.stderr[-1500:]
        return figures
    board = pd.read_parquet(folder / "leaderboard.parquet")
    params = board[[c for c in board.columns if c.startswith("param.")]].astype(str).agg("|".join, axis=1)
    figures.retrained = sum(
        (folder / "trials" / t / "classifier" / "history.json").stat().st_mtime != m for t, m in histories.items()
    )
    figures.trials = len(board)
    figures.unique_trials = int(board["trial_id"].nunique())
    figures.finished_kept = sorted(done) == sorted(set(done) & set(board["trial_id"]))
    figures.configs_sampled_twice = int(len(params) - params.nunique())
    order = [t for t in trial_start_order(folder / "tune") if t in set(board["trial_id"])]
    rows = board.set_index("trial_id").loc[order]
    figures.lrs = [float(v) for v in rows["param.train.lr"]]
    figures.stopped_early = [bool(v) for v in rows["stopped_early"]]
    figures.epochs = [int(v) for v in rows["epochs"]]
    figures.test_scored = [bool(v) for v in rows["test_mAP"].notna()]
    log.info("sweep driver kill: %s", figures)
    return figures
