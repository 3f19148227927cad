"""The prepare stage on Ray Data: shards fan out to ``map_batches`` tasks that decode, resize and write Parquet."""

from __future__ import annotations

import json
import logging
import time

import pandas as pd
import ray

from trcgl.config import Config, from_dict, to_dict
from trcgl.data import prepare
from trcgl.storage import Storage

log = logging.getLogger(__name__)


def _process_batch(batch: pd.DataFrame, payload_refs: list, cfg_dict: dict, **kwargs) -> pd.DataFrame:
    cfg = from_dict(cfg_dict, "prepare task")
    results = [prepare.process_shard(ray.get(payload_refs[int(s)]), cfg=cfg, **kwargs) for s in batch["id"]]
    return pd.DataFrame(
        {
            "shard": [r["shard"] for r in results],
            "written": [r["written"] for r in results],
            "skipped": [r["skipped"] for r in results],
            "rejects": [json.dumps(r["rejects"]) for r in results],
        }
    )


def run_prepare(cfg: Config) -> dict:
    """Prepares ``{root}/datasets/{name}/`` from metadata + images (skipped when already published).

    Returns:
        The prepare report (also written as ``_prepare_report.json``), plus ``skipped_shards``.
    """
    t0 = time.perf_counter()
    storage = Storage(cfg.storage.root, cfg.storage)
    metadata_uri, images_uri = prepare.resolve_inputs(cfg, storage)
    plan = prepare.plan_prepare(cfg, metadata_uri, images_uri)
    existing = prepare.check_existing(storage, plan)
    if existing is not None:
        log.info("dataset %s is already prepared at %s: skipping", plan.name, storage.uri("datasets", plan.name))
        return {**existing, "skipped": True}
    storage.check_writable()
    log.info(
        "preparing %s: %d rows in %d shards from %s (%s layout) at %d px",
        plan.name,
        len(plan.rows),
        plan.num_shards,
        images_uri,
        plan.layout,
        cfg.data.image_size,
    )
    # Each shard's rows go to the object store as they are cut (the driver holds one payload at a time) and the
    # dataset is only shard ids, one block each, so shards run as parallel tasks and each fetches its own payload.
    payload_refs = [ray.put(plan.shard_payload(s)) for s in range(plan.num_shards)]
    ds = ray.data.range(plan.num_shards, override_num_blocks=plan.num_shards).map_batches(
        _process_batch,
        batch_size=1,
        batch_format="pandas",
        fn_kwargs={
            "payload_refs": payload_refs,  # references (nested in a list): each task gets only the one it reads
            "cfg_dict": to_dict(cfg),
            "dataset": plan.name,
            "images_uri": images_uri,
            "layout": plan.layout,
            "num_classes": len(plan.label_set.classes),
        },
        num_cpus=cfg.ray.cpus_per_task,
    )
    results = ds.to_pandas().to_dict(orient="records")
    if sorted(r["shard"] for r in results) != list(range(plan.num_shards)):
        raise RuntimeError(f"prepare returned results for {len(results)} of {plan.num_shards} shards")
    for r in results:
        r["rejects"] = json.loads(r["rejects"])
    report = prepare.finalize(cfg, plan, storage, results, time.perf_counter() - t0)
    report["skipped_shards"] = sum(bool(r["skipped"]) for r in results)
    log.info(
        "dataset %s: %d rows written, %d images rejected (%s), %d metadata rows dropped",
        plan.name,
        report["rows_written"],
        report["rejected_images"],
        report["rejected_images_by_reason"],
        report["dropped_metadata_rows"],
    )
    return report
