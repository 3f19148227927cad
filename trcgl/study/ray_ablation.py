"""The ablation study on Ray Tune: a grid over (row, seed), each trial one classifier run, resumable.

Stages of a study of run ``R`` (each skips work already done): ``prepare`` (render PadChest-Synth when that is the
source, prepare the dataset); when a row draws oracle rows, ``oracle`` (the generation plan's rows rendered by
PadChest-Synth's renderer, :mod:`trcgl.data.ray_oracle`); when a row draws synthetic data, ``train_diffusion``,
``reference`` (the baseline row's first seed, trained first because it scores the synthetic images' fidelity; the
grid then finds it finished) and ``generate`` (every generated folder a row draws,
:func:`trcgl.study.rows.generate_configs`: the run's ``synthetic/`` and one ``modes/{mode}/synthetic/`` per
``synthetic_<mode>`` extra, all from the same diffusion model and reference); ``grid`` (Ray Tune's
``BasicVariantGenerator`` over ``grid_search`` of rows and seeds, FIFO, at most ``ablation.max_concurrent_trials`` at
once; a rerun restores the interrupted experiment, and trials of rows that finished replay their recorded epochs
instead of retraining); ``table`` (:func:`trcgl.study.rows.write_outputs`).
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Collection
from typing import Any

from ray import tune

from trcgl.config import Config, ConfigError, apply_overrides, dump_yaml, from_dict, to_dict
from trcgl.data.dataset import load_dataset_info, resolve_dataset_name
from trcgl.data.ray_oracle import oracle_or_skip
from trcgl.diffusion.ray_generate import model_location, reference_location
from trcgl.pipeline.ray_pipeline import (
    Progress,
    baseline_config,
    diffusion_or_skip,
    generate_config,
    generate_or_skip,
    prepare_or_skip,
    train_or_skip,
)
from trcgl.pipeline.report import write_report
from trcgl.ray_runtime import check_cpu_budget, check_gpus, keep_credentials_out_of_tune
from trcgl.storage import Storage, run_dir
from trcgl.study import rows as ab
from trcgl.sweep.ray_sweep import train_or_replay
from trcgl.sweep.ray_tune_console import tune_output

log = logging.getLogger(__name__)

STAGES = ("prepare", "oracle", "train_diffusion", "reference", "generate", "grid", "table")
# stages a rerun reuses only when made from the same inputs; --force STAGE recomputes one ("generate": every generated
# folder of the study; "rows": every row run; "table": the table and pictures of a finished grid, e.g. after an
# upgrade of the table code)
FORCEABLE = ("oracle", "train_diffusion", "reference", "generate", "rows", "table")


def _row_trial(params: dict[str, Any], base: dict[str, Any], ratios: list[float]) -> None:
    """One trial's driver: the row's config for its seed, then its classifier run (or its replay when finished)."""
    cfg = ab.row_config(from_dict(base, "ablation base"), str(params["row"]), int(params["seed"]), tuple(ratios))
    log.info("ablation row %r seed %s: run %s", params["row"], params["seed"], cfg.train.run)
    train_or_replay(cfg, option="--force rows")


def make_tuner(cfg: Config, storage: Storage, ratios: tuple[float, float]) -> tune.Tuner:
    """The grid's Tuner: restored when an experiment of the same grid exists (``ablation/tune-{grid hash}``)."""
    keep_credentials_out_of_tune()  # before Tune defines its trial actors
    trainable = tune.with_resources(
        tune.with_parameters(_row_trial, base=to_dict(cfg), ratios=list(ratios)), {"CPU": cfg.sweep.driver_cpus}
    )
    path = storage.path(run_dir(cfg.train.run, ab.STAGE))
    name = f"tune-{ab.grid_hash(cfg, ratios)}"
    experiment = posixpath.join(path, name)
    if tune.Tuner.can_restore(experiment, storage_filesystem=storage.pyarrow_fs):
        log.info("resuming the ablation grid in %s", storage.uri(run_dir(cfg.train.run, ab.STAGE), name))
        return tune.Tuner.restore(experiment, trainable, resume_errored=True, storage_filesystem=storage.pyarrow_fs)
    return tune.Tuner(
        trainable,
        param_space={"row": tune.grid_search(list(cfg.ablation.rows)), "seed": tune.grid_search(cfg.ablation.seeds)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.ablation.max_concurrent_trials),
        run_config=tune.RunConfig(
            name=name,
            storage_path=path,
            storage_filesystem=storage.pyarrow_fs,
            failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
            **tune_output("val_mAP", len(cfg.ablation.rows) * len(cfg.ablation.seeds)),  # Tune's tables: --verbose
        ),
    )


def run_ablation(cfg: Config, force: Collection[str] = ()) -> dict[str, Any]:
    """Runs (or resumes, or, when finished for the same grid, reads back) the ablation study of ``train.run``.

    Args:
        cfg: the config.
        force: stages of :data:`FORCEABLE` to recompute whatever their outputs were made from; ``rows`` clears the
            whole ``ablation/`` folder (every row run, the grid's experiment, the table).

    Raises:
        trcgl.records.StaleStageError: a stage's (or a row's) outputs were made from other config values.

    Returns:
        The study's report: rows, seeds, ratios and their source, rows without results, output folder.
    """
    unknown = sorted(set(force) - set(FORCEABLE))
    if unknown:
        raise ConfigError(f"--force names unknown stages {unknown}; forceable stages: {list(FORCEABLE)}")
    ab.check_ablation(cfg)
    storage = Storage(cfg.storage.root, cfg.storage)
    storage.check_writable()
    if cfg.train.use_gpu:
        check_gpus(cfg.train.gpus_per_worker, cfg.ray.autoscaling, "train.gpus_per_worker")
    check_cpu_budget(cfg, cfg.ablation.max_concurrent_trials, cfg.sweep.driver_cpus)
    run = cfg.train.run
    progress = Progress(run, STAGES)
    t0 = time.perf_counter()

    progress.stage("prepare", lambda: prepare_or_skip(cfg))
    cfg = apply_overrides(cfg, {"train.dataset": resolve_dataset_name(cfg, storage)}, "ablation")
    info = load_dataset_info(storage, cfg.train.dataset)
    tail, medium, source = ab.study_ratios(cfg, storage)
    out = run_dir(run, ab.STAGE)
    if "rows" in force:
        log.info("ablation %s: --force rows: clearing %s", run, storage.uri(out))
        storage.delete(out)
    manifest = storage.manifest(out)
    finished_grid = manifest is not None and manifest.get("grid") == ab.grid_hash(cfg, (tail, medium))
    if finished_grid and manifest.get("table") == ab.table_hash(cfg) and "table" not in force:
        log.info("ablation %s already finished for this grid: %s", run, storage.uri(out, "table.md"))
        return storage.read_json(posixpath.join(out, "ablation_report.json")) | {"skipped": True}
    if finished_grid:  # the rows are found finished and replayed; only the table is computed again
        log.info("ablation %s: grid finished, writing its table again (changed table settings or --force table)", run)
    storage.write_text(posixpath.join(out, "ablation_config.yaml"), dump_yaml(cfg))
    log.info(
        "ablation %s: %d rows x %d seeds, extra rows at tail ratio %g / medium %g from %s",
        run,
        len(cfg.ablation.rows),
        len(cfg.ablation.seeds),
        tail,
        medium,
        source,
    )
    if ab.needs_oracle(cfg):  # before the reference, which may be a row that draws oracle rows
        progress.stage("oracle", lambda: oracle_or_skip(cfg, "oracle" in force, "--force oracle"))
    if ab.needs_generation(cfg):
        progress.stage(
            "train_diffusion",
            lambda: diffusion_or_skip(cfg, storage, "train_diffusion" in force, "--force train_diffusion"),
        )
        baseline_row = cfg.ablation.rows[cfg.ablation.baseline]
        if ab.row_extra(baseline_row) in ab.GENERATED_EXTRAS:  # it cannot score the data it is trained on
            ref_cfg = baseline_config(cfg)
        else:
            ref_cfg = ab.row_config(cfg, cfg.ablation.baseline, cfg.ablation.seeds[0], (tail, medium))
        reference = progress.stage(
            "reference", lambda: train_or_skip(ref_cfg, storage, "reference" in force, "--force reference")
        )["summary"]
        progress.stage(
            "generate", lambda: generate_all(cfg, storage, reference["best_checkpoint"], "generate" in force)
        )

    def grid() -> dict[str, Any]:
        results = make_tuner(cfg, storage, (tail, medium)).fit()
        errors = [str(results[i].error)[:300] for i in range(len(results)) if results[i].error is not None]
        for error in errors:
            log.warning("ablation %s: a row failed: %s", run, error)
        return {"record": {"trials": len(results), "errored": len(errors)}}

    progress.stage("grid", grid)
    report = progress.stage(
        "table",
        lambda: {"report": ab.write_outputs(cfg, storage, info, (tail, medium, source), time.perf_counter() - t0)},
    )["report"]
    report["run_report"] = refresh_run_report(storage, run)
    return report | {"stages": progress.stages}


def generate_all(cfg: Config, storage: Storage, reference: str, force: bool = False) -> dict[str, Any]:
    """Makes every generated folder the study's rows draw (:func:`trcgl.study.rows.generate_configs`), each skipped
    when published from the same inputs, all from the study run's diffusion model and scored by ``reference``.

    Returns:
        ``skipped`` when every folder was, and a record of images (and filtered images) per folder.
    """
    gen_cfg = generate_config(cfg, reference)
    model, pinned = model_location(gen_cfg, storage), reference_location(gen_cfg, storage)
    done = {
        folder: generate_or_skip(one, storage, reference, force, "--force generate")
        for folder, one in ab.generate_configs(cfg, model, pinned).items()
    }
    return {
        "skipped": all(out.get("skipped", False) for out in done.values()),
        "record": {folder: out.get("record", {"skipped": True}) for folder, out in done.items()},
    }


def refresh_run_report(storage: Storage, run: str) -> str | None:
    """Rewrites the run's pipeline report (when the pipeline ran) so that it includes the ablation table."""
    import yaml

    summary_rel, config_rel = posixpath.join(run_dir(run), "summary.json"), posixpath.join(run_dir(run), "config.yaml")
    if not (storage.exists(summary_rel) and storage.exists(config_rel)):
        return None
    pipeline_cfg = from_dict(yaml.safe_load(storage.read_bytes(config_rel)), f"file {storage.uri(config_rel)}")
    sweep = None
    if storage.manifest(run_dir(run, "sweep")) is not None:
        sweep = storage.read_json(posixpath.join(run_dir(run, "sweep"), "sweep_report.json"))
    uri = write_report(pipeline_cfg, storage, storage.read_json(summary_rel), sweep)["uri"]
    log.info("run report with the ablation table: %s", uri)
    return uri
