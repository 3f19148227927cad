"""Rendering PadChest-Synth as a Ray Data job: ``map_batches`` over metadata rows, parallel and resumable."""

from __future__ import annotations

import logging
import time

import ray

from trcgl.config import Config, dump_yaml, to_dict
from trcgl.data.synth import source
from trcgl.storage import Storage, source_dir

log = logging.getLogger(__name__)


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
    full = source.read_full_csv()
    subset = source.select_subset(cfg, full)
    storage.write_bytes(f"{base}/{source.CSV_FILE}", source.subset_csv_bytes(subset))
    plan = source.render_plan(subset)
    log.info("rendering %d PadChest-Synth images at %d px into %s", len(plan), cfg.synth.size, storage.uri(base))
    step = cfg.synth.batch_size
    blocks = [plan.iloc[i : i + step] for i in range(0, len(plan), step)]  # one task per block
    ds = ray.data.from_pandas(blocks).map_batches(
        source.render_rows,
        batch_size=cfg.synth.batch_size,
        batch_format="pandas",
        fn_kwargs={"cfg_dict": to_dict(cfg), "name": name, "layout": cfg.synth.layout},
        num_cpus=cfg.ray.cpus_per_task,
    )
    results = ds.to_pandas()
    if sorted(results["image_id"]) != sorted(plan["image_id"]):
        raise RuntimeError(f"rendering returned {len(results)} results for {len(plan)} planned images")
    sheets = source.write_contact_sheets(cfg, storage, name, cfg.synth.layout, plan)
    status = results["status"].value_counts().to_dict()
    report = {
        "source": name,
        "root": storage.uri(base),
        "metadata": storage.uri(base, source.CSV_FILE),
        "images": storage.uri(base, "images"),
        "layout": cfg.synth.layout,
        "rows": len(plan),
        "rendered": int(status.get("rendered", 0)),
        "already_present": int(status.get("exists", 0)),
        "render_seconds_per_image": round(float(results["seconds"].mean()), 4),
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
