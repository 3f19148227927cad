"""Tail-class generation as a Ray Data job: plan parts fan out to a generator class on an actor pool.

Writes ``{root}/runs/{run}/synthetic/part-*.parquet`` (one file per plan part, skipped when present, so a rerun after
a kill fills only the gap), ``plan.parquet``, ``generate_report.json`` and, last, the manifest that the classifier's
mixing trusts.
"""

from __future__ import annotations

import logging
import posixpath
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from trcgl import records
from trcgl.config import Config, filters_fidelity, to_dict
from trcgl.data.dataset import DatasetInfo, load_dataset_info, resolve_dataset_name
from trcgl.data.images import decode_prepared
from trcgl.diffusion.fidelity import fidelity_keep, fidelity_table, sample_grid
from trcgl.diffusion.plan import Generator, make_plan, output_schema, part_payloads, read_train_rows
from trcgl.ray_runtime import check_gpus
from trcgl.storage import Storage, run_dir
from trcgl.train.ray_evaluate import predict_split, score_rows

log = logging.getLogger(__name__)


def model_location(cfg: Config, storage: Storage) -> str:
    """The diffusion model folder to sample from."""
    return cfg.generate.model or storage.uri(run_dir(cfg.train.run, "diffusion"), "model")


def reference_location(cfg: Config, storage: Storage) -> str | None:
    """The classifier checkpoint that scores fidelity: ``generate.reference_checkpoint``, else the run's own
    ``classifier/best`` when it exists, else None (fidelity not scored)."""
    if cfg.generate.reference_checkpoint:
        return cfg.generate.reference_checkpoint
    best = posixpath.join(run_dir(cfg.train.run, "classifier"), "best")
    return storage.uri(best) if storage.exists(posixpath.join(best, "meta.json")) else None


def stage_record(cfg: Config, storage: Storage, dataset: str) -> dict:
    """What ``synthetic/`` is made from (:func:`trcgl.records.generate_record`)."""
    return records.generate_record(cfg, storage, dataset, model_location(cfg, storage))


def filtered_record(cfg: Config, storage: Storage, dataset: str) -> dict:
    """What ``synthetic_filtered/`` is made from (:func:`trcgl.records.filtered_record`)."""
    model, reference = model_location(cfg, storage), reference_location(cfg, storage)
    return records.filtered_record(cfg, storage, dataset, model, reference)


def claim_output(cfg: Config, storage: Storage, dataset: str, force: bool = False, option: str = "--force") -> str:
    """Claims ``synthetic/`` for this config (:func:`trcgl.records.claim`); a cleared claim clears
    ``synthetic_filtered/`` too, which the same stage writes."""
    out_dir = run_dir(cfg.train.run, "synthetic")
    state = records.claim(storage, out_dir, stage_record(cfg, storage, dataset), option, force)
    if state == "cleared":
        storage.delete(run_dir(cfg.train.run, "synthetic_filtered"))
    return state


def is_published(cfg: Config, storage: Storage, dataset: str) -> bool:
    """Whether the stage's outputs are published for this config: ``synthetic/``, and ``synthetic_filtered/`` made
    with the current filter and reference when a filter is set (fidelity scoring is redone on every run: a changed
    filter needs no regeneration)."""
    if storage.manifest(run_dir(cfg.train.run, "synthetic")) is None:
        return False
    if not filters_fidelity(cfg):
        return True
    filtered = run_dir(cfg.train.run, "synthetic_filtered")
    fresh = records.read_record(storage, filtered) == filtered_record(cfg, storage, dataset)
    return fresh and storage.manifest(filtered) is not None


def generate_parts(cfg: Config, payloads: list[str], model_uri: str, out_dir: str, num_classes: int) -> pd.DataFrame:
    """Runs plan parts through the generator class on an actor pool; returns one summary row per part."""
    blocks = [pd.DataFrame({"payload": [p]}) for p in payloads]  # one block per part
    return (
        ray.data.from_pandas(blocks)
        .map_batches(
            Generator,
            fn_constructor_kwargs={
                "cfg": to_dict(cfg),
                "model_uri": model_uri,
                "out_dir": out_dir,
                "num_classes": num_classes,
            },
            compute=ray.data.ActorPoolStrategy(min_size=cfg.generate.actors_min, max_size=cfg.generate.actors_max),
            batch_size=1,
            batch_format="pandas",
            num_gpus=cfg.generate.num_gpus,
            num_cpus=cfg.generate.cpus_per_actor,
        )
        .to_pandas()
    )


def run_generate(cfg: Config, force: bool = False) -> dict:
    """Plans and generates the synthetic tail-class rows of ``train.run``; returns the report.

    Args:
        cfg: the config.
        force: recompute even when ``synthetic/`` was made from other config values (it is cleared first).

    Raises:
        trcgl.records.StaleStageError: ``synthetic/`` was made from other generate values and ``force`` is off.
    """
    t0 = time.perf_counter()
    storage = Storage(cfg.storage.root, cfg.storage)
    storage.check_writable()
    dataset = resolve_dataset_name(cfg, storage)
    info = load_dataset_info(storage, dataset)
    out_dir = run_dir(cfg.train.run, "synthetic")
    claim_output(cfg, storage, dataset, force)
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
    results = generate_parts(cfg, payloads, model_uri, out_dir, info.num_classes)
    if sorted(results["part"]) != sorted(plan["part"].unique().tolist()):
        raise RuntimeError(f"generation returned {len(results)} of {plan['part'].nunique()} parts")
    quality = fidelity_and_grids(cfg, storage, info, out_dir)
    report = {
        "dataset": dataset,
        "model": model_uri,
        "images": int(len(plan)),
        "parts": int(len(results)),
        "parts_skipped": int(results["skipped"].sum()),
        "per_class": plan["target_class"].value_counts().to_dict(),
        "seconds": round(time.perf_counter() - t0, 2),
        "output": storage.uri(out_dir),
        **quality,
    }
    storage.write_json(posixpath.join(out_dir, "generate_report.json"), report)
    storage.publish(out_dir, {"stage": "generate", "dataset": dataset, "model": model_uri})
    return report


def _real_positives(storage: Storage, info: DatasetInfo, k: int, n: int) -> list[np.ndarray]:
    """Up to n real train images positive for class k."""
    found: list[np.ndarray] = []
    for p in info.parts:
        t = pq.read_table(storage.pyarrow_fs.open_input_file(p), columns=["split", "labels", "image"])
        for split, labels, image in zip(
            t["split"].to_pylist(), t["labels"].to_pylist(), t["image"].to_pylist(), strict=True
        ):
            if split == "train" and labels[k]:
                found.append(decode_prepared(image))
                if len(found) == n:
                    return found
    return found


def fidelity_and_grids(cfg: Config, storage: Storage, info: DatasetInfo, out_dir: str) -> dict:
    """Writes a sample grid per generated class and, with a reference classifier, the fidelity table.

    With ``generate.fidelity_threshold`` (rows whose target-class score reaches it) and/or
    ``generate.fidelity_keep_fraction`` (each class's highest-scoring fraction) the rows passing are also written, as a
    published folder, to ``{root}/runs/{run}/synthetic_filtered/``.
    """
    parts = [storage.path(p) for p in storage.list_files(out_dir) if "/part-" in p]
    syn = pa.concat_tables([pq.read_table(storage.pyarrow_fs.open_input_file(p)) for p in parts]).to_pandas()
    n = cfg.generate.grid_examples
    grids = []
    for cls, rows in syn.groupby("target_class", sort=True):
        synthetic = [decode_prepared(b) for b in rows["image"].head(n)]
        real = _real_positives(storage, info, info.classes.index(cls), n)
        rel = posixpath.join(out_dir, "grids", f"{cls.replace(' ', '-')}.png")
        storage.write_bytes(rel, sample_grid(cls, synthetic, real))
        grids.append(rel)
    reference = reference_location(cfg, storage)
    if reference is None:
        log.warning(
            "no reference classifier (set generate.reference_checkpoint or train the classifier of run %r "
            "first): fidelity not scored",
            cfg.train.run,
        )
        return {"grids": grids, "fidelity": None}
    ds = ray.data.read_parquet(parts, filesystem=storage.pyarrow_fs, columns=["image_id", "image", "labels"])
    syn_scored = score_rows(cfg, reference, ds, rows=len(syn)).set_index("image_id").loc[syn["image_id"]]
    real = predict_split(cfg, reference, info, "val")
    table = fidelity_table(
        info.classes,
        np.stack(syn_scored["scores"].to_numpy()),
        syn["target_class"].tolist(),
        np.stack(real["scores"].to_numpy()),
        np.stack(real["labels"].to_numpy()),
    )
    storage.write_parquet(
        posixpath.join(out_dir, "fidelity.parquet"), pa.Table.from_pandas(table, preserve_index=False)
    )
    fidelity_rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")  # None, never NaN
    result = {"grids": grids, "fidelity": fidelity_rows, "reference": reference}
    thr, frac = cfg.generate.fidelity_threshold, cfg.generate.fidelity_keep_fraction
    if thr is not None or frac is not None:
        target_idx = [info.classes.index(c) for c in syn["target_class"]]
        score = np.stack(syn_scored["scores"].to_numpy())[np.arange(len(syn)), target_idx]
        mask = fidelity_keep(score, syn["target_class"].to_numpy(), thr, frac)
        keep = syn[mask].drop(columns=[c for c in ("__index_level_0__",) if c in syn])
        filtered = run_dir(cfg.train.run, "synthetic_filtered")
        storage.delete(filtered)  # rewritten whole: made from this filter and reference only
        storage.write_parquet(
            posixpath.join(filtered, "part-00000.parquet"),
            pa.Table.from_pandas(
                keep.reset_index(drop=True), schema=output_schema(info.num_classes), preserve_index=False
            ),
        )
        # a classifier or sweep drawing from this folder records what made it
        storage.write_json(posixpath.join(filtered, records.RECORD), filtered_record(cfg, storage, info.name))
        storage.publish(
            filtered,
            {"stage": "generate", "fidelity_threshold": thr, "fidelity_keep_fraction": frac, "reference": reference},
        )
        result["filtered"] = {"kept": int(len(keep)), "of": int(len(syn)), "folder": storage.uri(filtered)}
    return result
