"""PadChest-Synth without Ray: choose the subset, write its CSV in PadChest's format, render rows, draw sheets.

PadChest-Synth is the embedded default dataset: real PadChest metadata rows (from the CSV that torchxrayvision ships)
rendered as synthetic 16-bit PNGs in PadChest's own layout, ``{images}/{ImageDir}/{ImageID}`` (or flat), with a CSV
in PadChest's format listing exactly the rendered rows. Any PadChest loader reads it, torchxrayvision's
``PC_Dataset`` included. The pixels come from :mod:`trcgl.data.synth` (anatomy from real lung masks, one visual
signature per cxr-lt-30 finding, placed by the row's Localizations, seeded by ImageID and ``synth.seed``).

The subset is stratified: rarest classes first, up to ``synth.tail_floor`` positives of every class (where the real
metadata has that many), then random frontal rows, plus ``synth.lateral_fraction`` lateral rows so loaders see both
kinds of projection. The floor can make the subset larger than ``synth.rows``; the report says so.
``synth.rows: all`` takes every usable frontal and lateral row instead (about 110,000 frontal rows with labels, plus
the laterals, as the metadata has them): there is nothing to choose, so ``tail_floor`` and ``lateral_fraction`` are
ignored and left out of the source's name.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from PIL import Image

from trcgl.config import Config, config_hash, from_dict, to_dict
from trcgl.data import labelsets
from trcgl.data.images import encode_png16
from trcgl.data.padchest import CSV_NAME, FRONTAL, clean_metadata, default_metadata_path
from trcgl.storage import Storage, slugify, source_dir

log = logging.getLogger(__name__)

RENDER_LABEL_SET = "cxr-lt-30"  # the renderer draws these classes
CSV_FILE = CSV_NAME + ".gz"
LATERAL = "L"
ALL_ROWS = "all"  # synth.rows: every usable row


def source_hash(cfg: Config) -> str:
    """Hash of the synth settings that decide which files exist and their pixels (not batch size or sheets)."""
    section = to_dict(cfg.synth)
    ignored = ["batch_size", "contact_sheet_examples"]
    if cfg.synth.rows == ALL_ROWS:  # every row is rendered, so the subset's knobs change nothing
        ignored += ["tail_floor", "lateral_fraction"]
    for k in ignored:
        section.pop(k)
    return config_hash(section)


def source_name(cfg: Config) -> str:
    """Deterministic name of a PadChest-Synth source: ``padchest-synth-{rows}r-{size}px-{hash}``."""
    return f"padchest-synth-{cfg.synth.rows}r-{cfg.synth.size}px-{source_hash(cfg)}"


def synth_inputs(cfg: Config, storage: Storage) -> tuple[str, str]:
    """(metadata URI, images URI) of the configured PadChest-Synth source (data.metadata / data.images win)."""
    base = source_dir(source_name(cfg))
    return (cfg.data.metadata or storage.uri(base, CSV_FILE), cfg.data.images or storage.uri(base, "images"))


def read_full_csv() -> pd.DataFrame:
    """The real PadChest CSV, every column as text exactly as written (so the subset CSV is faithful).

    The same frame as ``pd.read_csv(path, dtype=str, keep_default_na=False)`` (tests/test_synth_dataset.py checks
    it), read by pyarrow's multithreaded CSV reader, which is several times faster on the 160,861 rows: every first
    render reads the whole file. Column names are pandas' (its header row names the blank first column
    ``Unnamed: 0``); some cells hold line breaks inside quotes, hence ``newlines_in_values``.
    """
    path = default_metadata_path()
    names = pd.read_csv(path, nrows=0).columns.tolist()
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return table.to_pandas()


def select_subset(cfg: Config, full: pd.DataFrame) -> pd.DataFrame:
    """Chooses the stratified subset of usable rows.

    Args:
        cfg: uses ``synth.rows`` (``"all"``: every usable frontal and lateral row), ``synth.tail_floor``,
            ``synth.lateral_fraction``, ``synth.seed``.
        full: the real CSV as text.

    Returns:
        The chosen rows of ``full`` (every original column), ordered by ImageID.
    """
    typed = full.copy()
    typed["Labels"] = typed["Labels"].replace("", np.nan)
    typed["csv_row"] = np.arange(2, len(full) + 2)
    kept, _ = clean_metadata(typed, list(FRONTAL) + [LATERAL])
    if cfg.synth.rows == ALL_ROWS:
        return _rows_of(full, set(kept["image_id"]))
    cxr = labelsets.load_file(RENDER_LABEL_SET)
    rng = np.random.default_rng(cfg.synth.seed)
    frontal = kept[kept["projection"].isin(FRONTAL)].reset_index(drop=True)
    lateral = kept[kept["projection"] == LATERAL].reset_index(drop=True)
    n_lat = int(round(cfg.synth.rows * cfg.synth.lateral_fraction))
    n_front = cfg.synth.rows - n_lat
    y = cxr.encode(frontal["raw_labels"].tolist())  # (N, K)
    order = rng.permutation(len(frontal))
    chosen = np.zeros(len(frontal), dtype=bool)
    have = np.zeros(y.shape[1], dtype=np.int64)
    for k in np.argsort(y.sum(axis=0), kind="stable"):  # rarest class first
        need = min(cfg.synth.tail_floor, int(y[:, k].sum())) - have[k]
        if need <= 0:
            continue
        cand = order[(y[order, k] == 1) & ~chosen[order]][:need]
        chosen[cand] = True
        have += y[cand].sum(axis=0, dtype=np.int64)
    floor_rows = int(chosen.sum())
    if floor_rows > n_front:
        log.warning(
            "tail floor needs %d frontal rows, more than the %d asked for: keeping them all",
            floor_rows,
            n_front,
        )
    fill = order[~chosen[order]][: max(0, n_front - floor_rows)]
    chosen[fill] = True
    lat_idx = rng.permutation(len(lateral))[:n_lat]
    ids = set(frontal.loc[chosen, "image_id"]) | set(lateral.loc[lat_idx, "image_id"])
    return _rows_of(full, ids)


def _rows_of(full: pd.DataFrame, ids: set[str]) -> pd.DataFrame:
    """The rows of ``full`` whose ImageID is in ``ids``, once each, ordered by ImageID."""
    subset = full[full["ImageID"].str.strip().isin(ids)].drop_duplicates("ImageID")
    return subset.sort_values("ImageID").reset_index(drop=True)


def subset_csv_bytes(subset: pd.DataFrame) -> bytes:
    """The subset as a gzipped CSV in PadChest's format (unnamed index column first, as distributed)."""
    out = subset.rename(columns={"Unnamed: 0": ""})
    buf = io.BytesIO()
    out.to_csv(buf, index=False, compression={"method": "gzip", "mtime": 0})
    return buf.getvalue()


def render_plan(subset: pd.DataFrame) -> pd.DataFrame:
    """One row per image to render: image_id, image_dir, classes (JSON), localizations (JSON), projection, bits."""
    cxr = labelsets.load_file(RENDER_LABEL_SET)
    typed = subset.copy()
    typed["csv_row"] = np.arange(2, len(subset) + 2)
    kept, _ = clean_metadata(typed, list(FRONTAL) + [LATERAL])
    return pd.DataFrame(
        {
            "image_id": kept["image_id"],
            "image_dir": kept["image_dir"],
            "classes": [json.dumps(cxr.classes_of(r)) for r in kept["raw_labels"]],
            "localizations": [json.dumps(list(loc)) for loc in kept["localizations"]],
            "projection": kept["projection"],
            "bits_stored": [b if b in (10, 12) else 12 for b in kept["bits_stored"]],
        }
    )


def image_rel(name: str, layout: str, image_dir: str, image_id: str) -> str:
    """Relative storage path of one rendered image."""
    base = posixpath.join(source_dir(name), "images")
    return posixpath.join(base, image_dir, image_id) if layout == "dirs" else posixpath.join(base, image_id)


def render_rows(
    batch: pd.DataFrame, cfg_dict: dict, name: str, layout: str, check_existing: bool = True
) -> pd.DataFrame:
    """Renders a batch of plan rows to PNG files, skipping images that already exist (resumable).

    Each file is written under a temporary name and renamed (one PUT on S3), so a render killed at any point leaves
    whole images or none: a rerun never counts a half-written PNG as present.

    Args:
        batch: plan rows (:func:`render_plan`).
        cfg_dict: the config as a plain dict.
        name: the source's name.
        layout: "dirs" or "flat".
        check_existing: stat each image first and skip it when present; False when the caller has already
            dropped the present ones (:func:`missing_rows`, one listing instead of a stat per image).

    Returns:
        One row per input: image_id, status ("rendered" or "exists"), seconds.
    """
    import time

    # lazy: the renderer pulls in scipy (about 1 s); prepare's workers import this module for synth_inputs only
    from trcgl.data.synth.render import render_image

    cfg = from_dict(cfg_dict, "render task")
    storage = Storage(cfg.storage.root, cfg.storage)
    status, secs = [], []
    for r in batch.itertuples(index=False):
        t0 = time.perf_counter()
        rel = image_rel(name, layout, r.image_dir, r.image_id)
        if check_existing and storage.exists(rel):
            status.append("exists")
        else:
            pixels = render_image(
                image_id=r.image_id,
                classes=json.loads(r.classes),
                localizations=json.loads(r.localizations),
                projection=r.projection,
                bits_stored=int(r.bits_stored),
                size=cfg.synth.size,
                dataset_seed=cfg.synth.seed,
            )
            storage.write_bytes(rel, encode_png16(pixels))
            status.append("rendered")
        secs.append(time.perf_counter() - t0)
    return pd.DataFrame({"image_id": batch["image_id"].to_numpy(), "status": status, "seconds": secs})


def missing_rows(storage: Storage, name: str, layout: str, plan: pd.DataFrame) -> pd.DataFrame:
    """The plan rows whose image is not in storage yet, from one recursive listing of the images folder.

    One listing (paginated, 1,000 keys a request on S3) instead of a stat per image: a rerun over every PadChest row
    checks 160k images in a few requests. Temporary files of a killed write never match an image's name.
    """
    base = posixpath.join(source_dir(name), "images")
    present = set(storage.list_files(base))  # relative to the root, like image_rel
    if not present:
        return plan
    rels = [image_rel(name, layout, d, i) for d, i in zip(plan["image_dir"], plan["image_id"], strict=True)]
    return plan[[rel not in present for rel in rels]]


def write_contact_sheets(cfg: Config, storage: Storage, name: str, layout: str, plan: pd.DataFrame) -> list[str]:
    """One PNG per class: up to N frontal examples with that finding next to N normals."""
    # lazy: matplotlib and the renderer, needed only when the sheets are drawn
    from trcgl.data.synth.sheet import make_contact_sheet

    n = cfg.synth.contact_sheet_examples
    frontal = plan[plan["projection"].isin(FRONTAL)]
    classes = frontal["classes"].map(json.loads)
    normals = frontal[classes.map(lambda c: list(c) == ["normal"])].head(n)

    def load(rows: pd.DataFrame) -> list[np.ndarray]:
        out = []
        for r in rows.itertuples(index=False):
            data = storage.read_bytes(image_rel(name, layout, r.image_dir, r.image_id))
            out.append(np.asarray(Image.open(io.BytesIO(data))))
        return out

    normal_images = load(normals)
    written = []
    for cls in labelsets.load_file(RENDER_LABEL_SET).classes:
        if cls == "normal":
            continue
        pos = frontal[classes.map(lambda c, cls=cls: cls in c)].head(n)
        buf = io.BytesIO()
        make_contact_sheet([(cls, load(pos), normal_images)], buf)
        rel = posixpath.join(source_dir(name), "sheets", f"{slugify(cls)}.png")
        storage.write_bytes(rel, buf.getvalue())
        written.append(rel)
    return written


def class_counts(plan: pd.DataFrame) -> dict[str, int]:
    """Rows per cxr-lt-30 class in a render plan."""
    counts: dict[str, int] = {}
    for classes in plan["classes"].map(json.loads):
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
