"""Rendering PadChest-Synth as a Ray Data job: ``map_batches`` over metadata rows, parallel and resumable."""

from __future__ import annotations

import logging
import time

import pandas as pd
import pyarrow as pa
import ray

from trcgl.config import Config, dump_yaml, to_dict
from trcgl.data.synth import source
from trcgl.storage import Storage, source_dir

log = logging.getLogger(__name__)

MAX_DATA_BLOCKS = 200


def _render_blocks(batch: dict, plan_ref: list, step: int, cfg_dict: dict, name: str, layout: str) -> dict:
    """Renders the plan rows of each block id in ``batch["id"]``; returns one summary row per block."""
    plan = ray.get(plan_ref[0])  # a pyarrow Table in the object store: read in place, not copied
    out: dict[str, list] = {"block": [], "rendered": [], "seconds": []}
    for block in batch["id"]:
        rows = plan.slice(int(block) * step, step).to_pandas()
        res = source.render_rows(rows, cfg_dict, name, layout, check_existing=False)
        out["block"].append(int(block))
        out["rendered"].append(int((res["status"] == "rendered").sum()))
        out["seconds"].append(float(res["seconds"].sum()))
    return out


def _render(cfg: Config, name: str, todo: pd.DataFrame) -> pd.DataFrame:
    """Renders every row of ``todo`` as Ray Data tasks of ``synth.batch_size`` rows; one summary row per block.

    The plan travels once, as one Arrow table in the object store, and the dataset holds only block ids, so the
    driver builds no per-block frames and collects one small row per block, whatever the number of rows.
    """
    step = cfg.synth.batch_size
    blocks = -(-len(todo) // step)
    plan_ref = ray.put(pa.Table.from_pandas(todo, preserve_index=False))
    # at most MAX_DATA_BLOCKS Ray Data blocks of ids, each task calling the function once per id: a few hundred tasks
    # instead of one per id at every row (thousands of tiny read and map tasks each cost scheduling time)
    ds = ray.data.range(blocks, override_num_blocks=min(blocks, MAX_DATA_BLOCKS)).map_batches(
        _render_blocks,
        batch_size=1,  # one call per block of rows (a task makes as many calls as its Ray Data block has ids)
        fn_kwargs={
            "plan_ref": [plan_ref],  # in a list, so Ray hands the task the reference, not a copy per call
            "step": step,
            "cfg_dict": to_dict(cfg),
            "name": name,
            "layout": cfg.synth.layout,
        },
        num_cpus=cfg.ray.cpus_per_task,
    )
    results = ds.to_pandas()
    if sorted(results["block"]) != list(range(blocks)):
        raise RuntimeError(f"rendering returned {len(results)} results for {blocks} blocks")
    return results


def run_synthesize(cfg: Config) -> dict:
    """Renders the configured PadChest-Synth source into ``{root}/sources/{name}/`` (skips it when published).

    Writes the subset CSV (PadChest's format), every image (only missing ones on a rerun), one contact sheet per
    class, ``synth_report.json``, then the manifest.

    Returns:
        The report (also written to storage).
    """
    t0 = time.perf_counter()
    storage = Storage(cfg.storage.root, cfg.storage)
    name = source.source_name(cfg)
    base = source_dir(name)
    chash = source.source_hash(cfg)
    manifest = storage.manifest(base)
    if manifest is not None and manifest.get("config_hash") == chash:
        log.info("PadChest-Synth %s already rendered at %s: skipping", name, storage.uri(base))
        return storage.read_json(f"{base}/synth_report.json")
    storage.check_writable()
    # the whole CSV as text and the subset are dropped before rendering: at every row they are most of the driver's
    # memory, and only the compact plan is needed from here on
    subset = source.select_subset(cfg, source.read_full_csv())
    storage.write_bytes(f"{base}/{source.CSV_FILE}", source.subset_csv_bytes(subset))
    plan = source.render_plan(subset)
    del subset
    todo = source.missing_rows(storage, name, cfg.synth.layout, plan).reset_index(drop=True)
    log.info(
        "rendering %d PadChest-Synth images at %d px into %s (%d of %d already present)",
        len(todo),
        cfg.synth.size,
        storage.uri(base),
        len(plan) - len(todo),
        len(plan),
    )
    results = _render(cfg, name, todo) if len(todo) else pd.DataFrame({"block": [], "rendered": [], "seconds": []})
    if int(results["rendered"].sum()) != len(todo):
        raise RuntimeError(f"rendering returned {int(results['rendered'].sum())} images for {len(todo)} planned")
    sheets = source.write_contact_sheets(cfg, storage, name, cfg.synth.layout, plan)
    status = {"rendered": len(todo), "exists": len(plan) - len(todo)}
    seconds_per_image = float(results["seconds"].sum()) / len(todo) if len(todo) else 0.0
    report = {
        "source": name,
        "root": storage.uri(base),
        "metadata": storage.uri(base, source.CSV_FILE),
        "images": storage.uri(base, "images"),
        "layout": cfg.synth.layout,
        "rows": len(plan),
        "rendered": int(status.get("rendered", 0)),
        "already_present": int(status.get("exists", 0)),
        "render_seconds_per_image": round(seconds_per_image, 4),
        "projections": plan["projection"].value_counts().to_dict(),
        "class_counts": source.class_counts(plan),
        "contact_sheets": sheets,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    storage.write_json(f"{base}/synth_report.json", report)
    storage.write_text(f"{base}/config.yaml", dump_yaml(cfg))
    storage.publish(base, {"stage": "synthesize", "source": name, "config_hash": chash})
    log.info(
        "PadChest-Synth %s: %d rendered, %d already present",
        name,
        report["rendered"],
        report["already_present"],
    )
    return report
