"""Tail-class generation as a Ray Data job: plan parts fan out to a generator class on an actor pool.

Writes ``{root}/runs/{run}/synthetic/part-*.parquet`` (one file per plan part, skipped when present, so a rerun after
a kill fills only the gap), ``plan.parquet``, ``generate_report.json`` and, last, the manifest that the classifier's
mixing trusts.
"""

from __future__ import annotations

import logging
import posixpath
import time

import pandas as pd
import pyarrow as pa
import ray

from trcgl.config import Config, to_dict
from trcgl.diffusion.plan import Generator, make_plan, part_payloads, read_train_rows
from trcgl.ray_runtime import check_gpus
from trcgl.storage import Storage, run_dir
from trcgl.train.data import load_dataset_info, resolve_dataset_name

log = logging.getLogger(__name__)


def model_location(cfg: Config, storage: Storage) -> str:
    """The diffusion model folder to sample from."""
    return cfg.generate.model or storage.uri(run_dir(cfg.train.run, "diffusion"), "model")


def run_generate(cfg: Config) -> dict:
    """Plans and generates the synthetic tail-class rows of ``train.run``; returns the report."""
    t0 = time.perf_counter()
    storage = Storage(cfg.storage.root, cfg.storage)
    storage.check_writable()
    dataset = resolve_dataset_name(cfg, storage)
    info = load_dataset_info(storage, dataset)
    out_dir = run_dir(cfg.train.run, "synthetic")
    plan = make_plan(info, read_train_rows(storage, info), cfg.generate)
    if plan.empty:
        raise ValueError(
            f"nothing to generate for dataset {dataset!r}: no tail/medium class with train positives at "
            f"generate.aug_ratio_tail={cfg.generate.aug_ratio_tail}, aug_ratio_medium={cfg.generate.aug_ratio_medium}"
        )
    check_gpus(cfg.generate.num_gpus, cfg.ray.autoscaling, "generate.num_gpus")
    model_uri = model_location(cfg, storage)
    storage.write_parquet(posixpath.join(out_dir, "plan.parquet"), pa.Table.from_pandas(plan, preserve_index=False))
    payloads = part_payloads(plan)
    log.info(
        "generating %d images in %d parts for %d classes with %s",
        len(plan),
        len(payloads),
        plan["target_class"].nunique(),
        model_uri,
    )
    blocks = [pd.DataFrame({"payload": [p]}) for p in payloads]  # one block per part
    results = (
        ray.data.from_pandas(blocks)
        .map_batches(
            Generator,
            fn_constructor_kwargs={
                "cfg": to_dict(cfg),
                "model_uri": model_uri,
                "out_dir": out_dir,
                "num_classes": info.num_classes,
            },
            compute=ray.data.ActorPoolStrategy(min_size=cfg.generate.actors_min, max_size=cfg.generate.actors_max),
            batch_size=1,
            batch_format="pandas",
            num_gpus=cfg.generate.num_gpus,
            num_cpus=cfg.generate.cpus_per_actor,
        )
        .to_pandas()
    )
    if sorted(results["part"]) != sorted(plan["part"].unique().tolist()):
        raise RuntimeError(f"generation returned {len(results)} of {plan['part'].nunique()} parts")
    report = {
        "dataset": dataset,
        "model": model_uri,
        "images": int(len(plan)),
        "parts": int(len(results)),
        "parts_skipped": int(results["skipped"].sum()),
        "per_class": plan["target_class"].value_counts().to_dict(),
        "seconds": round(time.perf_counter() - t0, 2),
        "output": storage.uri(out_dir),
    }
    storage.write_json(posixpath.join(out_dir, "generate_report.json"), report)
    storage.publish(out_dir, {"stage": "generate", "dataset": dataset, "model": model_uri})
    return report
