"""Fault scenario 1: a Ray Train worker killed (SIGKILL) mid-epoch, in classifier and in diffusion training.

The training job runs in a thread of this process on the current Ray (``train.max_failures`` lets Ray Train restart
the worker group); once Ray Train has registered a checkpoint and the next epoch is under way, one
``RayTrainWorker`` actor is killed. Afterwards the run's ``history.json`` says where each attempt started
(``start_epoch``) and what each epoch saw (``train_images``, ``train_id_checksum`` summed over the workers).
RELIABILITY_NOTES.md: a restart may begin from a checkpoint older than the latest reported one (ray issue 41700), so
the figures say how often the resume point was the latest reported epoch rather than assume it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from trcgl.config import load_config

log = logging.getLogger(__name__)

REFERENCE_EPOCHS = 2  # epochs of the suite's and the benchmark's scenario 1 runs (and so of shared references)


def _registered(folder: Path) -> list[int]:
    snapshot = folder / "checkpoint_manager_snapshot.json"
    try:
        data = json.loads(snapshot.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return sorted(int(r["metrics"]["epoch"]) for r in data.get("checkpoint_results", []))


def _history(folder: Path) -> list[dict[str, Any]]:
    try:
        return json.loads((folder / "history.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _train_workers() -> list[int]:
    import ray
    from ray.util.state import list_actors

    # this process's cluster by its address: autodetection fails where another Ray runs on the machine
    alive = list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        detail=True,
    )
    return sorted(int(a["pid"]) for a in alive if a.get("pid"))


def _run(stage: str, overrides: list[str]) -> dict[str, Any]:
    from trcgl.diffusion.ray_diffusion import run_train_diffusion
    from trcgl.train.ray_train import run_training

    cfg = load_config("tiny", overrides)
    return run_training(cfg) if stage == "classifier" else run_train_diffusion(cfg)


def _final(stage: str, out: dict[str, Any], root: Path) -> float | None:
    """The figure compared with the fault-free run: the last epoch's training loss.

    For the classifier that is rank 0's mean loss in the run's ``history.json``, not the test mAUC: two epochs of the
    tiny model score near chance (test mAUC 0.47-0.59 over fault-free runs of 2026-11-28, one epoch or two alike),
    so mAUC could not tell a run that lost an epoch from one that did not; the loss can (about 0.33 after one epoch,
    0.16-0.21 after two).
    """
    if stage == "diffusion":
        value = out.get("last_loss")
    else:
        history = _history(root / "runs" / out["run"] / stage)
        value = history[-1]["train_loss"] if history else None
    return None if value is None else float(value)


def fault_overrides(root: Path, dataset: str, stage: str, epochs: int) -> list[str]:
    """The config overrides (run name aside) of the faulted run and of its fault-free reference: one function, so a
    reference trained elsewhere (a test fixture's) is the same configuration by construction."""
    common = [f"storage.root={root}", f"train.dataset={dataset}", "train.max_failures=2", "train.bootstrap=10"]
    common.append(f"train.epochs={epochs}" if stage == "classifier" else f"diffusion.epochs={epochs}")
    return common


def reference_run(root: Path, dataset: str, stage: str, epochs: int, run: str | None = None) -> dict[str, Any]:
    """Trains the fault-free reference of :func:`train_worker_kill` (run ``worker-kill-{stage}-no-fault`` unless
    ``run`` names another) and returns the training job's result."""
    return _run(
        stage, [*fault_overrides(root, dataset, stage, epochs), f"train.run={run or f'worker-kill-{stage}-no-fault'}"]
    )


def train_worker_kill(
    root: Path,
    dataset: str,
    stage: str,
    epochs: int = REFERENCE_EPOCHS,
    kill_delay_s: float = 1.0,
    timeout_s: float = 600.0,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Kills one Train worker mid-epoch in ``stage`` ("classifier" or "diffusion") training; compares with the same
    config trained without a fault under another run name (``reference``: that run's result when it was already
    trained with :func:`fault_overrides`' config, else trained here).

    Returns:
        Figures: ``completed``, ``error``, ``killed_after_epoch`` (the newest registered checkpoint's epoch at the
        kill), ``reported_before_kill`` (epochs rank 0 had reported), ``recovery_s`` (kill to a new worker alive),
        ``resumed_from`` (first epoch of the attempt after the kill; 0 = from scratch),
        ``resumed_from_registered`` (resumed_from >= killed_after_epoch + 1), ``resumed_from_latest``
        (resumed_from == reported_before_kill), ``epochs_unique`` (every epoch once in the final history),
        ``rows_ok`` (every epoch saw each row once, as :func:`trcgl_dev.faults.kills.epochs_saw_each_row_once`
        checks: diffusion's rows repeated by group weight), ``final`` / ``final_no_fault`` (the last epoch's loss,
        see :func:`_final`), ``test_mAUC`` / ``test_mAUC_no_fault`` (classifier) and ``seconds``.
    """
    from trcgl_dev.faults.kills import epochs_saw_each_row_once, train_ids

    if stage not in ("classifier", "diffusion"):
        raise ValueError(f"stage must be classifier or diffusion, got {stage!r}")
    run = f"worker-kill-{stage}"
    common = fault_overrides(root, dataset, stage, epochs)
    folder = root / "runs" / run / stage
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = _run(stage, [*common, f"train.run={run}"])
        except Exception as exc:  # reported in the figures, not lost in the thread
            out["error"] = f"{type(exc).__name__}: {exc}"[:500]

    t0 = time.perf_counter()
    thread = threading.Thread(target=target, name=f"trcgl-{run}", daemon=True)
    thread.start()
    deadline = time.perf_counter() + timeout_s
    while not _registered(folder) and thread.is_alive():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{run}: no checkpoint registered in {timeout_s:.0f} s")
        time.sleep(0.25)
    if not thread.is_alive():
        raise RuntimeError(f"{run} ended before the kill point: {out.get('error') or 'finished too fast'}")
    time.sleep(kill_delay_s)  # into the next epoch
    killed_after, reported = max(_registered(folder)), len(_history(folder))
    workers = _train_workers()
    if not workers:
        raise RuntimeError(f"{run}: no live RayTrainWorker to kill")
    os.kill(workers[0], signal.SIGKILL)
    killed = time.perf_counter()
    recovery = None
    while thread.is_alive() and recovery is None and time.perf_counter() < deadline:
        if set(_train_workers()) - set(workers):
            recovery = time.perf_counter() - killed
        time.sleep(0.25)
    thread.join(timeout=max(1.0, deadline - time.perf_counter()))
    seconds = time.perf_counter() - t0

    history = _history(folder)
    epochs_seen = [int(h["epoch"]) for h in history]
    starts = [int(h.get("start_epoch", 0)) for h in history]
    after = [s for e, s in zip(epochs_seen, starts, strict=True) if e > killed_after]
    resumed_from = min(after) if after else (max(starts) if starts else 0)
    cfg = load_config("tiny", [*common, f"train.run={run}"])
    weights = None if stage == "classifier" else dict(cfg.diffusion.group_weights)
    rows_ok = epochs_saw_each_row_once(history, train_ids(root, dataset, weights), cfg.train.num_workers)
    reference_shared = reference is not None
    if reference is None:
        reference = reference_run(root, dataset, stage, epochs)
    figures = {
        "stage": stage,
        "completed": "result" in out and not thread.is_alive(),
        "error": out.get("error"),
        "killed_after_epoch": killed_after,
        "reported_before_kill": reported,
        "recovery_s": None if recovery is None else round(recovery, 1),
        "resumed_from": resumed_from,
        "resumed_from_registered": resumed_from >= killed_after + 1,
        "resumed_from_latest": resumed_from == reported,
        "epochs_unique": epochs_seen == list(range(epochs)),
        "rows_ok": rows_ok,
        "final": _final(stage, out["result"], root) if "result" in out else None,
        "final_no_fault": _final(stage, reference, root),
        "test_mAUC": out["result"]["test"]["mAUC"] if stage == "classifier" and "result" in out else None,
        "test_mAUC_no_fault": reference["test"]["mAUC"] if stage == "classifier" else None,
        "reference_shared": reference_shared,
        "seconds": round(seconds, 1),
    }
    log.info("train worker kill: %s", figures)
    return figures
