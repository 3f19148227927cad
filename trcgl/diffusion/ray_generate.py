"""Tail-class generation as a Ray Data job: plan parts fan out to a generator class on an actor pool.

Writes ``{root}/runs/{run}/synthetic/part-*.parquet`` (one file per plan part, skipped when present, so a rerun after
a kill fills only the gap) and beside them, out of the Parquet namespace (:func:`trcgl.storage.sidecar`),
``_plan.parquet``, ``_grids/``, ``_realism.json``, ``_fidelity.parquet``, ``_generate_report.json``, ``_inputs.json``
and, last, the manifest that the classifier's mixing trusts. So ``pd.read_parquet(folder)`` reads the rows.
"""

from __future__ import annotations

import logging
import posixpath
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from trcgl import records
from trcgl.config import Config, check_generator_size, filters_fidelity, to_dict
from trcgl.data.dataset import DatasetInfo, load_dataset_info, resolve_dataset_name
from trcgl.data.images import decode_prepared
from trcgl.diffusion.fidelity import (
    CONTROL_SUFFIX,
    FIDELITY_SPLIT,
    control_rows,
    fidelity_keep,
    fidelity_split,
    fidelity_table,
    filter_grid,
    filter_scores,
    finding_visibility_or_none,
    match_real_rows,
    sample_grid,
)
from trcgl.diffusion.plan import Generator, make_plan, output_schema, part_payloads, read_train_rows
from trcgl.diffusion.realism import realism
from trcgl.ray_parquet import read_parts
from trcgl.ray_runtime import check_gpus, map_parts
from trcgl.storage import FIDELITY, GENERATE_PLAN, GENERATE_REPORT, GRIDS, REALISM, Storage, run_dir
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
    kwargs = {"cfg": to_dict(cfg), "model_uri": model_uri, "out_dir": out_dir, "num_classes": num_classes}
    g = cfg.generate
    return map_parts(Generator, payloads, kwargs, (g.actors_min, g.actors_max), g.num_gpus, g.cpus_per_actor)


def run_generate(cfg: Config, force: bool = False) -> dict:
    """Plans and generates the synthetic tail-class rows of ``train.run``; returns the report.

    Args:
        cfg: the config.
        force: recompute even when ``synthetic/`` was made from other config values (it is cleared first).

    Raises:
        trcgl.records.StaleStageError: ``synthetic/`` was made from other generate values and ``force`` is off.
        ConfigError: ``diffusion.image_size`` is not ``data.image_size``.
    """
    check_generator_size(cfg)
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
    storage.write_parquet(posixpath.join(out_dir, GENERATE_PLAN), pa.Table.from_pandas(plan, preserve_index=False))
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
    storage.write_json(posixpath.join(out_dir, GENERATE_REPORT), report)
    storage.drop_legacy_sidecars(out_dir, (GENERATE_PLAN, GENERATE_REPORT, REALISM, FIDELITY, GRIDS))
    storage.publish(out_dir, {"stage": "generate", "dataset": dataset, "model": model_uri})
    return report


def _real_train_images(
    storage: Storage, info: DatasetInfo, wants: list[dict[int, int]], seed: int
) -> list[dict[int, list[np.ndarray]]]:
    """Real train images positive for given classes, one pick per entry of ``wants`` (class index -> images wanted;
    within one pick each image at most once, :func:`~trcgl.diffusion.fidelity.match_real_rows`).

    Reads the labels of every part, then the image column of only the parts holding a picked row.
    """
    fs, k = storage.pyarrow_fs, info.num_classes
    tables = [pq.read_table(fs.open_input_file(p), columns=["split", "labels"]) for p in info.parts]
    labels = np.zeros((0, k), dtype=np.uint8)
    if tables:
        labels = np.concatenate(
            [np.asarray(t["labels"].to_pylist(), dtype=np.uint8).reshape(t.num_rows, k) for t in tables]
        )  # (N, K)
        train = np.concatenate([np.asarray(t["split"].to_pylist(), dtype=object) == "train" for t in tables])  # (N,)
        labels = labels * train[:, None]  # only train rows can be picked
    picks = [match_real_rows(labels, want, seed) for want in wants]
    needed = np.unique(np.concatenate([np.zeros(0, dtype=np.int64), *(i for p in picks for i in p.values())]))
    images: dict[int, np.ndarray] = {}
    start = 0
    for path, t in zip(info.parts, tables, strict=True):
        local = needed[(needed >= start) & (needed < start + t.num_rows)] - start
        if len(local):
            column = pq.read_table(fs.open_input_file(path), columns=["image"])["image"].take(pa.array(local))
            images.update((start + int(i), decode_prepared(b)) for i, b in zip(local, column.to_pylist(), strict=True))
        start += t.num_rows
    return [{c: [images[int(i)] for i in idx] for c, idx in pick.items()} for pick in picks]


def _slug(cls: str) -> str:
    return cls.replace(" ", "-")


def _grids_and_realism(
    cfg: Config, storage: Storage, info: DatasetInfo, out_dir: str, syn: pd.DataFrame
) -> tuple[list[str], dict | None]:
    """Writes ``_grids/{class}.png`` (synthetic above real train positives) and ``_realism.json``; returns the grids'
    paths and the realism figures (None with ``generate.realism_max_images=0``)."""
    g = cfg.generate  # realism_max_images >= 0: checked when the config loads
    # up to realism_max_images synthetic rows (seeded) and as many real train positives in the same class mix
    chosen = np.arange(len(syn))
    if len(syn) > g.realism_max_images:
        chosen = np.sort(np.random.default_rng(g.seed).choice(len(syn), g.realism_max_images, replace=False))
    mix = syn["target_class"].iloc[chosen].value_counts()
    want_realism = {info.classes.index(c): int(m) for c, m in mix.items()}
    want_grids = dict.fromkeys(sorted({info.classes.index(c) for c in syn["target_class"]}), g.grid_examples)
    grid_real, realism_real = _real_train_images(storage, info, [want_grids, want_realism], g.seed)
    grids = []
    for cls, rows in syn.groupby("target_class", sort=True):
        synthetic = [decode_prepared(b) for b in rows["image"].head(g.grid_examples)]
        rel = posixpath.join(out_dir, GRIDS, f"{_slug(cls)}.png")
        storage.write_bytes(rel, sample_grid(cls, synthetic, grid_real[info.classes.index(cls)]))
        grids.append(rel)
    if not len(chosen):
        return grids, None
    real_images = [im for images in realism_real.values() for im in images]
    side = info.image_size
    tested = realism(
        np.stack([decode_prepared(b) for b in syn["image"].iloc[chosen]]),  # (M, S, S)
        np.stack(real_images) if real_images else np.zeros((0, side, side), dtype=np.float32),  # (N, S, S)
        seed=g.seed,
    )
    figures = {**tested.to_dict(), "real_split": "train"}
    log.info("realism: %s", figures)
    storage.write_json(posixpath.join(out_dir, REALISM), figures)
    return grids, figures


def _score_with_controls(
    cfg: Config, storage: Storage, reference: str, parts: list[str], syn: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray | None]:
    """The reference's scores of the synthetic images and of their control images, in one pass (one actor pool).

    Returns:
        ((M, K) synthetic scores, (M, K) control scores with NaN rows where an image has no control, or None when no
        image has one), rows in ``syn``'s order.
    """
    fs = storage.pyarrow_fs
    has_controls = "control_image" in syn and bool(syn["control_image"].notna().any())
    ds = read_parts(parts, fs, ["image_id", "image", "labels"])
    rows = len(syn)
    if has_controls:
        controls = read_parts(parts, fs, ["image_id", "control_image", "labels"])
        ds = ds.union(controls.map_batches(control_rows, batch_format="pyarrow"))
        rows += int(syn["control_image"].notna().sum())
    scored = score_rows(cfg, reference, ds, rows=rows).set_index("image_id")
    syn_scores = np.stack(scored.loc[syn["image_id"], "scores"].to_numpy())  # (M, K)
    if not has_controls:
        return syn_scores, None
    control_scores = np.full(syn_scores.shape, np.nan)  # (M, K)
    ids = syn["image_id"] + CONTROL_SUFFIX
    present = ids.isin(scored.index).to_numpy()
    control_scores[present] = np.stack(scored.loc[ids[present], "scores"].to_numpy())
    return syn_scores, control_scores


def _write_filtered(
    cfg: Config,
    storage: Storage,
    info: DatasetInfo,
    out_dir: str,
    syn: pd.DataFrame,
    ranked: tuple[np.ndarray, str],
    reference: str,
) -> dict:
    """Writes ``_grids/filtered/{class}.png`` (kept above dropped) and publishes the rows passing the fidelity filter
    as ``synthetic_filtered/``; returns what was kept.

    Args:
        ranked: (M,) the score each row is ranked by and its name (:func:`~trcgl.diffusion.fidelity.filter_scores`).
        reference: the reference classifier's URI (recorded in the manifest).
    """
    rank, ranked_by = ranked
    thr, frac = cfg.generate.fidelity_threshold, cfg.generate.fidelity_keep_fraction
    mask = fidelity_keep(rank, syn["target_class"].to_numpy(), thr, frac)  # (M,)
    keep = syn[mask].drop(columns=[c for c in ("__index_level_0__",) if c in syn])
    filtered = run_dir(cfg.train.run, "synthetic_filtered")
    storage.delete(filtered)  # rewritten whole: made from this filter and reference only
    storage.write_parquet(
        posixpath.join(filtered, "part-00000.parquet"),
        pa.Table.from_pandas(keep.reset_index(drop=True), schema=output_schema(info.num_classes), preserve_index=False),
    )
    # a classifier or sweep drawing from this folder records what made it
    storage.write_json(posixpath.join(filtered, records.RECORD), filtered_record(cfg, storage, info.name))
    storage.publish(
        filtered,
        {
            "stage": "generate",
            "fidelity_threshold": thr,
            "fidelity_keep_fraction": frac,
            "ranked_by": ranked_by,
            "reference": reference,
        },
    )
    grids = []
    n = cfg.generate.grid_examples
    for cls, rows in syn.assign(kept=mask).groupby("target_class", sort=True):
        kept = [decode_prepared(b) for b in rows.loc[rows["kept"], "image"].head(n)]
        dropped = [decode_prepared(b) for b in rows.loc[~rows["kept"], "image"].head(n)]
        rel = posixpath.join(out_dir, GRIDS, "filtered", f"{_slug(cls)}.png")
        storage.write_bytes(rel, filter_grid(cls, kept, dropped))
        grids.append(rel)
    log.info("fidelity filter (by %s): kept %d of %d images", ranked_by, int(mask.sum()), len(syn))
    return {
        "kept": int(mask.sum()),
        "of": int(len(syn)),
        "ranked_by": ranked_by,
        "folder": storage.uri(filtered),
        "grids": grids,
    }


def fidelity_and_grids(cfg: Config, storage: Storage, info: DatasetInfo, out_dir: str) -> dict:
    """Writes a sample grid per generated class, the realism test and, with a reference classifier, the fidelity
    table with its controls (:mod:`trcgl.diffusion.fidelity`).

    Realism (:mod:`trcgl.diffusion.realism`, ``_realism.json``) compares up to ``generate.realism_max_images`` generated
    images with as many real train positives of the same classes in the same class mix. Fidelity scores the synthetic
    images, their matched controls (column ``control_image``, when generated) and the real val images with the
    reference; ``_fidelity.parquet``.

    With ``generate.fidelity_threshold`` and/or ``generate.fidelity_keep_fraction`` the rows passing the filter
    (:func:`~trcgl.diffusion.fidelity.fidelity_keep`, ranked by the margin over each image's control when every image
    has one, else by the raw score) are also written, as a published folder, to
    ``{root}/runs/{run}/synthetic_filtered/``, and ``_grids/filtered/{class}.png`` shows kept above dropped images.
    """
    parts = [storage.path(p) for p in storage.list_files(out_dir) if "/part-" in p]
    syn = pa.concat_tables([pq.read_table(storage.pyarrow_fs.open_input_file(p)) for p in parts]).to_pandas()
    grids, realism_figures = _grids_and_realism(cfg, storage, info, out_dir, syn)
    result: dict = {"grids": grids, "realism": realism_figures}
    reference = reference_location(cfg, storage)
    if reference is None:
        log.warning(
            "no reference classifier (set generate.reference_checkpoint or train the classifier of run %r "
            "first): fidelity not scored",
            cfg.train.run,
        )
        return {**result, "fidelity": None}
    # score the synthetic images, their controls and the real val images; the fidelity table
    syn_scores, control_scores = _score_with_controls(cfg, storage, reference, parts, syn)  # (M, K), (M, K) | None
    real = predict_split(cfg, reference, info, fidelity_split(info))
    generated = sorted(set(syn["target_class"]))
    visibility = finding_visibility_or_none(cfg.data.source, generated, info.image_size)
    table = fidelity_table(
        info.classes,
        syn_scores,
        syn["target_class"].tolist(),
        np.stack(real["scores"].to_numpy()),
        np.stack(real["labels"].to_numpy()),
        control_scores,
        *(visibility or (None, None)),
    )
    storage.write_parquet(posixpath.join(out_dir, FIDELITY), pa.Table.from_pandas(table, preserve_index=False))
    fidelity_rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")  # None, never NaN
    result |= {"fidelity": fidelity_rows, "reference": reference, "fidelity_split": FIDELITY_SPLIT}
    # the fidelity filter: ranked by the margin over each image's control (the raw score without controls)
    thr, frac = cfg.generate.fidelity_threshold, cfg.generate.fidelity_keep_fraction
    if thr is not None or frac is not None:
        rows = np.arange(len(syn))
        target = np.array([info.classes.index(c) for c in syn["target_class"]], dtype=np.int64)  # (M,)
        ranked = filter_scores(
            syn_scores[rows, target], None if control_scores is None else control_scores[rows, target]
        )
        result["filtered"] = _write_filtered(cfg, storage, info, out_dir, syn, ranked, reference)
    return result
