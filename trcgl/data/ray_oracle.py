"""The oracle stage as a Ray Data job: plan parts fan out to ``map_batches`` tasks that render, prepare and write.

Writes ``{root}/runs/{run}/oracle/``: ``part-*.parquet`` (one per plan part, skipped when present, so a rerun after a
kill renders only the missing parts), ``_plan.parquet``, ``_oracle_report.json`` and, last, the manifest that the
classifier's mixing trusts. The folder is claimed with its record (:func:`trcgl.data.synth.oracle.oracle_record`)
before any work: a rerun with the same inputs skips or resumes, one with other plan or synth values stops naming
them unless forced. What the rows are: :mod:`trcgl.data.synth.oracle`.
"""

from __future__ import annotations

import logging
import posixpath
import time
from typing import Any

import pandas as pd
import pyarrow as pa
import ray

from trcgl import records
from trcgl.config import Config, from_dict, to_dict
from trcgl.data.dataset import load_dataset_info, resolve_dataset_name
from trcgl.data.synth import oracle
from trcgl.storage import Storage, run_dir

log = logging.getLogger(__name__)


def _render_batch(batch: pd.DataFrame, cfg_dict: dict, out_dir: str, num_classes: int) -> pd.DataFrame:
    """Ray Data batch: one row per part, column ``payload`` (JSON of the part's plan rows)."""
    cfg = from_dict(cfg_dict, "oracle task")
    storage = Storage(cfg.storage.root, cfg.storage)
    return pd.DataFrame([oracle.write_part(cfg, storage, out_dir, p, num_classes) for p in batch["payload"]])


def run_oracle(cfg: Config, force: bool = False, option: str = "--force") -> dict[str, Any]:
    """Renders the oracle rows of ``train.run`` (or reads back the report when published from the same inputs).

    Args:
        cfg: the config (``generate.*`` plans the rows, ``synth.*`` renders them, ``data.image_size`` sizes them).
        force: recompute even when ``oracle/`` was made from other config values (it is cleared first).
        option: the command-line option that forces this stage, named in errors.

    Returns:
        The report (``_oracle_report.json``), with ``skipped`` true when it was already published.

    Raises:
        ConfigError: ``data.source`` is not padchest-synth.
        trcgl.records.StaleStageError: ``oracle/`` was made from other config values and ``force`` is off.
        ValueError: the plan is empty (no tail/medium class with train positives at the generate ratios).
    """
    t0 = time.perf_counter()
    oracle.check_source(cfg)
    storage = Storage(cfg.storage.root, cfg.storage)
    storage.check_writable()
    dataset = resolve_dataset_name(cfg, storage)
    info = load_dataset_info(storage, dataset)
    out_dir = run_dir(cfg.train.run, records.ORACLE_STAGE)
    state = records.claim(storage, out_dir, oracle.oracle_record(cfg, dataset), option, force)
    report_rel = posixpath.join(out_dir, oracle.REPORT_FILE)
    if state == "same" and storage.manifest(out_dir) is not None:
        log.info("oracle rows of %s already rendered at %s: skipping", cfg.train.run, storage.uri(out_dir))
        # a folder published before sidecars took the underscore is reused too: its report is oracle_report.json
        return storage.read_json(storage.sidecar_rel(out_dir, oracle.REPORT_FILE)) | {"skipped": True}
    plan = oracle.make_oracle_plan(cfg, storage, info)
    if plan.empty:
        raise ValueError(
            f"no oracle rows to render for dataset {dataset!r}: no tail/medium class with train positives at "
            f"generate.aug_ratio_tail={cfg.generate.aug_ratio_tail}, aug_ratio_medium={cfg.generate.aug_ratio_medium}"
        )
    storage.write_parquet(posixpath.join(out_dir, oracle.PLAN_FILE), pa.Table.from_pandas(plan, preserve_index=False))
    payloads = oracle.part_payloads(plan)
    log.info(
        "rendering %d oracle rows in %d parts for %d classes at %d px, prepared to %d px",
        len(plan),
        len(payloads),
        plan["target_class"].nunique(),
        cfg.synth.size,
        cfg.data.image_size,
    )
    blocks = [pd.DataFrame({"payload": [p]}) for p in payloads]  # one block per part: parts run as parallel tasks
    results = (
        ray.data.from_pandas(blocks)
        .map_batches(
            _render_batch,
            batch_size=1,
            batch_format="pandas",
            fn_kwargs={"cfg_dict": to_dict(cfg), "out_dir": out_dir, "num_classes": info.num_classes},
            num_cpus=cfg.ray.cpus_per_task,
        )
        .to_pandas()
    )
    if sorted(results["part"]) != sorted(plan["part"].unique().tolist()):
        raise RuntimeError(f"oracle rendering returned {len(results)} of {plan['part'].nunique()} parts")
    rendered = results[~results["skipped"]]
    report = {
        "dataset": dataset,
        "generator": oracle.GENERATOR,
        "images": int(len(plan)),
        "parts": int(len(results)),
        "parts_skipped": int(results["skipped"].sum()),
        "per_class": plan["target_class"].value_counts().to_dict(),
        "render_size": cfg.synth.size,
        "image_size": cfg.data.image_size,
        "seconds_per_image": round(float(rendered["seconds"].sum() / max(1, rendered["rows"].sum())), 4),
        "seconds": round(time.perf_counter() - t0, 2),
        "output": storage.uri(out_dir),
    }
    storage.write_json(report_rel, report)
    storage.drop_legacy_sidecars(out_dir, (oracle.REPORT_FILE,))
    storage.publish(out_dir, {"stage": records.ORACLE_STAGE, "dataset": dataset})
    log.info("oracle rows of %s: %d rendered into %s", cfg.train.run, len(plan), storage.uri(out_dir))
    return report | {"skipped": False}


def oracle_or_skip(cfg: Config, force: bool = False, option: str = "--force") -> dict[str, Any]:
    """The oracle stage for a multi-stage job (:class:`trcgl.pipeline.ray_pipeline.Progress`): report and record."""
    report = run_oracle(cfg, force, option)
    return {"skipped": report["skipped"], "report": report, "record": {"images": report["images"]}}
