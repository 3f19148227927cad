"""The whole method in order, each stage skipping work already done for the same config.

Stages of run ``R`` (``train.run``), all under ``{root}/runs/R/``:

1. ``prepare``: render PadChest-Synth when that is the source, then prepare the dataset.
2. ``train_diffusion`` → ``diffusion/model/``.
3. ``baseline`` → ``baseline/classifier/``: the plain reference (``pipeline.baseline`` overrides: no synthetic data,
   no GCN), trained the same way as the best config. Trained before generation because it is also the reference
   classifier that scores the synthetic images' fidelity.
4. ``generate`` → ``synthetic/`` (and ``synthetic_filtered/`` with ``generate.fidelity_threshold`` or
   ``generate.fidelity_keep_fraction``).
5. ``oracle`` → ``oracle/`` and ``controls`` → ``controls/{extra}/classifier/`` (only with ``pipeline.controls``):
   the baseline retrained with each named source of extra rows (``real`` copies, the run's ``synthetic`` images,
   ``oracle`` rows rendered by PadChest-Synth for the same plan) at the generate ratios, so the summary reads the
   generator against duplication and against a perfect generator.
6. ``sweep`` → ``sweep/`` (Ray Tune + Optuna + ASHA); with ``sweep.enabled=false`` the config is trained as is.
7. ``final`` → ``final/classifier/``: the best config trained for ``pipeline.final_epochs`` (the best trial itself is
   reused when it already ran those epochs to the end: retraining it with the same seed would repeat it).
8. ``report`` → ``summary.json`` and ``report/report.html``.

Each stage's own ``ray_*`` module does its Ray work; this module only sequences them and decides what to skip.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Callable, Collection
from typing import Any

import yaml

from trcgl import records
from trcgl.config import Config, ConfigError, apply_overrides, dump_yaml, filters_fidelity, from_dict
from trcgl.data.dataset import resolve_dataset_name
from trcgl.data.ray_oracle import oracle_or_skip
from trcgl.data.ray_prepare import run_prepare
from trcgl.data.ray_synth import run_synthesize
from trcgl.data.synth.oracle import check_source, oracle_record
from trcgl.diffusion import ray_diffusion, ray_generate
from trcgl.metrics import TABLE_METRICS
from trcgl.pipeline.report import write_report
from trcgl.storage import GENERATE_REPORT, Storage, run_dir
from trcgl.sweep import ray_sweep
from trcgl.sweep.space import searched_folders
from trcgl.train import ray_train

log = logging.getLogger(__name__)

STAGES = ("prepare", "train_diffusion", "baseline", "generate", "oracle", "controls", "sweep", "final", "report")
# stages whose outputs a rerun reuses only when made from the same inputs; --force STAGE recomputes one
FORCEABLE = ("train_diffusion", "baseline", "generate", "oracle", "controls", "sweep", "final")
# pipeline.controls values (the train.extra_source of each control run) and their summary rows' names
CONTROL_ROWS = {
    "real": "baseline + duplicated tail rows",
    "synthetic": "baseline + synthetic rows",
    "oracle": "baseline + oracle rows",
}
CONTROL_EXTRAS = tuple(CONTROL_ROWS)


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


def control_config(cfg: Config, extra: str) -> Config:
    """The control run of one source of extra rows: the baseline's config with ``train.extra_source=extra`` at the
    generate ratios (``generate.aug_ratio_tail`` / ``aug_ratio_medium``), run ``R/controls/{extra}``.

    Every control adds the same number of extra positives per class (``ratio x train positives``; a row carrying
    two tail classes counts for both, so row totals differ with the sources' co-occurrence), so the runs differ only
    in where the extra rows come from: ``synthetic`` reads ``synthetic/`` (unfiltered: the generator as it is),
    ``oracle`` reads ``oracle/``.
    """
    run = cfg.train.run
    values = {
        "train.run": f"{run}/controls/{extra}",
        "train.aug_ratio_tail": cfg.generate.aug_ratio_tail,
        "train.aug_ratio_medium": cfg.generate.aug_ratio_medium,
        "train.extra_source": extra,
        "train.synthetic": [run_dir(run, "synthetic")] if extra == "synthetic" else [],
        "train.oracle": run_dir(run, records.ORACLE_STAGE) if extra == "oracle" else None,
    }
    return apply_overrides(baseline_config(cfg), values, "pipeline.controls")


def controls_or_skip(cfg: Config, storage: Storage, force: bool = False, option: str = "--force") -> dict[str, Any]:
    """Trains the control runs of ``pipeline.controls`` (each skipped when finished from the same inputs).

    Returns:
        ``summaries`` ({extra: summary}), ``skipped`` (every run was), and the per-run record.
    """
    if not cfg.pipeline.controls:
        return {"skipped": True, "summaries": {}, "record": {"disabled": True}}
    outs = {extra: train_or_skip(control_config(cfg, extra), storage, force, option) for extra in cfg.pipeline.controls}
    return {
        "skipped": all(o.get("skipped") for o in outs.values()),
        "summaries": {extra: o["summary"] for extra, o in outs.items()},
        "record": {"runs": {extra: o["summary"]["run"] for extra, o in outs.items()}},
    }


def check_pipeline(cfg: Config) -> None:
    """Checks before any work that the stages asked for can be done together.

    Raises:
        ConfigError: the sweep draws from ``synthetic_filtered`` but no fidelity threshold makes it, the sweep or a
            control draws synthetic data while diffusion is off, ``pipeline.controls`` names an unknown source, or
            the oracle control is asked for on a source other than PadChest-Synth.
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
    unknown = [c for c in cfg.pipeline.controls if c not in CONTROL_EXTRAS]
    if unknown:
        raise ConfigError(
            f"config key 'pipeline.controls' takes values of {list(CONTROL_EXTRAS)}, got {unknown} in "
            f"{cfg.pipeline.controls}"
        )
    if "synthetic" in cfg.pipeline.controls and not cfg.pipeline.diffusion:
        raise ConfigError(
            "config key 'pipeline.controls' names synthetic but pipeline.diffusion is false, so no images are made: "
            "turn diffusion on or drop synthetic from pipeline.controls"
        )
    if "oracle" in cfg.pipeline.controls:
        check_source(cfg)
    baseline_config(cfg)  # the overrides are checked now, not after an hour of work
    for extra in cfg.pipeline.controls:
        control_config(cfg, extra)


def _classifier_summary(storage: Storage, run: str) -> dict[str, Any] | None:
    rel = posixpath.join(run_dir(run, "classifier"), "summary.json")
    return storage.read_json(rel) if storage.exists(rel) else None


def train_or_skip(
    cfg: Config, storage: Storage, force: bool = False, option: str = "--force", upstream: dict | None = None
) -> dict[str, Any]:
    """Trains ``train.run`` unless it finished from the same inputs (then its summary is read back).

    Args:
        cfg: the run's config.
        storage: the storage root.
        force: recompute even when the run was made from other config values.
        option: the command-line option that forces this stage, for the error.
        upstream: extra inputs the run depends on (record hashes of upstream stages), recorded with it.
    """
    dataset = resolve_dataset_name(cfg, storage)
    state = ray_train.claim_output(cfg, storage, dataset, force, option, upstream)
    done = _classifier_summary(storage, cfg.train.run) if state == "same" else None
    if done is not None:
        return {"skipped": True, "summary": done}
    return {"summary": ray_train.run_training(cfg, upstream=upstream)}


def diffusion_or_skip(cfg: Config, storage: Storage, force: bool = False, option: str = "--force") -> dict[str, Any]:
    """Trains the run's diffusion model unless it is published for the same diffusion config and dataset."""
    dataset = resolve_dataset_name(cfg, storage)
    state = ray_diffusion.claim_output(cfg, storage, dataset, force, option)
    model = posixpath.join(run_dir(cfg.train.run, "diffusion"), "model")
    if state == "same" and storage.manifest(model) is not None:
        return {"skipped": True}
    out = ray_diffusion.run_train_diffusion(cfg)
    return {"record": {"last_loss": out.get("last_loss"), "epochs": out.get("epochs")}}


def generate_config(cfg: Config, reference: str | None) -> Config:
    """The generate stage's config: fidelity scored by ``reference`` (the baseline's best checkpoint)."""
    return apply_overrides(cfg, {"generate.reference_checkpoint": reference}, "pipeline") if reference else cfg


def generate_or_skip(
    cfg: Config, storage: Storage, reference: str, force: bool = False, option: str = "--force"
) -> dict[str, Any]:
    """Generates the run's synthetic tail images (fidelity scored by ``reference``) unless published from the same
    inputs."""
    gen_cfg = generate_config(cfg, reference)
    dataset = resolve_dataset_name(cfg, storage)
    state = ray_generate.claim_output(gen_cfg, storage, dataset, force, option)
    synthetic = run_dir(cfg.train.run, "synthetic")
    if state == "same" and ray_generate.is_published(gen_cfg, storage, dataset):
        report = storage.read_json(storage.sidecar_rel(synthetic, GENERATE_REPORT))  # or the pre-underscore name
        return {"skipped": True, "report": report}
    report = ray_generate.run_generate(gen_cfg)
    return {"report": report, "record": {"images": report["images"], "filtered": report.get("filtered")}}


def sweep_or_single(cfg: Config, storage: Storage, force: bool = False, option: str = "--force") -> dict[str, Any]:
    """The sweep (resumed, or read back when done from the same inputs), or nothing when the sweep is off."""
    if not cfg.sweep.enabled:
        return {"skipped": True, "record": {"disabled": True}}
    dataset = resolve_dataset_name(cfg, storage)
    state = ray_sweep.claim_output(cfg, storage, dataset, force, option)
    out = run_dir(cfg.train.run, ray_sweep.STAGE)
    if state == "same" and storage.manifest(out) is not None:
        return {"skipped": True, "report": storage.read_json(posixpath.join(out, "sweep_report.json"))}
    report = ray_sweep.run_sweep(cfg)
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
        # extra train rows of any source: synthetic, resampled (duplicated) real, oracle
        "extra_rows": sum(int(summary.get("train_rows", {}).get(k, 0)) for k in ("synthetic", "resampled", "oracle")),
    }


def prepare_or_skip(cfg: Config) -> dict[str, Any]:
    """Renders PadChest-Synth when that is the source (no images given), then prepares the dataset; each job skips
    what is already done for the same config."""
    if cfg.data.source == "padchest-synth" and cfg.data.images is None:
        run_synthesize(cfg)
    report = run_prepare(cfg)
    return {"skipped": bool(report.get("skipped")), "record": {"dataset": report.get("dataset")}}


def baseline_checkpoint(storage: Storage, base_cfg: Config) -> str:
    """The URI of the baseline's best checkpoint (the generate stage's fidelity reference)."""
    return storage.uri(run_dir(base_cfg.train.run, "classifier"), "best")


def stage_records(cfg: Config, storage: Storage, dataset: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Folder and record of each stage whose inputs are known before any stage runs, in pipeline order.

    The final stage is added when the sweep's outputs are there and fresh (its config is the sweep's best).
    """
    run = cfg.train.run
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    if cfg.pipeline.diffusion:
        out["train_diffusion"] = (run_dir(run, "diffusion"), ray_diffusion.stage_record(cfg, dataset))
    base_cfg = baseline_config(cfg)
    out["baseline"] = (run_dir(base_cfg.train.run, "classifier"), ray_train.stage_record(base_cfg, storage, dataset))
    if cfg.pipeline.diffusion:
        gen_cfg = generate_config(cfg, baseline_checkpoint(storage, base_cfg))
        out["generate"] = (run_dir(run, "synthetic"), ray_generate.stage_record(gen_cfg, storage, dataset))
    if "oracle" in cfg.pipeline.controls:
        out["oracle"] = (run_dir(run, records.ORACLE_STAGE), oracle_record(cfg, dataset))
    if cfg.sweep.enabled:
        out["sweep"] = (run_dir(run, ray_sweep.STAGE), ray_sweep.stage_record(cfg, storage, dataset))
    return out


def _final_record(cfg: Config, storage: Storage, dataset: str) -> tuple[str, dict[str, Any]] | None:
    """Folder and record of the final stage, when its config can be known now (no sweep, or a published one)."""
    sweep_dir = run_dir(cfg.train.run, ray_sweep.STAGE)
    report = None
    if cfg.sweep.enabled:
        if storage.manifest(sweep_dir) is None:
            return None
        report = storage.read_json(posixpath.join(sweep_dir, "sweep_report.json"))
    final_cfg, reuse = final_config(cfg, storage, report)
    if reuse is not None:
        return None
    upstream = {"sweep": records.upstream_hash(storage, sweep_dir)} if cfg.sweep.enabled else None
    return run_dir(final_cfg.train.run, "classifier"), ray_train.stage_record(final_cfg, storage, dataset, upstream)


def stale_stages(cfg: Config, storage: Storage, dataset: str, force: Collection[str] = ()) -> dict[str, str]:
    """Stages whose folder holds outputs made from other values of their own config keys, with what changed.

    Upstream inputs are not compared here: a recomputed stage recomputes the stages that read it (see
    :func:`trcgl.records.claim`). Forced stages are not reported.

    Returns:
        {stage: "key: old -> new; ..." or "no record"}, in pipeline order.
    """
    found: dict[str, str] = {}
    claims = stage_records(cfg, storage, dataset)
    if "sweep" not in claims or ("sweep" not in force and not _stale(storage, *claims["sweep"])):
        final = _final_record(cfg, storage, dataset)
        if final is not None:
            claims["final"] = final
    for stage, (folder, record) in claims.items():
        if stage not in force:
            change = _stale(storage, folder, record)
            if change:
                found[stage] = change
    return found


def _stale(storage: Storage, folder: str, record: dict[str, Any]) -> str:
    """What differs between ``folder``'s record and ``record`` in own config keys ("" when nothing does)."""
    old = records.read_record(storage, folder)
    if old is None:
        return "outputs without a record of their config" if storage.list_files(folder) else ""
    own = records.own_changes(old, record)
    return records.describe_changes(old, record, own) if own else ""


def check_fresh(cfg: Config, storage: Storage, dataset: str, force: Collection[str] = ()) -> None:
    """Fails before any training when a stage's outputs were made from other config values and are not forced.

    Raises:
        trcgl.records.StaleStageError: naming every such stage, what changed, and the command that recomputes them.
    """
    stale = stale_stages(cfg, storage, dataset, force)
    if stale:
        lines = "; ".join(f"{stage} ({change})" for stage, change in stale.items())
        raise records.StaleStageError(
            f"run {cfg.train.run!r} holds outputs made from other config values: {lines}. Rerun with "
            f"--force {' '.join(stale)} to recompute them (the stages that read them are recomputed too), or choose "
            "another train.run"
        )


def run_pipeline(cfg: Config, force: Collection[str] = ()) -> dict[str, Any]:
    """Runs every stage of ``train.run`` in order and writes the summary and report.

    A stage whose outputs were made from the same inputs is skipped; one whose inputs come from a recomputed stage is
    recomputed; one whose own config keys changed stops the pipeline before any training (:func:`check_fresh`)
    unless it is forced.

    Args:
        cfg: the config.
        force: stages (of :data:`FORCEABLE`) to recompute whatever their outputs were made from.

    Returns:
        The pipeline summary (also ``{root}/runs/{run}/summary.json``): stages, the summary rows, the report URI.
    """
    unknown = sorted(set(force) - set(FORCEABLE))
    if unknown:
        raise ConfigError(f"--force names unknown stages {unknown}; forceable stages: {list(FORCEABLE)}")
    check_pipeline(cfg)
    storage = Storage(cfg.storage.root, cfg.storage)
    storage.check_writable()
    run = cfg.train.run
    progress = Progress(run)
    storage.write_text(posixpath.join(run_dir(run), "config.yaml"), dump_yaml(cfg))

    def option(stage: str) -> str:
        return f"--force {stage}"

    progress.stage("prepare", lambda: prepare_or_skip(cfg))
    dataset = resolve_dataset_name(cfg, storage)
    cfg = apply_overrides(cfg, {"train.dataset": dataset}, "pipeline")
    check_fresh(cfg, storage, dataset, force)
    if cfg.pipeline.diffusion:
        progress.stage(
            "train_diffusion",
            lambda: diffusion_or_skip(cfg, storage, "train_diffusion" in force, option("train_diffusion")),
        )
    base_cfg = baseline_config(cfg)
    baseline = progress.stage(
        "baseline", lambda: train_or_skip(base_cfg, storage, "baseline" in force, option("baseline"))
    )["summary"]
    generated = None
    if cfg.pipeline.diffusion:
        reference = baseline_checkpoint(storage, base_cfg)
        generated = progress.stage(
            "generate", lambda: generate_or_skip(cfg, storage, reference, "generate" in force, option("generate"))
        ).get("report")
    progress.stage(
        "oracle",
        lambda: (
            oracle_or_skip(cfg, "oracle" in force, option("oracle"))
            if "oracle" in cfg.pipeline.controls
            else {"skipped": True, "record": {"disabled": True}}
        ),
    )
    controls = progress.stage(
        "controls", lambda: controls_or_skip(cfg, storage, "controls" in force, option("controls"))
    )["summaries"]
    sweep = progress.stage("sweep", lambda: sweep_or_single(cfg, storage, "sweep" in force, option("sweep"))).get(
        "report"
    )
    final_cfg, reuse = final_config(cfg, storage, sweep)
    sweep_dir = run_dir(run, ray_sweep.STAGE)
    upstream = {"sweep": records.upstream_hash(storage, sweep_dir)} if sweep is not None else None

    def final() -> dict[str, Any]:
        if reuse is not None:
            summary = _classifier_summary(storage, reuse)
            if summary is not None:
                return {"skipped": True, "summary": summary, "record": {"reused": reuse}}
        return train_or_skip(final_cfg, storage, "final" in force, option("final"), upstream)

    best = progress.stage("final", final)["summary"]
    rows = [row_of("best", best), row_of("baseline", baseline)]
    rows += [row_of(CONTROL_ROWS[extra], s) for extra, s in controls.items()]
    summary: dict[str, Any] = {
        "run": run,
        "dataset": dataset,
        "stages": progress.stages,
        "rows": rows,
        "best_run": best["run"],
        "best_params": (sweep or {}).get("best_params"),
        "synthetic": None
        if generated is None
        else {k: generated.get(k) for k in ("images", "output", "realism", "filtered", "fidelity")},
    }
    report_uri = progress.stage("report", lambda: write_report(cfg, storage, summary, sweep))["uri"]
    summary["report"] = report_uri
    summary["stages"] = progress.stages
    summary["seconds"] = round(time.perf_counter() - progress.t0, 1)
    storage.write_json(posixpath.join(run_dir(run), "summary.json"), summary)
    return summary
