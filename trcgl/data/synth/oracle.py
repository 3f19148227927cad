"""The oracle generator without Ray: extra tail rows rendered fresh by PadChest-Synth's own renderer.

PadChest-Synth is the one data source with a true generative process, so it gives the upper bound of what synthetic
tail rows can do: the gap between oracle rows and diffusion rows is the generator's quality in units of tail mAP,
and oracle rows against duplicated real rows say whether synthesis can help at all at the working size.

The oracle plans exactly the rows the diffusion generation plans in sample mode (:func:`trcgl.diffusion.plan.make_plan`
with ``generate.*``: the same classes, counts, donors and parts), and for each renders a new image:

- a new ImageID, ``oracle-{class}-{index:05d}`` (never a real PadChest id; checked against the dataset), so the
  renderer draws a new anatomy, new film and new placements;
- the donor's findings, localizations, projection and bit depth, as the donor's own image was rendered
  (:func:`trcgl.data.synth.source.render_plan` of the source's metadata), at ``synth.size`` with ``synth.seed``;
- prepared as the prepare stage prepares a rendered image (16-bit PNG, scaled by its bit depth, padded square,
  resized to ``data.image_size``, raw uint16), and labelled with the donor's labels in the dataset's label set.

Rows have the synthetic rows' schema (:func:`trcgl.diffusion.plan.output_schema`) with ``source = "oracle"``,
``generator = "padchest-synth-renderer"``, ``mode = "sample"`` and the plan's ``donor_id``; ``seed`` is ``synth.seed``
(with the ImageID it fixes every random choice of the rendering). With ``generate.controls`` each row's
``control_image`` is the renderer's counterpart of the empty prompt: the same film (same ImageID, so the same
anatomy and noise) rendered with no finding.

Part j is ``{root}/runs/{run}/oracle/part-{j:05d}.parquet``; a part that exists is skipped, so a rerun after a kill
renders only the missing parts. :mod:`trcgl.data.ray_oracle` fans parts out over Ray Data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from trcgl import records
from trcgl.config import Config, ConfigError, GenerateConfig
from trcgl.data.dataset import DatasetInfo, read_dataset
from trcgl.data.images import decode_xray, encode_png16, encode_prepared, resize_square
from trcgl.data.padchest import read_metadata
from trcgl.data.prepare import resolve_inputs
from trcgl.data.synth.render import render_image
from trcgl.data.synth.source import render_plan
from trcgl.diffusion.plan import make_plan, output_schema, part_name, read_train_rows
from trcgl.storage import Storage

log = logging.getLogger(__name__)

SOURCE = "oracle"  # the rows' ``source`` (and the stage's folder name, records.ORACLE_STAGE)
GENERATOR = "padchest-synth-renderer"
MODE = "sample"  # the rows' ``mode``: the plan is sample mode's, and the renderer draws each image from scratch
ID_PREFIX = "oracle-"
PLAN_FILE = "_plan.parquet"  # a sidecar: the leading underscore keeps it out of the folder's Parquet namespace
REPORT_FILE = "_oracle_report.json"  # a sidecar too ('oracle_report.json' in folders written before)
SYNTH_SOURCE = "padchest-synth"
# the generate keys that decide the oracle's rows: the sample-mode plan (which classes, how many rows, which donors,
# which parts) and whether rows carry control images
PLAN_KEYS = (
    "generate.controls",  # a control image per row: the same film rendered without any finding
    "generate.aug_ratio_tail",
    "generate.aug_ratio_medium",
    "generate.per_class_max",
    "generate.rows_per_file",
    "generate.seed",
)
# synth keys that change no rendered pixel (as in trcgl.data.synth.source.source_hash)
SYNTH_EXECUTION_KEYS = ("synth.batch_size", "synth.contact_sheet_examples")


def check_source(cfg: Config) -> None:
    """The oracle needs PadChest-Synth: only its renderer is a true generative process of the data.

    Raises:
        ConfigError: naming ``data.source`` and its value.
    """
    if cfg.data.source != SYNTH_SOURCE:
        raise ConfigError(
            f"the oracle generator renders with PadChest-Synth's renderer, the only data source with a true "
            f"generative process; config key 'data.source' is {cfg.data.source!r}: oracle rows need "
            f"data.source={SYNTH_SOURCE}"
        )


def oracle_record(cfg: Config, dataset: str) -> dict[str, Any]:
    """What ``{run}/oracle/`` is made from: the plan's generate keys, the renderer's synth keys and the dataset (whose
    name covers ``data.*``, the output size included)."""
    plan_keys = {k: v for k, v in records.flat_keys(cfg, ("generate",)).items() if k in PLAN_KEYS}
    synth_keys = records.flat_keys(cfg, ("synth",), SYNTH_EXECUTION_KEYS)
    return records.stage_record(records.ORACLE_STAGE, plan_keys | synth_keys, dataset=dataset)


def sample_mode(gen: GenerateConfig) -> GenerateConfig:
    """``gen`` planning as sample mode does (the oracle's donors are sample mode's whatever ``generate.mode``)."""
    return dataclasses.replace(gen, mode=MODE)


def oracle_id(target_class: str, index: int) -> str:
    """The ImageID of oracle row ``index`` of a class: ``oracle-{class, spaces as -}-{index:05d}``."""
    return f"{ID_PREFIX}{target_class.replace(' ', '-')}-{index:05d}"


def render_inputs(cfg: Config, storage: Storage) -> pd.DataFrame:
    """How each image of the configured PadChest-Synth source was rendered, indexed by image_id: classes (JSON of
    cxr-lt-30 names), localizations (JSON), projection, bits_stored."""
    metadata_uri, _ = resolve_inputs(cfg, storage)
    return render_plan(read_metadata(metadata_uri, cfg.storage)).set_index("image_id")


def make_oracle_plan(cfg: Config, storage: Storage, info: DatasetInfo) -> pd.DataFrame:
    """The oracle's rows: the sample-mode generation plan, each row with its donor's rendering inputs and a new id.

    Returns:
        The generation plan's columns (image_id replaced by the new id; seed by ``synth.seed``; donor_id: the real
        train row the labels come from), plus render_classes (JSON of the cxr-lt-30 names the donor was rendered
        with), render_localizations (JSON), projection and bits_stored; ordered as the generation plan.

    Raises:
        ConfigError: ``data.source`` is not PadChest-Synth.
        RuntimeError: a donor is missing from the source's metadata, or a new id collides with a dataset id.
    """
    check_source(cfg)
    plan = make_plan(info, read_train_rows(storage, info), sample_mode(cfg.generate))
    if plan.empty:
        return plan.assign(render_classes=[], render_localizations=[], projection=[], bits_stored=[])
    inputs = render_inputs(cfg, storage)
    missing = sorted(set(plan["donor_id"]) - set(inputs.index))
    if missing:
        raise RuntimeError(f"{len(missing)} oracle donors are not in the source's metadata, e.g. {missing[:3]}")
    rendered = inputs.loc[plan["donor_id"]]
    index = plan.groupby("target_class", sort=False).cumcount()
    out = plan.assign(
        image_id=[oracle_id(c, int(i)) for c, i in zip(plan["target_class"], index, strict=True)],
        seed=int(cfg.synth.seed),
        render_classes=rendered["classes"].to_numpy(),
        render_localizations=rendered["localizations"].to_numpy(),
        projection=rendered["projection"].to_numpy(),
        bits_stored=rendered["bits_stored"].astype(int).to_numpy(),
    )
    taken = set(read_dataset(storage, info.name, columns=["image_id"])["image_id"].to_pylist())
    clash = sorted(taken & set(out["image_id"]))
    if clash:
        raise RuntimeError(f"oracle ids collide with ids of dataset {info.name!r}: {clash[:3]}")
    return out


PAYLOAD_COLUMNS = [
    "image_id",
    "target_class",
    "labels",
    "prompt",
    "seed",
    "donor_id",
    "render_classes",
    "render_localizations",
    "projection",
    "bits_stored",
]


def part_payloads(plan: pd.DataFrame) -> list[str]:
    """One JSON payload per part (what travels to a Ray Data task)."""
    return [
        json.dumps({"part": int(p), "rows": plan.loc[plan["part"] == p, PAYLOAD_COLUMNS].to_dict(orient="records")})
        for p in sorted(plan["part"].unique())
    ]


def prepared_pixels(pixels: np.ndarray, bits_stored: int, size: int) -> bytes:
    """A rendered image prepared as the prepare stage prepares a rendered PadChest-Synth file.

    Args:
        pixels: (R, R) uint16 from :func:`trcgl.data.synth.render.render_image`.
        bits_stored: the bit depth it was rendered with.
        size: ``data.image_size``.

    Returns:
        (size, size) raw little-endian uint16 bytes (:func:`trcgl.data.images.encode_prepared`).
    """
    image, _ = decode_xray(encode_png16(pixels), bits_stored)  # (R, R) float32 in [0, 1]
    return encode_prepared(resize_square(image, size))


def write_part(cfg: Config, storage: Storage, out_dir: str, payload: str, num_classes: int) -> dict[str, Any]:
    """Renders, prepares and writes one part unless it exists (a part is one object: whole or absent).

    Returns:
        {"part", "rows", "skipped", "seconds"}.
    """
    t0 = time.perf_counter()
    spec = json.loads(payload)
    rows = spec["rows"]
    rel = posixpath.join(out_dir, part_name(int(spec["part"])))
    if storage.exists(rel):
        return {"part": spec["part"], "rows": len(rows), "skipped": True, "seconds": time.perf_counter() - t0}
    images, controls = [], []
    for r in rows:
        render = {
            "image_id": r["image_id"],
            "localizations": json.loads(r["render_localizations"]),
            "projection": r["projection"],
            "bits_stored": int(r["bits_stored"]),
            "size": cfg.synth.size,
            "dataset_seed": cfg.synth.seed,
        }
        pixels = render_image(classes=json.loads(r["render_classes"]), **render)  # (R, R) uint16
        images.append(prepared_pixels(pixels, int(r["bits_stored"]), cfg.data.image_size))
        if cfg.generate.controls:  # the renderer's "empty prompt": the same film with no finding drawn
            control = render_image(classes=[], **render)  # (R, R) uint16
            controls.append(prepared_pixels(control, int(r["bits_stored"]), cfg.data.image_size))
        else:
            controls.append(None)
    table = pa.Table.from_pydict(
        {
            "image_id": [r["image_id"] for r in rows],
            "image": images,
            "labels": [list(map(int, r["labels"])) for r in rows],
            "target_class": [r["target_class"] for r in rows],
            "prompt": [r["prompt"] for r in rows],
            "seed": [int(r["seed"]) for r in rows],
            "source": [SOURCE] * len(rows),
            "generator": [GENERATOR] * len(rows),
            "mode": [MODE] * len(rows),
            "donor_id": [r["donor_id"] for r in rows],
            "control_image": controls,
        },
        schema=output_schema(num_classes),
    )
    storage.write_parquet(rel, table)
    return {"part": spec["part"], "rows": len(rows), "skipped": False, "seconds": time.perf_counter() - t0}
