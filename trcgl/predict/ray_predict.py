"""``jobs.predict``: a classifier checkpoint applied to a folder, an s3:// prefix or a prepared split, on a Ray Data
actor pool.

Writes, under the output folder (default ``{root}/runs/{run}/predict/{source}-{hash}/``, ``run`` the checkpoint's
``train.run``): ``part-*.parquet`` (one row per scored image, :mod:`trcgl.predict.scorer`), and beside them, out of
the Parquet namespace, ``_report.json``, ``_thresholds.json``, ``_plan.parquet`` (which image goes to which part),
``_parts/part-*.json`` (each part's bad images), ``_overlays/`` (with ``--overlays``), ``_inputs.json`` (the record,
:mod:`trcgl.records`) and, last, ``_manifest.json``. So ``pd.read_parquet(folder)`` reads the predictions.

Reruns: the folder is claimed with a record of the checkpoint (URI and a hash of its ``meta.json``), the listing
(SOURCE and a hash of its image list) and the options that change the rows; the same record resumes the missing parts
or, once published, does nothing; another checkpoint or listing behind the same URIs recomputes the folder; other
options stop with the changed keys unless ``--force``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from trcgl import records
from trcgl.config import Config, DataConfig, config_hash, from_dict, to_dict
from trcgl.data.dataset import load_dataset_info
from trcgl.predict.scorer import PartScorer, class_columns, decode_settings
from trcgl.predict.sources import Listing, list_source, part_payloads
from trcgl.ray_runtime import check_gpus, map_parts
from trcgl.storage import Storage, parse_uri, run_dir, slugify
from trcgl.train.checkpoint import META_FILE, read_files
from trcgl.train.ray_evaluate import predict_split
from trcgl.train.thresholds import threshold_record

log = logging.getLogger(__name__)

STAGE = "predict"
REPORT, THRESHOLDS, PLAN = "_report.json", "_thresholds.json", "_plan.parquet"
REPORT_BAD_MAX = 1000  # bad images listed in _report.json; every one is in _parts/part-*.json


@dataclass
class PredictOptions:
    """What ``jobs.predict`` is asked to do (its flags).

    Attributes:
        checkpoint: classifier checkpoint folder (local or s3://).
        images: the SOURCE (:mod:`trcgl.predict.sources`).
        out: output folder: relative to ``storage.root``, or an absolute path or s3:// URI; None: the default.
        actors: scoring actors (at most one per part).
        batch_size: images per forward pass.
        rows_per_part: images per output part (the unit of resumption).
        gpus_per_actor: GPUs per actor; None: 1 when the Ray cluster has a GPU, else 0.
        cpus_per_actor: CPUs per actor (also its torch threads on the CPU).
        overlays: class-attention overlays for each image's N most probable classes (0: none).
        fixed_threshold: one threshold for every class instead of the checkpoint's val thresholds.
    """

    checkpoint: str
    images: str
    out: str | None = None
    actors: int = 2
    batch_size: int = 32
    rows_per_part: int = 256
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    overlays: int = 0
    fixed_threshold: float | None = None


# ---------------------------------------------------------------------------------------------------- inputs


def read_meta(cfg: Config, checkpoint: str) -> tuple[dict, str]:
    """(the checkpoint's meta.json, a hash of its bytes)."""
    raw = read_files(checkpoint, cfg.storage, (META_FILE,))[META_FILE]
    return json.loads(raw), hashlib.sha256(raw).hexdigest()[:16]


def output_folder(cfg: Config, opts: PredictOptions, meta: dict, listing: Listing) -> tuple[Storage, str]:
    """(storage, folder relative to it) of the output: ``--out``, else ``runs/{run}/predict/{source}-{hash}``."""
    out = opts.out
    if out is None:
        name = slugify(posixpath.basename(listing.source.rstrip("/")) or listing.source)[:40]
        out = run_dir(meta["config"]["train"]["run"], STAGE) + f"/{name}-{config_hash(listing.source)}"
    if "://" not in out and not os.path.isabs(out):
        return Storage(cfg.storage.root, cfg.storage), out.strip("/")
    parent, base = posixpath.split(parse_uri(out).uri.rstrip("/"))
    if not base or parent in ("s3:", "s3:/"):
        raise ValueError(f"--out {out!r}: name a folder, e.g. s3://bucket/predictions/run1")
    return Storage(parent, cfg.storage), base


def checkpoint_thresholds(
    cfg: Config, opts: PredictOptions, meta: dict, meta_hash: str, out: Storage, out_dir: str
) -> dict:
    """The decision thresholds (:mod:`trcgl.train.thresholds`): ``--fixed-threshold``; else those stored with the
    checkpoint; else (a checkpoint written before thresholds were stored) chosen by the same rule on the val split of
    the checkpoint's dataset under ``storage.root``, scored here, and kept in ``_thresholds.json`` for reruns.

    Raises:
        FileNotFoundError: the checkpoint has no thresholds and its dataset is not under ``storage.root``.
    """
    classes = list(meta["dataset"]["classes"])
    if opts.fixed_threshold is not None:
        t = float(opts.fixed_threshold)
        rule = {"name": "fixed", "decision": "probability >= threshold", "value": t}
        return {"rule": rule, "classes": classes, "values": [t] * len(classes), "source": {"fixed_threshold": t}}
    if "thresholds" in meta:
        return {**meta["thresholds"], "stored_in": "checkpoint meta.json"}
    cached = posixpath.join(out_dir, THRESHOLDS)
    if out.exists(cached) and out.read_json(cached).get("checkpoint_meta") == meta_hash:
        return out.read_json(cached)
    storage = Storage(cfg.storage.root, cfg.storage)
    name = meta["dataset"]["name"]
    try:
        info = load_dataset_info(storage, name)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"checkpoint {opts.checkpoint!r} stores no decision thresholds and its dataset {name!r} is not under "
            f"storage.root {storage.root!r} to choose them on val: point storage.root at it, or pass "
            "--fixed-threshold 0.5"
        ) from exc
    log.info("checkpoint stores no thresholds: choosing them on the val split of %s", name)
    val = predict_split(cfg, opts.checkpoint, info, "val")
    record = threshold_record(
        np.stack(val["scores"].to_numpy()), np.stack(val["labels"].to_numpy()), classes, dataset=name, split="val"
    )
    return {**record, "stored_in": f"{THRESHOLDS} (computed by jobs.predict)", "checkpoint_meta": meta_hash}


def table_data(cfg: Config, meta: dict) -> DataConfig:
    """The data section mapping a ``table:`` SOURCE: the job's own when it says ``data.source=table``, else the
    checkpoint's (:mod:`trcgl.predict.sources`)."""
    if cfg.data.source == "table":
        return cfg.data
    return from_dict({"data": meta["config"].get("data", {})}, "the checkpoint's meta.json").data


def stage_record(opts: PredictOptions, meta_hash: str, listing: Listing, thresholds: dict) -> dict:
    """What the output folder is made from (module docstring: reruns)."""
    keys = {
        "predict.rows_per_part": opts.rows_per_part,
        "predict.overlays": opts.overlays,
        "predict.fixed_threshold": opts.fixed_threshold,
        "predict.thresholds": config_hash(thresholds["values"], 12),
    }
    return records.stage_record(
        STAGE,
        keys,
        checkpoint={"uri": opts.checkpoint, "meta": meta_hash},
        images={"uri": listing.source, "listing": listing.fingerprint()},
    )


# ---------------------------------------------------------------------------------------------------- scoring


def score_parts(
    cfg: Config, opts: PredictOptions, payloads: list[str], out: Storage, out_dir: str, thresholds: list[float]
) -> pd.DataFrame:
    """Runs the parts through :class:`PartScorer` on a Ray Data actor pool; one summary row per part."""
    gpus = opts.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0.0) >= 1 else 0.0
    check_gpus(gpus, cfg.ray.autoscaling, "--gpus-per-actor")
    actors = max(1, min(opts.actors, len(payloads)))
    kwargs = {
        "checkpoint": opts.checkpoint,
        "out_root": out.root,
        "out_dir": out_dir,
        "thresholds": thresholds,
        "storage": to_dict(cfg.storage),
        "overlays": opts.overlays,
        "batch_size": opts.batch_size,
        "device": "cuda" if gpus > 0 else "cpu",
        "threads": max(1, int(opts.cpus_per_actor)),
    }
    return map_parts(PartScorer, payloads, kwargs, (actors, actors), gpus, opts.cpus_per_actor)


def run_predict(cfg: Config, opts: PredictOptions, force: bool = False) -> dict:
    """Scores every image of ``opts.images`` with ``opts.checkpoint``; returns the report (``_report.json``).

    Args:
        cfg: the job's config (storage root and endpoint, Ray); the model, its classes and its preprocessing come
            from the checkpoint.
        opts: the job's options.
        force: clear the output folder and score everything again.

    Raises:
        trcgl.records.StaleStageError: the folder holds predictions made with other options and ``force`` is off.
    """
    t0 = time.perf_counter()
    meta, meta_hash = read_meta(cfg, opts.checkpoint)
    listing = list_source(
        opts.images, Storage(cfg.storage.root, cfg.storage), meta["dataset"]["name"], table_data(cfg, meta)
    )
    size = int(meta["dataset"]["image_size"])
    if listing.image_size is not None and listing.image_size != size:
        raise ValueError(
            f"{listing.source} was prepared at {listing.image_size} px but the checkpoint takes {size} px: prepare "
            f"it with data.image_size={size}, or give the image files instead"
        )
    out, out_dir = output_folder(cfg, opts, meta, listing)
    out.check_writable()
    thresholds = checkpoint_thresholds(cfg, opts, meta, meta_hash, out, out_dir)
    state = records.claim(out, out_dir, stage_record(opts, meta_hash, listing, thresholds), "--force", force)
    if state == "same" and out.manifest(out_dir) is not None:
        log.info("%s: published for this checkpoint, listing and options; nothing to do", out.uri(out_dir))
        return {**out.read_json(posixpath.join(out_dir, REPORT)), "rerun": "already published: nothing written"}
    out.write_json(posixpath.join(out_dir, THRESHOLDS), thresholds)
    payloads = part_payloads(listing.items, opts.rows_per_part)
    plan = listing.items.assign(part=np.arange(len(listing.items)) // opts.rows_per_part)
    out.write_parquet(posixpath.join(out_dir, PLAN), pa.Table.from_pandas(plan, preserve_index=False))
    log.info("scoring %d images in %d parts from %s into %s", len(plan), len(payloads), listing.source,
             out.uri(out_dir))  # fmt: skip
    results = score_parts(cfg, opts, payloads, out, out_dir, thresholds["values"]) if payloads else None
    report = _report(opts, meta, listing, out.uri(out_dir), thresholds, results)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    report["images_per_second"] = round(report["images_scored"] / max(report["seconds"], 1e-9), 2)
    out.write_json(posixpath.join(out_dir, REPORT), report)
    out.publish(out_dir, {"stage": STAGE, "checkpoint": opts.checkpoint, "source": listing.source})
    return report


def _report(
    opts: PredictOptions, meta: dict, listing: Listing, out_uri: str, thresholds: dict, results: pd.DataFrame | None
) -> dict:
    """The report of a finished run (every part checked present)."""
    n_parts = -(-len(listing.items) // opts.rows_per_part)
    if results is None:
        results = pd.DataFrame({"part": [], "written": [], "bad": [], "skipped": [], "seconds": []})
    if sorted(results["part"]) != list(range(n_parts)):
        raise RuntimeError(f"scoring returned parts {sorted(results['part'])}, expected {n_parts}")
    bad = [b for v in results.sort_values("part")["bad"] for b in json.loads(v)]
    scored = int(results["written"].sum())
    if scored + len(bad) != len(listing.items):
        raise RuntimeError(f"{scored} images scored and {len(bad)} bad of {len(listing.items)} listed")
    by_reason: dict[str, int] = {}
    for b in bad:
        by_reason[b["reason"]] = by_reason.get(b["reason"], 0) + 1
    classes = list(meta["dataset"]["classes"])
    probs, preds = class_columns(classes)
    return {
        "checkpoint": opts.checkpoint,
        "checkpoint_epoch": meta.get("epoch"),
        "source": listing.source,
        "source_kind": listing.kind,
        "output": out_uri,
        "image_size": int(meta["dataset"]["image_size"]),
        **decode_settings(meta),  # dicom_window, accept_8bit
        "classes": classes,
        "columns": {c: {"probability": p, "decision": d} for c, p, d in zip(classes, probs, preds, strict=True)},
        "thresholds": thresholds,
        "images_listed": len(listing.items),
        "images_scored": scored,
        "files_ignored": listing.ignored,
        "ignored_by_reason": listing.ignored_by_reason,  # table rows passed over
        "bad_images": len(bad),
        "bad_by_reason": by_reason,
        "bad": bad[:REPORT_BAD_MAX],
        "parts": n_parts,
        "parts_skipped": int(results["skipped"].sum()),
        "actor_seconds": round(float(results["seconds"].sum()), 2),  # busy time of the actors, summed over parts
        "overlays_per_image": opts.overlays,
    }
