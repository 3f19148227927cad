"""The train-worker kill scenario: a Ray Train worker killed (SIGKILL) mid-epoch, in classifier and in diffusion
training, compared with a fault-free reference run of the same configuration.

The training job runs in a thread of this process on the current Ray (``train.max_failures`` lets Ray Train restart
the worker group); once Ray Train has registered a checkpoint and the next epoch is under way, one
``RayTrainWorker`` actor is killed. Afterwards the run's ``history.json`` says where each attempt started
(``start_epoch``) and what each epoch saw (``train_images``, ``train_id_checksum`` summed over the workers); the
rows trained summed over the epochs are compared with the fault-free run's, which tells a lost or repeated epoch even
where the loss cannot (the diffusion loss barely moves from one epoch to the next).
A restart may begin from a checkpoint older than the latest reported one
(https://github.com/ray-project/ray/issues/41700), so the figures say whether the resume point was the latest
reported epoch rather than assume it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trcgl.config import load_config
from trcgl_dev.faults import Figures
from trcgl_dev.faults.run_files import (
    epochs_saw_each_row_once,
    read_history,
    registered_epochs,
    rows_trained,
    train_ids,
)

log = logging.getLogger(__name__)

REFERENCE_EPOCHS = 2  # epochs of the faulted runs of the suite and the benchmark, and so of the shared references
OTHER_RUN = "kill-other-run-name"  # the classifier's run under another name, when the scenario trains its own


@dataclass
class ReferenceRun:
    """A fault-free training run with the train-worker kill scenario's configuration (:func:`fault_overrides`).

    Attributes:
        stage: "classifier" or "diffusion".
        run: its run name (``train.run``).
        result: the training job's result (``run_training`` / ``run_train_diffusion``).
        started_at: wall-clock time (``time.time()``) when its training began, so a scenario can tell whether the
            run began after a point of its own (see :func:`run_begun_after`).
    """

    stage: str
    run: str
    result: dict[str, Any]
    started_at: float


@dataclass
class WorkerKillResult(Figures):
    """What :func:`train_worker_kill` measured.

    Attributes:
        stage: "classifier" or "diffusion".
        completed: the training job returned a result after the kill.
        error: the training job's exception (type and message), or None.
        killed_after_epoch: epoch of the newest registered checkpoint at the kill.
        reported_before_kill: epochs rank 0 had reported at the kill.
        recovery_s: seconds from the kill to a new Train worker alive; None if none came up.
        resumed_from: first epoch of the attempt after the kill (0: from scratch).
        resumed_from_registered: ``resumed_from >= killed_after_epoch + 1`` (not older than the registered
            checkpoint).
        resumed_from_latest: ``resumed_from == reported_before_kill`` (from the latest reported epoch).
        epochs_unique: every epoch exactly once in the final history.
        each_row_once: every epoch saw each train row once over the workers, less exactly the equal split's
            remainder (:func:`~trcgl_dev.faults.run_files.epochs_saw_each_row_once`; diffusion's rows repeated by
            group weight).
        rows_trained: rows fed to training summed over the epochs of the faulted run's final history
            (:func:`~trcgl_dev.faults.run_files.rows_trained`): an epoch lost or trained twice changes it.
        rows_trained_no_fault: the same of the fault-free reference run.
        epochs_no_fault: the epochs in the reference run's history.
        final: the last epoch's training loss of the faulted run (see :func:`_final`); None if it did not finish.
            A figure; for diffusion not a check (the loss barely moves between epochs).
        final_no_fault: the same of the fault-free reference run.
        test_mauc: the faulted classifier's test mAUC (None for diffusion or when it did not finish).
        test_mauc_no_fault: the reference classifier's test mAUC (None for diffusion).
        reference_shared: the reference was given by the caller rather than trained here.
        other_run: the classifier run under another name that began after the faulted run's first checkpoint (the
            reference when it did, else :data:`OTHER_RUN`); "" for diffusion.
        other_run_start_epoch: that run's first epoch (0: the faulted run's checkpoints beside it were not picked
            up; -1: no history or not checked).
        other_run_epochs: the epochs that run trained.
        seconds: wall time from the start of the faulted run to its end.
    """

    stage: str
    completed: bool
    error: str | None
    killed_after_epoch: int
    reported_before_kill: int
    recovery_s: float | None
    resumed_from: int
    resumed_from_registered: bool
    resumed_from_latest: bool
    epochs_unique: bool
    each_row_once: bool
    rows_trained: int
    rows_trained_no_fault: int
    epochs_no_fault: list[int]
    final: float | None
    final_no_fault: float | None
    test_mauc: float | None
    test_mauc_no_fault: float | None
    reference_shared: bool
    other_run: str
    other_run_start_epoch: int
    other_run_epochs: list[int]
    seconds: float


def _train_workers() -> list[int]:
    """Pids of the live ``RayTrainWorker`` actors of the Ray this process is connected to."""
    from trcgl_dev.ray_state import list_actors

    alive = list_actors(
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
    """The last epoch's training loss, the figure the classifier's check compares with the fault-free run's.

    For the classifier that is rank 0's mean loss in the run's ``history.json``, not the test mAUC: two epochs of the
    tiny model score near chance whether they trained one epoch or two, so mAUC cannot tell a run that lost an epoch
    from one that did not; the loss can (about 0.33 after one epoch, 0.16-0.21 after two).
    """
    if stage == "diffusion":
        value = out.get("last_loss")
    else:
        history = read_history(root / "runs" / out["run"] / stage)
        value = history[-1]["train_loss"] if history else None
    return None if value is None else float(value)


def fault_overrides(root: Path, dataset: str, stage: str, epochs: int) -> list[str]:
    """The config overrides (run name aside) of the faulted run and of its fault-free reference: one function, so a
    reference trained elsewhere (a test fixture's) is the same configuration by construction."""
    common = [f"storage.root={root}", f"train.dataset={dataset}", "train.max_failures=2", "train.bootstrap=10"]
    common.append(f"train.epochs={epochs}" if stage == "classifier" else f"diffusion.epochs={epochs}")
    return common


def reference_run(root: Path, dataset: str, stage: str, epochs: int, run: str | None = None) -> ReferenceRun:
    """Trains the fault-free reference of :func:`train_worker_kill` (run ``worker-kill-{stage}-no-fault`` unless
    ``run`` names another) on the current Ray."""
    run = run or f"worker-kill-{stage}-no-fault"
    started_at = time.time()
    result = _run(stage, [*fault_overrides(root, dataset, stage, epochs), f"train.run={run}"])
    return ReferenceRun(stage, run, result, started_at)


def run_begun_after(
    root: Path, dataset: str, epochs: int, since: float, shared: ReferenceRun | None = None
) -> ReferenceRun:
    """A fault-free classifier run with :func:`fault_overrides`' configuration whose training began after ``since``
    (``time.time()``): ``shared`` when it began after ``since``, else one trained here as :data:`OTHER_RUN`.

    A run under another name that begins while a faulted run's checkpoints sit beside it must start at epoch 0; only
    a run begun after those checkpoints existed can show that, whichever test asked for the shared run first.
    """
    if shared is not None and shared.started_at >= since:
        return shared
    return reference_run(root, dataset, "classifier", epochs, run=OTHER_RUN)


def train_worker_kill(
    root: Path,
    dataset: str,
    stage: str,
    epochs: int = REFERENCE_EPOCHS,
    kill_delay_s: float = 1.0,
    timeout_s: float = 600.0,
    reference: dict[str, Any] | Callable[[], ReferenceRun] | None = None,
) -> WorkerKillResult:
    """Kills one Train worker mid-epoch in ``stage`` training and compares the outcome with a fault-free run.

    For the classifier it also looks at a run under another name begun after the faulted run's first checkpoint
    (:func:`run_begun_after`): it must start at epoch 0.

    Args:
        root: the storage root holding the prepared dataset.
        dataset: the prepared dataset's name.
        stage: "classifier" or "diffusion".
        epochs: epochs of the faulted run (and of the reference).
        kill_delay_s: seconds after the first registered checkpoint before the kill, to land inside the next epoch.
        timeout_s: how long the run may take before the scenario gives up.
        reference: the fault-free run of :func:`fault_overrides`' configuration and the same ``epochs``: its
            result (e.g. :attr:`ReferenceRun.result`), or a function giving the run, called after the faulted run
            (a shared run trained on first use then begins after it, and also serves as the run under another
            name); None: one is trained here after the faulted run.

    Raises:
        ValueError: an unknown ``stage``.
        TimeoutError: no checkpoint was registered within ``timeout_s``.
        RuntimeError: the run ended before the kill point, or no Train worker was alive to kill.
    """
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
    while not registered_epochs(folder) and thread.is_alive():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{run}: no checkpoint registered in {timeout_s:.0f} s")
        time.sleep(0.25)
    first_checkpoint = time.time()  # the faulted run's checkpoints exist from here on
    if not thread.is_alive():
        raise RuntimeError(f"{run} ended before the kill point: {out.get('error') or 'finished too fast'}")
    time.sleep(kill_delay_s)  # into the next epoch
    killed_after, reported = max(registered_epochs(folder)), len(read_history(folder))
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

    history = read_history(folder)
    epochs_seen = [int(h["epoch"]) for h in history]
    starts = [int(h.get("start_epoch", 0)) for h in history]
    after = [s for e, s in zip(epochs_seen, starts, strict=True) if e > killed_after]
    resumed_from = min(after) if after else (max(starts) if starts else 0)
    cfg = load_config("tiny", [*common, f"train.run={run}"])
    weights = None if stage == "classifier" else dict(cfg.diffusion.group_weights)
    each_row_once = epochs_saw_each_row_once(history, train_ids(root, dataset, weights), cfg.train.num_workers)
    reference_shared = reference is not None
    if callable(reference):
        ref_run: ReferenceRun | None = reference()
    else:
        ref_run = reference_run(root, dataset, stage, epochs) if reference is None else None
    no_fault = ref_run.result if ref_run is not None else reference
    other = run_begun_after(root, dataset, epochs, first_checkpoint, ref_run).run if stage == "classifier" else ""
    other_history = read_history(root / "runs" / other / stage) if other else []
    result = out.get("result")  # present once the faulted run returned
    reference_history = read_history(root / "runs" / no_fault["run"] / stage)
    figures = WorkerKillResult(
        stage=stage,
        completed="result" in out and not thread.is_alive(),
        error=out.get("error"),
        killed_after_epoch=killed_after,
        reported_before_kill=reported,
        recovery_s=None if recovery is None else round(recovery, 1),
        resumed_from=resumed_from,
        resumed_from_registered=resumed_from >= killed_after + 1,
        resumed_from_latest=resumed_from == reported,
        epochs_unique=epochs_seen == list(range(epochs)),
        each_row_once=each_row_once,
        rows_trained=rows_trained(history),
        rows_trained_no_fault=rows_trained(reference_history),
        epochs_no_fault=[int(h["epoch"]) for h in reference_history],
        final=_final(stage, result, root) if "result" in out else None,
        final_no_fault=_final(stage, no_fault, root),
        test_mauc=result["test"]["mAUC"] if stage == "classifier" and "result" in out else None,
        test_mauc_no_fault=no_fault["test"]["mAUC"] if stage == "classifier" else None,
        reference_shared=reference_shared,
        other_run=other,
        other_run_start_epoch=int(other_history[0].get("start_epoch", -1)) if other_history else -1,
        other_run_epochs=[int(h["epoch"]) for h in other_history],
        seconds=round(seconds, 1),
    )
    log.info("train worker kill: %s", figures)
    return figures
