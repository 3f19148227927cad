"""The whole method in order, each stage skipping work already done for the same config.

Stages of run ``R`` (``train.run``), all under ``{root}/runs/R/``:

1. ``prepare``: render PadChest-Synth when that is the source, then prepare the dataset.
2. ``train_diffusion`` → ``diffusion/model/``.
3. ``baseline`` → ``baseline/classifier/``: the plain reference (``pipeline.baseline`` overrides: no synthetic data,
   no GCN), trained the same way as the best config. Trained before generation because it is also the reference
   classifier that scores the synthetic images' fidelity.
4. ``generate`` → ``synthetic/`` (and ``synthetic_filtered/`` with ``generate.fidelity_threshold`` or
   ``generate.fidelity_keep_fraction``).
5. ``sweep`` → ``sweep/`` (Ray Tune + Optuna + ASHA); with ``sweep.enabled=false`` the config is trained as is.
6. ``final`` → ``final/classifier/``: the best config trained for ``pipeline.final_epochs`` (the best trial itself is
   reused when it already ran those epochs to the end: retraining it with the same seed would repeat it).
7. ``report`` → ``summary.json`` and ``report/report.html``.

Each stage's own ``ray_*`` module does its Ray work; this module only sequences them and decides what to skip.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Callable
from typing import Any

import yaml

from trcgl.config import Config, ConfigError, apply_overrides, config_hash, dump_yaml, filters_fidelity, from_dict
from trcgl.data.dataset import resolve_dataset_name
from trcgl.data.ray_prepare import run_prepare
from trcgl.data.ray_synth import run_synthesize
from trcgl.diffusion.ray_diffusion import run_train_diffusion
from trcgl.diffusion.ray_generate import run_generate
from trcgl.metrics import TABLE_METRICS
from trcgl.pipeline.report import write_report
from trcgl.storage import Storage, run_dir
from trcgl.sweep.ray_sweep import STAGE as SWEEP_STAGE
from trcgl.sweep.ray_sweep import run_sweep
from trcgl.sweep.space import searched_folders
from trcgl.train.ray_train import run_training

log = logging.getLogger(__name__)

STAGES = ("prepare", "train_diffusion", "baseline", "generate", "sweep", "final", "report")


class Progress:
    """Logs each stage's start, end, elapsed time and what was skipped; collects the per-stage record."""

    def __init__(self, run: str, stages: tuple[str, ...] = STAGES) -> None:
        self.run = run
        self.names = stages
        self.t0 = time.perf_counter()
        self.stages: dict[str, dict[str, Any]] = {}

    def stage(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Runs one stage and records ``seconds`` and ``skipped`` (when ``fn`` says so)."""
        i = self.names.index(name) + 1
        log.info(
            "[%s] stage %d/%d %s: starting (%.0f s into the pipeline)",
            self.run,
            i,
            len(self.names),
            name,
            time.perf_counter() - self.t0,
        )
        t = time.perf_counter()
        out = fn() or {}
        seconds = round(time.perf_counter() - t, 1)
        self.stages[name] = {"seconds": seconds, "skipped": bool(out.get("skipped", False)), **out.get("record", {})}
        log.info(
            "[%s] stage %d/%d %s: %s in %.1f s",
            self.run,
            i,
            len(self.names),
            name,
            "skipped (already done)" if self.stages[name]["skipped"] else "done",
            seconds,
        )
        return out


def baseline_config(cfg: Config) -> Config:
    """The baseline run's config: the base config with ``pipeline.baseline`` set, run ``R/baseline``."""
    values = {**cfg.pipeline.baseline, "train.run": f"{cfg.train.run}/baseline", "train.synthetic": []}
    return apply_overrides(cfg, values, "pipeline.baseline")


def check_pipeline(cfg: Config) -> None:
    """Checks before any work that the stages asked for can be done together.

    Raises:
        ConfigError: the sweep draws from ``synthetic_filtered`` but no fidelity threshold makes it, or the sweep
            draws synthetic data while diffusion is off.
    """
    folders = searched_folders(cfg.sweep.space) if cfg.sweep.enabled else []
    if "synthetic_filtered" in folders and not filters_fidelity(cfg):
        raise ConfigError(
            "config key 'sweep.space.synthetic_set' draws from synthetic_filtered but generate.fidelity_threshold "
            "and generate.fidelity_keep_fraction are null, so nothing makes it: set one or drop synthetic_filtered "
            "from the space"
        )
    if folders and not cfg.pipeline.diffusion:
        raise ConfigError(
            "config key 'sweep.space.synthetic_set' draws synthetic data but pipeline.diffusion is false: "
            "turn diffusion on or drop synthetic_set from the space"
        )
    baseline_config(cfg)  # the overrides are checked now, not after an hour of work


def _classifier_summary(storage: Storage, run: str) -> dict[str, Any] | None:
    rel = posixpath.join(run_dir(run, "classifier"), "summary.json")
    return storage.read_json(rel) if storage.exists(rel) else None


def train_or_skip(cfg: Config, storage: Storage) -> dict[str, Any]:
    """Trains ``train.run`` unless its summary exists (then it is read back)."""
    done = _classifier_summary(storage, cfg.train.run)
    if done is not None:
        return {"skipped": True, "summary": done}
    return {"summary": run_training(cfg)}


def diffusion_or_skip(cfg: Config, storage: Storage) -> dict[str, Any]:
    """Trains the run's diffusion model unless it is published for the same diffusion config and dataset.

    Raises:
        ConfigError: the published model was trained with another diffusion config (choose another run name).
    """
    model = posixpath.join(run_dir(cfg.train.run, "diffusion"), "model")
    manifest = storage.manifest(model)
    want = config_hash(cfg.diffusion)
    if manifest is not None:
        if manifest.get("diffusion_config") not in (None, want):
            raise ConfigError(
                f"run {cfg.train.run!r} already has a diffusion model trained with another diffusion config "
                f"({storage.uri(model)}); choose a new train.run or delete that folder"
            )
        return {"skipped": True}
    out = run_train_diffusion(cfg)
    return {"record": {"last_loss": out.get("last_loss"), "epochs": out.get("epochs")}}


def generate_or_skip(cfg: Config, storage: Storage, reference: str) -> dict[str, Any]:
    """Generates the run's synthetic tail images (fidelity scored by ``reference``) unless published."""
    synthetic = run_dir(cfg.train.run, "synthetic")
    if storage.manifest(synthetic) is not None:
        report = storage.read_json(posixpath.join(synthetic, "generate_report.json"))
        return {"skipped": True, "report": report}
    gen_cfg = apply_overrides(cfg, {"generate.reference_checkpoint": reference}, "pipeline")
    report = run_generate(gen_cfg)
    return {"report": report, "record": {"images": report["images"], "filtered": report.get("filtered")}}


def sweep_or_single(cfg: Config, storage: Storage) -> dict[str, Any]:
    """The sweep (resumed or read back when done), or nothing when the sweep is off."""
    if not cfg.sweep.enabled:
        return {"skipped": True, "record": {"disabled": True}}
    out = run_dir(cfg.train.run, SWEEP_STAGE)
    if storage.manifest(out) is not None:
        return {"skipped": True, "report": storage.read_json(posixpath.join(out, "sweep_report.json"))}
    report = run_sweep(cfg)
    return {"report": report, "record": {k: report[k] for k in ("trials", "finished", "stopped_early", "errored")}}


def final_config(cfg: Config, storage: Storage, sweep_report: dict[str, Any] | None) -> tuple[Config, str | None]:
    """The final run's config and, when the best trial can stand for it, that trial's run name.

    Returns:
        (config of ``R/final``, the best trial's run when it already ran the final epochs to the end, else None).
    """
    epochs = cfg.pipeline.final_epochs or cfg.train.epochs
    if sweep_report is None:
        return apply_overrides(cfg, {"train.run": f"{cfg.train.run}/final", "train.epochs": epochs}, "final"), None
    best_yaml = posixpath.join(run_dir(cfg.train.run, "sweep"), "best_config.yaml")
    best = from_dict(yaml.safe_load(storage.read_bytes(best_yaml)), f"file {storage.uri(best_yaml)}")
    trial_run = sweep_report["best_run"]
    reuse = trial_run if sweep_report.get("best_finished") and best.train.epochs == epochs else None
    final = apply_overrides(best, {"train.run": f"{cfg.train.run}/final", "train.epochs": epochs}, "final")
    return final, reuse


def row_of(name: str, summary: dict[str, Any]) -> dict[str, Any]:
    """A summary-table row: the test metrics with their intervals."""
    test = summary["test"]
    return {
        "name": name,
        "run": summary["run"],
        **{m: test.get(m) for m in TABLE_METRICS},
        "ci": {m: test.get("ci", {}).get(m) for m in TABLE_METRICS},
        "synthetic_rows": summary.get("train_rows", {}).get("synthetic", 0),
    }


def prepare_or_skip(cfg: Config) -> dict[str, Any]:
    """Renders PadChest-Synth when that is the source (no images given), then prepares the dataset; each job skips
    what is already done for the same config."""
    if cfg.data.source == "padchest-synth" and cfg.data.images is None:
        run_synthesize(cfg)
    report = run_prepare(cfg)
    return {"skipped": bool(report.get("skipped")), "record": {"dataset": report.get("dataset")}}


def run_pipeline(cfg: Config) -> dict[str, Any]:
    """Runs every stage of ``train.run`` in order (skipping finished ones) and writes the summary and report.

    Returns:
        The pipeline summary (also ``{root}/runs/{run}/summary.json``): stages, the summary rows, the report URI.
    """
    check_pipeline(cfg)
    storage = Storage(cfg.storage.root, cfg.storage)
    storage.check_writable()
    run = cfg.train.run
    progress = Progress(run)
    storage.write_text(posixpath.join(run_dir(run), "config.yaml"), dump_yaml(cfg))

    progress.stage("prepare", lambda: prepare_or_skip(cfg))
    dataset = resolve_dataset_name(cfg, storage)
    cfg = apply_overrides(cfg, {"train.dataset": dataset}, "pipeline")
    if cfg.pipeline.diffusion:
        progress.stage("train_diffusion", lambda: diffusion_or_skip(cfg, storage))
    base_cfg = baseline_config(cfg)
    baseline = progress.stage("baseline", lambda: train_or_skip(base_cfg, storage))["summary"]
    generated = None
    if cfg.pipeline.diffusion:
        generated = progress.stage("generate", lambda: generate_or_skip(cfg, storage, baseline["best_checkpoint"])).get(
            "report"
        )
    sweep = progress.stage("sweep", lambda: sweep_or_single(cfg, storage)).get("report")
    final_cfg, reuse = final_config(cfg, storage, sweep)

    def final() -> dict[str, Any]:
        if reuse is not None:
            summary = _classifier_summary(storage, reuse)
            if summary is not None:
                return {"skipped": True, "summary": summary, "record": {"reused": reuse}}
        return train_or_skip(final_cfg, storage)

    best = progress.stage("final", final)["summary"]
    rows = [row_of("best", best), row_of("baseline", baseline)]
    summary: dict[str, Any] = {
        "run": run,
        "dataset": dataset,
        "stages": progress.stages,
        "rows": rows,
        "best_run": best["run"],
        "best_params": (sweep or {}).get("best_params"),
        "synthetic": None
        if generated is None
        else {k: generated.get(k) for k in ("images", "output", "filtered", "fidelity")},
    }
    report_uri = progress.stage("report", lambda: write_report(cfg, storage, summary, sweep))["uri"]
    summary["report"] = report_uri
    summary["stages"] = progress.stages
    summary["seconds"] = round(time.perf_counter() - progress.t0, 1)
    storage.write_json(posixpath.join(run_dir(run), "summary.json"), summary)
    return summary
