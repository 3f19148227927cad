"""The sweep: Ray Tune + Optuna (TPE, seeded) + ASHA over classifier runs, resumable with ``Tuner.restore``.

Each trial is a small driver function that builds the trial's typed config (the sweep's config with the sampled
values as overrides, run name ``{run}/sweep/trials/{trial_id}``) and runs the classifier job with Tune's
``TuneReportCallback``, so every epoch's validation metrics reach Tune and ASHA can stop weak trials.

Outputs under ``{root}/runs/{run}/sweep/``: ``tune/`` (Ray Tune's experiment, what ``Tuner.restore`` resumes),
``trials/{trial_id}/`` (each trial's classifier run), ``leaderboard.parquet``, ``best_config.yaml``,
``sweep_report.json``, ``plots/*.png`` and, last, ``_manifest.json``.
"""

from __future__ import annotations

import logging
import posixpath
import re
import time
from typing import Any

import pandas as pd
import pyarrow as pa
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from trcgl import records
from trcgl.config import Config, ConfigError, apply_overrides, dump_yaml, from_dict, to_dict
from trcgl.data.dataset import resolve_dataset_name
from trcgl.ray_runtime import check_cpu_budget, check_gpus, keep_credentials_out_of_tune
from trcgl.storage import Storage, run_dir
from trcgl.sweep import leaderboard as lb
from trcgl.sweep.ray_tune_console import tune_output
from trcgl.sweep.space import SYNTHETIC_SET, clean_value, searched_folders, trial_config
from trcgl.train import ray_train

log = logging.getLogger(__name__)

STAGE = "sweep"
EXPERIMENT = "tune"


def tune_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ray Tune domains of a checked space (OptunaSearch converts them to Optuna distributions)."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        kind = spec["type"]
        if kind == "choice":
            out[key] = tune.choice(list(spec["values"]))
        elif kind == "uniform":
            out[key] = tune.uniform(float(spec["low"]), float(spec["high"]))
        elif kind == "loguniform":
            out[key] = tune.loguniform(float(spec["low"]), float(spec["high"]))
        else:
            out[key] = tune.randint(int(spec["low"]), int(spec["high"]) + 1)  # inclusive high
    return out


def trial_run(run: str, trial_id: str) -> str:
    """The run name of one trial's classifier (derived from the trial id, never a timestamp)."""
    return f"{run}/{STAGE}/trials/{trial_id}"


def _trial(params: dict[str, Any], base: dict[str, Any], run: str) -> None:
    """One trial's driver: the trial config, then the classifier job reporting each epoch to Tune."""
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(from_dict(base, "sweep base"), params, trial_run(run, trial_id), run)
    log.info("trial %s: %s", trial_id, {k: clean_value(v) for k, v in params.items()})
    train_or_replay(cfg)


def train_or_replay(cfg: Config, option: str = "--force") -> None:
    """Inside a Tune trial: trains ``train.run`` reporting each epoch to Tune, or, when that run already finished
    from the same inputs (its summary exists), reports its recorded epochs again instead of retraining.

    Args:
        cfg: the trial's config.
        option: the command-line option that recomputes a run made from other values, for the error.
    """
    storage = Storage(cfg.storage.root, cfg.storage)
    classifier = run_dir(cfg.train.run, "classifier")
    state = ray_train.claim_output(cfg, storage, resolve_dataset_name(cfg, storage), option=option)
    if state == "same" and storage.exists(f"{classifier}/summary.json"):
        # finished before the sweep's driver was killed, but Tune had not recorded it: replay its epochs, don't retrain
        log.info("run %s already finished: reporting its recorded epochs", cfg.train.run)
        for epoch in storage.read_json(f"{classifier}/history.json"):  # the metrics, as the run reported them
            tune.report({k: v for k, v in epoch.items() if k not in ray_train.PLACEMENT_KEYS})
        return
    ray_train.run_training(cfg, callbacks=[TuneReportCallback()])


def trial_epochs(cfg: Config) -> int:
    """Epochs per trial."""
    return cfg.sweep.max_epochs or cfg.train.epochs


def sweep_base(cfg: Config, storage: Storage) -> Config:
    """The config every trial starts from (epochs per trial, dataset pinned), after checking its inputs exist.

    Raises:
        ConfigError: a synthetic folder the space draws from has not been generated (no manifest).
    """
    dataset = resolve_dataset_name(cfg, storage)
    base = apply_overrides(cfg, {"train.epochs": trial_epochs(cfg), "train.dataset": dataset}, "sweep")
    for folder in searched_folders(cfg.sweep.space):
        rel = run_dir(cfg.train.run, folder)
        if storage.manifest(rel) is None:
            hint = ""
            if folder == "synthetic_filtered":
                hint = " with generate.fidelity_threshold or fidelity_keep_fraction set"
            raise ConfigError(
                f"config key 'sweep.space.{SYNTHETIC_SET}' draws from {storage.uri(rel)!r}, which has no manifest: "
                f"run jobs.generate for run {cfg.train.run!r}{hint} first, or drop {folder!r} from the space"
            )
    return base


def stage_record(cfg: Config, storage: Storage, dataset: str) -> dict[str, Any]:
    """What ``sweep/`` is made from (:func:`trcgl.records.sweep_record`)."""
    folders = [run_dir(cfg.train.run, f) for f in searched_folders(cfg.sweep.space)]
    return records.sweep_record(cfg, storage, dataset, folders)


def claim_output(cfg: Config, storage: Storage, dataset: str, force: bool = False, option: str = "--force") -> str:
    """Claims ``sweep/`` (its trials included) for this config (:func:`trcgl.records.claim`)."""
    return records.claim(storage, run_dir(cfg.train.run, STAGE), stage_record(cfg, storage, dataset), option, force)


def make_tuner(cfg: Config, storage: Storage, base: Config) -> tune.Tuner:
    """A new Tuner, or the interrupted one restored from ``sweep/tune`` when it exists (same command resumes)."""
    keep_credentials_out_of_tune()  # before Tune defines its trial actors
    sw = cfg.sweep
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=to_dict(base), run=cfg.train.run), {"CPU": sw.driver_cpus}
    )
    sweep_path = storage.path(run_dir(cfg.train.run, STAGE))
    experiment = posixpath.join(sweep_path, EXPERIMENT)
    if tune.Tuner.can_restore(experiment, storage_filesystem=storage.pyarrow_fs):
        log.info("resuming the sweep in %s", storage.uri(run_dir(cfg.train.run, STAGE), EXPERIMENT))
        return tune.Tuner.restore(experiment, trainable, resume_errored=True, storage_filesystem=storage.pyarrow_fs)
    if sw.scheduler == "asha":
        # max_t one past the last epoch: ASHA only ever stops a trial at a rung below it, so a trial that earns
        # all its epochs returns on its own and evaluates its best epoch on test (a stop at max_t would kill it)
        scheduler: Any = ASHAScheduler(
            time_attr="training_iteration",
            max_t=trial_epochs(cfg) + 1,
            grace_period=min(sw.grace_period, trial_epochs(cfg)),
            reduction_factor=sw.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=tune_space(sw.space),
        tune_config=tune.TuneConfig(
            metric=sw.metric,
            mode="max",
            search_alg=OptunaSearch(seed=sw.seed),
            scheduler=scheduler,
            num_samples=sw.num_samples,
            max_concurrent_trials=sw.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT,
            storage_path=sweep_path,
            storage_filesystem=storage.pyarrow_fs,
            failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
            **tune_output(sw.metric, sw.num_samples),  # one line per ended trial; Tune's tables with --verbose
        ),
    )


def _record(result: Any, cfg: Config, storage: Storage) -> dict[str, Any]:
    """One trial's record for the leaderboard, from Tune's result and the trial's own outputs."""
    trial_id = (result.metrics or {}).get("trial_id")
    if not trial_id:  # a trial that errored before its first report: the id is in its folder name
        found = re.search(r"_([0-9a-f]{8})_\d+_", posixpath.basename(str(result.path)))
        trial_id = found.group(1) if found else posixpath.basename(str(result.path))
    classifier = run_dir(trial_run(cfg.train.run, trial_id), "classifier")
    history: list[dict[str, Any]] = []
    if storage.exists(f"{classifier}/history.json"):
        history = storage.read_json(f"{classifier}/history.json")
    summary = storage.read_json(f"{classifier}/summary.json") if storage.exists(f"{classifier}/summary.json") else {}
    metrics = result.metrics or {}
    error = None if result.error is None else f"{type(result.error).__name__}: {result.error}"[:500]
    finished = bool(summary)
    return {
        "trial_id": trial_id,
        "params": {k: clean_value(v) for k, v in (result.config or {}).items()},
        "history": history,
        "test": summary.get("test"),
        "stopped_early": not finished and error is None and len(history) < trial_epochs(cfg),
        "error": error,
        "wall_seconds": metrics.get("time_total_s", 0.0),
        "checkpoint": storage.uri(classifier, "best") if storage.exists(f"{classifier}/best/meta.json") else None,
        "started": float(metrics.get("timestamp", 0.0)) - float(metrics.get("time_total_s", 0.0)),
    }


def run_sweep(cfg: Config, force: bool = False) -> dict[str, Any]:
    """Runs (or resumes, or, when finished, reads back) the sweep of ``train.run``; writes the leaderboard.

    Args:
        cfg: the config.
        force: recompute even when ``sweep/`` was made from other config values (it is cleared first).

    Raises:
        trcgl.records.StaleStageError: ``sweep/`` was made from other values and ``force`` is off.

    Returns:
        The sweep report: trials, finished/stopped/errored counts, the best trial and its params, output folder.
    """
    t0 = time.perf_counter()
    storage = Storage(cfg.storage.root, cfg.storage)
    storage.check_writable()
    if cfg.train.use_gpu:
        check_gpus(cfg.train.gpus_per_worker, cfg.ray.autoscaling, "train.gpus_per_worker")
    check_cpu_budget(cfg, cfg.sweep.max_concurrent_trials, cfg.sweep.driver_cpus)
    base = sweep_base(cfg, storage)
    claim_output(cfg, storage, base.train.dataset or "", force)
    out = run_dir(cfg.train.run, STAGE)
    storage.write_text(posixpath.join(out, "sweep_config.yaml"), dump_yaml(cfg))
    tuner = make_tuner(cfg, storage, base)
    log.info(
        "sweep %s: %d trials (%d at a time), %d epochs each, scheduler %s, %d searched keys",
        cfg.train.run,
        cfg.sweep.num_samples,
        cfg.sweep.max_concurrent_trials,
        trial_epochs(cfg),
        cfg.sweep.scheduler,
        len(cfg.sweep.space),
    )
    grid = tuner.fit()
    records = [_record(grid[i], cfg, storage) for i in range(len(grid))]
    return write_outputs(cfg, storage, base, records, time.perf_counter() - t0)


def write_outputs(
    cfg: Config, storage: Storage, base: Config, records: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """Leaderboard, best config, plots and report of a finished sweep; published last."""
    out = run_dir(cfg.train.run, STAGE)
    metric = cfg.sweep.metric
    board = lb.leaderboard_frame(records, metric)
    if board.empty or board[metric].isna().all():
        errors = "; ".join(str(r["error"]) for r in records if r["error"])[:1000]
        raise RuntimeError(f"sweep {cfg.train.run!r}: no trial reported {metric} ({errors or 'no trials ran'})")
    storage.write_parquet(posixpath.join(out, "leaderboard.parquet"), pa.Table.from_pandas(board, preserve_index=False))
    best = board.iloc[0]
    best_params = {k: v for k, v in next(r["params"] for r in records if r["trial_id"] == best["trial_id"]).items()}
    best_cfg = trial_config(base, best_params, trial_run(cfg.train.run, str(best["trial_id"])), cfg.train.run)
    storage.write_text(posixpath.join(out, "best_config.yaml"), dump_yaml(best_cfg))
    order = [r["trial_id"] for r in sorted(records, key=lambda r: (r["started"], r["trial_id"]))]
    plots = {"history": lb.optimisation_history(board, order, metric)}
    importances = lb.param_importances(board, cfg.sweep.space, metric, cfg.sweep.seed)
    for name, png in (("importances", lb.importances_plot(importances)), ("tail_vs_ratio", lb.tail_vs_ratio(board))):
        if png is not None:
            plots[name] = png
    for name, png in plots.items():
        storage.write_bytes(posixpath.join(out, "plots", f"{name}.png"), png)
    report = {
        "run": cfg.train.run,
        "trials": len(board),
        "finished": int(board["test_mAP"].notna().sum()),
        "stopped_early": int(board["stopped_early"].sum()),
        "errored": int(board["error"].notna().sum()),
        "metric": metric,
        "best_trial": str(best["trial_id"]),
        "best_value": float(best[metric]),
        "best_params": best_params,
        "best_run": trial_run(cfg.train.run, str(best["trial_id"])),
        "best_finished": bool(pd.notna(best["test_mAP"])),
        "importances": importances,
        "plots": sorted(plots),
        "seconds": round(seconds, 1),
        "output": storage.uri(out),
    }
    storage.write_json(posixpath.join(out, "sweep_report.json"), report)
    storage.publish(out, {"stage": "sweep", "best_trial": report["best_trial"]})
    log.info("sweep %s: best trial %s %s=%.4f", cfg.train.run, report["best_trial"], metric, report["best_value"])
    return report
