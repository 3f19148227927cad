"""The prepare stage without Ray: plan shards, process one shard, and finalise a dataset.

:mod:`trcgl.data.ray_prepare` fans :func:`process_shard` out over Ray Data; tests and the benchmark can call the same
functions in-process.

A plan is deterministic: rows are cleaned, labelled, split by patient and sorted by ImageID, then cut into shards of
``data.shard_rows``. Shard ``i`` is always ``part-{i:05d}.parquet``, so a rerun skips shards already written and never
duplicates a row. A shard is committed by writing its rejects sidecar, then its Parquet file (atomically); the dataset
is committed by ``_manifest.json``, written last.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from trcgl.config import Config, ConfigError, TableConfig, config_hash, dump_yaml, to_dict
from trcgl.data import label_graph, labelsets, splits
from trcgl.data import table as table_source
from trcgl.data.images import decode_xray, encode_prepared, read_image_file, resize_square
from trcgl.data.padchest import clean_metadata, count_reasons, default_metadata_path, read_metadata
from trcgl.data.synth.source import synth_inputs
from trcgl.errors import ImageDecodeError
from trcgl.label_values import UNKNOWN
from trcgl.storage import (
    COOCCURRENCE,
    DATASET_CONFIG,
    LABELS,
    PREPARE_REPORT,
    Storage,
    dataset_dir,
    filesystem_for,
)

log = logging.getLogger(__name__)

SHARD_SIDECAR_DIR = "_shards"
IMAGE_FORMAT = (
    "raw little-endian uint16, square (image_size x image_size), 0..65535 = [0, 1]; see images.decode_prepared"
)
PROBE_ROWS = 20


@dataclass
class PreparePlan:
    """Everything the shard workers need, decided once on the driver."""

    name: str  # dataset name
    config_hash: str
    metadata_uri: str
    images_uri: str
    layout: str  # "dirs" or "flat"
    label_set: labelsets.LabelSet
    rows: pd.DataFrame  # kept rows + split, labels (list of K ints), shard
    meta_rejects: pd.DataFrame
    metadata_rows: int
    extra: dict[str, Any] = field(default_factory=dict)  # added to the report (a table's label columns)

    @property
    def num_shards(self) -> int:
        return int(self.rows["shard"].max()) + 1 if len(self.rows) else 0

    def shard_payload(self, shard: int) -> str:
        """The rows of one shard as JSON (what travels to a worker)."""
        # shards are cut in row order (plan_prepare), so each is one contiguous run: two binary searches instead of a
        # pass over every row per shard, which made planning quadratic in the rows
        lo, hi = np.searchsorted(self.rows["shard"].to_numpy(), [shard, shard + 1])
        sub = self.rows.iloc[lo:hi]
        cols = [
            "image_id",
            "image_dir",
            "patient_id",
            "projection",
            "split",
            "labels",
            "localizations",
            "bits_stored",
        ]
        return json.dumps({"shard": shard, "rows": sub[cols].to_dict(orient="records")}, default=list)


def resolve_inputs(cfg: Config, storage: Storage) -> tuple[str, str]:
    """(metadata URI, images URI) for ``data.source``.

    Raises:
        ConfigError: for real PadChest without ``data.images``.
    """
    if cfg.data.source == "padchest-synth":
        return synth_inputs(cfg, storage)
    if cfg.data.source == "table":
        if not cfg.data.metadata:
            raise ConfigError("config key 'data.metadata' must name the table when data.source=table")
        return cfg.data.metadata, table_source.images_root(cfg.data, cfg.data.metadata)
    if not cfg.data.images:
        raise ConfigError("config key 'data.images' must point at the PadChest images when data.source=padchest")
    return cfg.data.metadata or default_metadata_path(), cfg.data.images


# data keys added after datasets were first named, each with the value that prepares exactly what was prepared
# before the key existed: at that value the key is left out of the name's hash, so a dataset (and every stage record
# naming it) prepared before the key existed keeps its name and is not prepared again
NAME_NEUTRAL_VALUES: dict[str, Any] = {
    "dicom_window": False,
    "table": to_dict(TableConfig()),
    "accept_8bit": False,
}
# of those, the keys also left out of the config hash a dataset's manifest records (dicom_window has been recorded
# since it was added), so a dataset prepared before the key existed is found finished, not "another config"
HASH_NEUTRAL_KEYS = ("table", "accept_8bit")


def data_section(cfg: Config, neutral: tuple[str, ...]) -> dict[str, Any]:
    """The data section as a dict, without the keys of ``neutral`` that are at their neutral value."""
    section = to_dict(cfg.data)
    for key in neutral:
        if section.get(key) == NAME_NEUTRAL_VALUES[key]:
            section.pop(key)
    return section


def dataset_name(cfg: Config, metadata_uri: str, images_uri: str) -> str:
    """Deterministic dataset name: ``{source}-{label_set}-{size}px-{hash}``, or ``data.name`` when set.

    The hash covers the data section (but ``name``, and the keys of :data:`NAME_NEUTRAL_VALUES` at their neutral
    value) and the resolved metadata and image locations.
    """
    if cfg.data.name:
        return cfg.data.name
    section = data_section(cfg, tuple(NAME_NEUTRAL_VALUES))
    section.pop("name")
    section["metadata"], section["images"] = metadata_uri, images_uri
    return f"{cfg.data.source}-{cfg.data.label_set}-{cfg.data.image_size}px-{config_hash(section)}"


def image_path(images_root: str, layout: str, image_dir: str, image_id: str) -> str:
    """Where one image lives: ``{root}/{ImageDir}/{ImageID}`` (dirs) or ``{root}/{ImageID}`` (flat)."""
    return (
        posixpath.join(images_root, image_dir, image_id) if layout == "dirs" else posixpath.join(images_root, image_id)
    )


def detect_layout(cfg: Config, images_uri: str, rows: pd.DataFrame) -> str:
    """Resolves ``data.layout = auto`` by looking for the first rows' files in both layouts.

    Raises:
        FileNotFoundError: when neither layout has any of the probed images (names both tried paths).
    """
    if cfg.data.source == "table":  # each row names its file: check that the first ones are there
        table_source.probe_images(rows, images_uri, cfg.storage, PROBE_ROWS)
        return table_source.LAYOUT
    if cfg.data.layout != "auto":
        return cfg.data.layout
    fs, root = filesystem_for(images_uri, cfg.storage)
    import pyarrow.fs as pafs

    tried = []
    for r in rows.head(PROBE_ROWS).itertuples():
        for layout in ("dirs", "flat"):
            p = image_path(root, layout, r.image_dir, r.image_id)
            if fs.get_file_info(p).type == pafs.FileType.File:
                log.info("image layout: %s (found %s)", layout, p)
                return layout
            tried.append(p)
    raise FileNotFoundError(
        f"no image of the first {min(PROBE_ROWS, len(rows))} metadata rows exists under {images_uri!r} "
        f"(tried e.g. {tried[:2]}); check data.images and data.layout"
    )


def plan_prepare(cfg: Config, metadata_uri: str, images_uri: str) -> PreparePlan:
    """Reads and cleans metadata, labels rows, splits by patient and cuts shards."""
    extra: dict[str, Any] = {}  # report fields of this source
    if cfg.data.source == "table":
        raw = table_source.read_table(metadata_uri, cfg.storage)
        kept, rejected = table_source.clean_table(raw, cfg.data, metadata_uri)
        extra["table_label_columns"] = kept.attrs["label_columns"]
    else:
        raw = read_metadata(metadata_uri, cfg.storage)
        kept, rejected = clean_metadata(raw, cfg.data.projections)
    if cfg.data.max_rows is not None:
        kept = kept.head(cfg.data.max_rows).reset_index(drop=True)
    if "split" not in kept:  # a table's split column, else by patient
        kept["split"] = splits.assign_splits(kept["patient_id"].tolist(), cfg.data.split)
    train_raw = kept.loc[kept["split"] == "train", "raw_labels"].tolist()
    label_set = labelsets.resolve(cfg.data.label_set, train_raw)
    y = label_set.encode(kept["raw_labels"].tolist())  # (N, K)
    if "raw_unknown" in kept:  # a table's U-Ignore: unknown unless positive through another column of the class
        unknown = label_set.encode(kept["raw_unknown"].tolist()).astype(bool) & (y == 0)  # (N, K)
        y[unknown] = UNKNOWN
    kept["labels"] = list(y.tolist())
    kept["shard"] = np.arange(len(kept)) // cfg.data.shard_rows
    if kept.empty:
        raise ValueError(
            f"no usable metadata rows in {metadata_uri!r} (projections {cfg.data.projections}); "
            f"dropped: {count_reasons(rejected)}"
        )
    layout = detect_layout(cfg, images_uri, kept)
    name = dataset_name(cfg, metadata_uri, images_uri)
    return PreparePlan(
        name=name,
        config_hash=config_hash(
            {"data": data_section(cfg, HASH_NEUTRAL_KEYS), "metadata": metadata_uri, "images": images_uri}
        ),
        metadata_uri=metadata_uri,
        images_uri=images_uri,
        layout=layout,
        label_set=label_set,
        rows=kept,
        meta_rejects=rejected,
        metadata_rows=len(raw),
        extra=extra,
    )


# ---------------------------------------------------------------------------------------------------- one shard


def parquet_schema(num_classes: int) -> pa.Schema:
    """The prepared-dataset row schema."""
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("patient_id", pa.string()),
            ("split", pa.string()),
            ("projection", pa.string()),
            ("source", pa.string()),
            ("labels", pa.list_(pa.uint8(), num_classes)),
            ("localizations", pa.list_(pa.string())),
            ("bits_stored", pa.int16()),
            ("image", pa.binary()),
        ]
    )


def part_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def process_shard(payload: str, *, cfg: Config, dataset: str, images_uri: str, layout: str, num_classes: int) -> dict:
    """Decodes, normalises and resizes one shard's images and writes ``part-{shard}.parquet``.

    A shard whose Parquet file already exists is skipped (its sidecar is read back), so reruns resume. Each image
    that cannot be used is rejected with its reason; the other rows of the shard are kept.

    Returns:
        {"shard", "written", "skipped" (bool), "rejects": [{image_id, reason, detail}], "seconds"}.
    """
    t0 = time.perf_counter()
    spec = json.loads(payload)
    shard = int(spec["shard"])
    storage = Storage(cfg.storage.root, cfg.storage)
    out_dir = dataset_dir(dataset)
    part = posixpath.join(out_dir, part_name(shard))
    sidecar = posixpath.join(out_dir, SHARD_SIDECAR_DIR, f"part-{shard:05d}.json")
    if storage.exists(part) and storage.exists(sidecar):
        done = storage.read_json(sidecar)
        return {**done, "skipped": True, "seconds": time.perf_counter() - t0}
    fs, root = filesystem_for(images_uri, cfg.storage)
    filesystems: dict[str, Any] = {}  # table rows: one filesystem per scheme
    size = cfg.data.image_size
    records: dict[str, list[Any]] = {name: [] for name in parquet_schema(num_classes).names}
    rejects = []
    for row in spec["rows"]:
        row_fs, path = fs, image_path(root, layout, row["image_dir"], row["image_id"])
        if layout == table_source.LAYOUT:
            uri = table_source.image_uri(row["image_id"], images_uri)
            row_fs, path = table_source.locate(uri, cfg.storage, filesystems)
        try:
            data = read_image_file(row_fs, path)
            image, bits = decode_xray(
                data, int(row["bits_stored"]), dicom_window=cfg.data.dicom_window, accept_8bit=cfg.data.accept_8bit
            )
            encoded = encode_prepared(resize_square(image, size))
        except ImageDecodeError as exc:
            rejects.append({"image_id": row["image_id"], "reason": exc.reason, "detail": str(exc)[:200]})
            continue
        records["image_id"].append(row["image_id"])
        records["patient_id"].append(row["patient_id"])
        records["split"].append(row["split"])
        records["projection"].append(row["projection"])
        records["source"].append(cfg.data.source)
        records["labels"].append(row["labels"])
        records["localizations"].append(list(row["localizations"]))
        records["bits_stored"].append(bits)
        records["image"].append(encoded)
    table = pa.Table.from_pydict(records, schema=parquet_schema(num_classes))
    summary = {"shard": shard, "written": table.num_rows, "rejects": rejects}
    storage.write_json(sidecar, summary)
    storage.write_parquet(part, table)  # the commit point of the shard
    log.info("shard %d: %d rows written, %d rejected", shard, table.num_rows, len(rejects))
    return {**summary, "skipped": False, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------- finalise


def finalize(cfg: Config, plan: PreparePlan, storage: Storage, shard_results: list[dict], seconds: float) -> dict:
    """Writes the sidecars ``_labels.json`` (with the label graph's summary per tau), ``_cooccurrence.parquet``,
    ``_prepare_report.json`` and ``_config.yaml``, then the manifest."""
    out_dir = dataset_dir(plan.name)
    image_rejects = [r for res in shard_results for r in res["rejects"]]
    rejected_ids = {r["image_id"] for r in image_rejects}
    written = plan.rows[~plan.rows["image_id"].isin(rejected_ids)]
    y = np.asarray(written["labels"].tolist(), dtype=np.uint8).reshape(len(written), len(plan.label_set.classes))
    split_arr = written["split"].to_numpy()
    summary = splits.label_summary(plan.label_set.classes, y, split_arr, cfg.data.groups)
    summary.update(
        {
            "dataset": plan.name,
            "label_set": plan.label_set.name,
            "image_size": cfg.data.image_size,
            "image_format": IMAGE_FORMAT,
        }
    )
    counts = splits.cooccurrence(y[split_arr == "train"])  # (K, K)
    summary["graph"] = label_graph.graph_summary(counts, plan.label_set.classes, summary["groups"])
    storage.write_json(posixpath.join(out_dir, LABELS), summary)
    co = pa.Table.from_pandas(splits.cooccurrence_frame(plan.label_set.classes, counts), preserve_index=False)
    storage.write_parquet(posixpath.join(out_dir, COOCCURRENCE), co)
    meta_reasons = count_reasons(plan.meta_rejects)
    image_reasons: dict[str, int] = {}
    for r in image_rejects:
        image_reasons[r["reason"]] = image_reasons.get(r["reason"], 0) + 1
    report = {
        "dataset": plan.name,
        "metadata": plan.metadata_uri,
        "images": plan.images_uri,
        "layout": plan.layout,
        "metadata_rows": plan.metadata_rows,
        "rows_after_metadata_filters": len(plan.rows),
        "rows_written": int(len(written)),
        "dropped_metadata_rows": sum(meta_reasons.values()),
        "dropped_metadata_by_reason": meta_reasons,
        "dropped_projections": plan.meta_rejects.loc[plan.meta_rejects["reason"] == "projection_not_kept", "detail"]
        .value_counts()
        .to_dict(),
        "rejected_images": len(image_rejects),
        "rejected_images_by_reason": image_reasons,
        "rejected_image_list": image_rejects,
        "rejected_metadata_examples": plan.meta_rejects.groupby("reason").head(5).to_dict(orient="records"),
        "rows_without_any_class": int(((y == 1).sum(axis=1) == 0).sum()),
        **({"unknown_labels": int((y == UNKNOWN).sum())} if cfg.data.source == "table" else {}),  # U-Ignore
        "splits": summary["images"],
        "shards": plan.num_shards,
        "seconds": round(seconds, 2),
        **plan.extra,
    }
    storage.write_json(posixpath.join(out_dir, PREPARE_REPORT), report)
    storage.write_text(posixpath.join(out_dir, DATASET_CONFIG), dump_yaml(cfg))
    storage.drop_legacy_sidecars(out_dir, (LABELS, COOCCURRENCE, PREPARE_REPORT, DATASET_CONFIG))
    storage.publish(out_dir, {"stage": "prepare", "dataset": plan.name, "config_hash": plan.config_hash})
    return report


def check_existing(storage: Storage, plan: PreparePlan) -> dict | None:
    """The report of a finished dataset with the same config, or None.

    A dataset published before sidecars took the underscore counts as finished too (its manifest holds the same
    config hash) and is used as it is: its report is read under the old name.

    Raises:
        ConfigError: when a published dataset of this name was made by a different config.
    """
    manifest = storage.manifest(dataset_dir(plan.name))
    if manifest is None:
        return None
    if manifest.get("config_hash") != plan.config_hash:
        raise ConfigError(
            f"dataset {plan.name!r} at {storage.uri(dataset_dir(plan.name))!r} was prepared with a different config; "
            "choose another data.name or delete it"
        )
    if PREPARE_REPORT not in manifest.get("files", {}):
        log.info(
            "dataset %r at %r is in the layout before sidecars took the underscore: used as it is (read it with "
            "other tools as part-*.parquet, or delete it to prepare it again in the current layout)",
            plan.name,
            storage.uri(dataset_dir(plan.name)),
        )
    return storage.read_json(storage.sidecar_rel(dataset_dir(plan.name), PREPARE_REPORT))
