"""Scoring one part of a predict plan and writing it, without Ray: the class Ray Data runs on an actor pool, which
tests and the benchmark call in-process.

A part is committed like a prepare shard: its sidecar ``_parts/part-{j}.json`` (rows written, bad images) first, its
overlays, then ``part-{j}.parquet`` in one atomic write. A part whose Parquet file and sidecar exist is skipped, so a
rerun after a kill scores only what is missing and never writes a row twice.

Output columns (:func:`output_schema`): ``image_id``; ``uri`` (the image file; null for dataset rows); per class
``prob_{slug}`` (float32 sigmoid probability) and ``pred_{slug}`` (bool, ``prob >= threshold`` of the class), slug =
:func:`class_slug` of the class name; ``findings`` (the classes decided present, most probable first); ``overlays``
(paths of the part's attention overlays, relative to the output folder; empty without ``--overlays``).
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from trcgl.config import StorageConfig
from trcgl.data.images import decode_prepared, prepared_pixels, read_image_file
from trcgl.errors import ImageDecodeError
from trcgl.storage import Storage, filesystem_for, parse_uri, slugify
from trcgl.train.predict import Predictor

log = logging.getLogger(__name__)

PARTS_DIR, OVERLAY_DIR = "_parts", "_overlays"
OVERLAY_ALPHA = 0.5  # weight of the attention colour where the map is at its maximum


def class_slug(name: str) -> str:
    """A class name as a column-name part: ``pleural effusion`` -> ``pleural_effusion``."""
    return slugify(name, "_")


def class_columns(classes: list[str]) -> tuple[list[str], list[str]]:
    """(probability columns, decision columns), in class order.

    Raises:
        ValueError: two class names give the same column name.
    """
    slugs = [class_slug(c) for c in classes]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"class names {classes} give clashing column names {slugs}")
    return [f"prob_{s}" for s in slugs], [f"pred_{s}" for s in slugs]


def output_schema(classes: list[str]) -> pa.Schema:
    """The schema of a predictions part (module docstring)."""
    probs, preds = class_columns(classes)
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("uri", pa.string()),
            *[(c, pa.float32()) for c in probs],
            *[(c, pa.bool_()) for c in preds],
            ("findings", pa.list_(pa.string())),
            ("overlays", pa.list_(pa.string())),
        ]
    )


def part_file(part: int) -> str:
    return f"part-{part:05d}.parquet"


def sidecar_file(part: int) -> str:
    return posixpath.join(PARTS_DIR, f"part-{part:05d}.json")


def decode_settings(meta: dict) -> dict[str, bool]:
    """How a checkpoint's training data decoded its files (``data.dicom_window``, ``data.accept_8bit``; off for a
    checkpoint written before the key existed), as keyword arguments of
    :func:`trcgl.data.images.prepared_pixels`."""
    data = meta["config"].get("data", {})
    return {key: bool(data.get(key, False)) for key in ("dicom_window", "accept_8bit")}


def overlay_png(image: np.ndarray, attention: np.ndarray) -> bytes:
    """One class's attention map blended over an image, as an RGB PNG at the image's size.

    Args:
        image: (S, S) float32 in [0, 1], the classifier's input.
        attention: (h, w) map of the class (sums to 1), upsampled bilinearly to (S, S) and scaled to its maximum.

    Returns:
        PNG bytes: the gray image tinted with the ``jet`` colour of the map, in proportion to the map.
    """
    from matplotlib import colormaps  # lazy: only actors that draw overlays pay the import

    s = image.shape[-1]
    a = torch.nn.functional.interpolate(
        torch.from_numpy(attention[None, None].astype(np.float32)), size=(s, s), mode="bilinear", align_corners=False
    )[0, 0].numpy()  # (S, S)
    a = np.clip(a / max(float(a.max()), 1e-12), 0.0, 1.0)
    colour = colormaps["jet"](a)[..., :3]  # (S, S, 3)
    weight = OVERLAY_ALPHA * a[..., None]  # (S, S, 1)
    rgb = (1.0 - weight) * image[..., None] + weight * colour  # (S, S, 3)
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


class PartScorer:
    """Scores parts of a predict plan with a classifier checkpoint and writes each as one Parquet file.

    Images are read (local or S3) and preprocessed as prepare does, at the checkpoint's image size
    (:func:`trcgl.data.images.prepared_pixels`, with the checkpoint's ``data.dicom_window`` and
    ``data.accept_8bit``); dataset rows are read from their prepared part. An image that cannot be read or decoded is
    left out of the part and listed in its sidecar with its reason; the part goes on.

    Args:
        checkpoint: checkpoint folder (local or s3://).
        out_root: storage root (local or s3://) the output folder is relative to.
        out_dir: the output folder, relative to ``out_root``.
        thresholds: (K,) decision thresholds in class order.
        storage: endpoint settings as a plain dict (``StorageConfig``).
        overlays: attention overlays for each image's top-N classes (0: none).
        batch_size: images per forward pass.
        device: "auto", "cpu" or "cuda" (:func:`trcgl.train.devices.inference_device`).
        threads: torch CPU threads (when scoring on the CPU).
    """

    def __init__(
        self,
        checkpoint: str,
        out_root: str,
        out_dir: str,
        thresholds: list[float],
        storage: dict | None = None,
        overlays: int = 0,
        batch_size: int = 32,
        device: str = "auto",
        threads: int = 1,
    ) -> None:
        self.storage_cfg = StorageConfig(**(storage or {}))
        self.predictor = Predictor(checkpoint, storage, device)
        if self.predictor.device.type == "cpu":
            torch.set_num_threads(max(1, threads))
        meta = self.predictor.meta
        self.classes: list[str] = list(meta["dataset"]["classes"])
        self.size = int(meta["dataset"]["image_size"])
        self.decode = decode_settings(meta)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)  # (K,)
        if self.thresholds.shape != (len(self.classes),):
            raise ValueError(f"{self.thresholds.shape[0]} thresholds for {len(self.classes)} classes")
        self.schema = output_schema(self.classes)
        self.out = Storage(out_root, self.storage_cfg)
        self.out_dir, self.overlays, self.batch_size = out_dir, overlays, batch_size
        self._filesystems: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------ images

    def _filesystem(self, uri: str) -> tuple[Any, str]:
        """(filesystem, path on it) of a local path or s3:// URI; one filesystem per scheme (an S3 client is costly)."""
        location = parse_uri(uri)
        if location.scheme not in self._filesystems:
            self._filesystems[location.scheme] = filesystem_for(uri, self.storage_cfg)[0]
        return self._filesystems[location.scheme], location.path

    def _prepared_rows(self, items: list[dict]) -> dict[str, np.ndarray]:
        """{image_id: (S, S) image} of dataset items, each prepared part read once."""
        out: dict[str, np.ndarray] = {}
        for file in sorted({i["file"] for i in items}):
            wanted = pa.array([i["image_id"] for i in items if i["file"] == file])
            fs, path = self._filesystem(file)
            table = pq.read_table(fs.open_input_file(path), columns=["image_id", "image"])
            table = table.filter(pc.is_in(table["image_id"], value_set=wanted))
            for image_id, data in zip(table["image_id"].to_pylist(), table["image"].to_pylist(), strict=True):
                out[image_id] = decode_prepared(data)
        return out

    def load(self, items: list[dict]) -> tuple[list[dict], np.ndarray, list[dict]]:
        """The images of some items, as the classifier sees them.

        Args:
            items: dicts with ``image_id``, ``uri`` (a file) or ``file`` (a prepared part holding the row).

        Returns:
            (the items loaded, their images (n, S, S) float32, the bad items: ``image_id``, ``uri``, ``reason``,
            ``detail``).
        """
        prepared = self._prepared_rows([i for i in items if i.get("file")])
        good, images, bad = [], [], []
        for item in items:
            try:
                if item.get("file"):
                    if item["image_id"] not in prepared:
                        raise ImageDecodeError("missing_row", f"no row {item['image_id']!r} in {item['file']}")
                    image = prepared[item["image_id"]]
                    if image.shape != (self.size, self.size):
                        raise ImageDecodeError(
                            "wrong_size", f"prepared at {image.shape[0]} px, the checkpoint takes {self.size} px"
                        )
                else:
                    data = read_image_file(*self._filesystem(item["uri"]))
                    image = prepared_pixels(data, self.size, **self.decode)
            except ImageDecodeError as exc:
                bad.append({**_where(item), "reason": exc.reason, "detail": str(exc)[:200]})
                continue
            good.append(item)
            images.append(image)
        stacked = np.stack(images) if images else np.zeros((0, self.size, self.size), np.float32)  # (n, S, S)
        return good, stacked, bad

    # ------------------------------------------------------------------------------------------------ scoring

    def score(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities (n, K) of images (n, S, S) in batches of ``batch_size``, and with ``overlays`` the attention
        maps (n, K, h, w)."""
        probs, maps = [], []
        for start in range(0, len(images), self.batch_size):
            x = torch.from_numpy(images[start : start + self.batch_size, None])  # (b, 1, S, S)
            p, m = self.predictor.probabilities(x, return_attention=self.overlays > 0)  # (b, K), (b, K, h, w)
            probs.append(p)
            maps.append(m)
        if not probs:
            return np.zeros((0, len(self.classes)), np.float32), None
        return np.concatenate(probs), (np.concatenate(maps) if self.overlays > 0 else None)

    def _write_overlays(
        self, part: int, items: list[dict], images: np.ndarray, probs: np.ndarray, maps: np.ndarray
    ) -> list[list[str]]:
        """Writes the top-``overlays`` classes' overlays of each image; returns their paths per image."""
        paths = []
        for row, (item, image, p, m) in enumerate(zip(items, images, probs, maps, strict=True)):
            mine = []
            for k in np.argsort(-p, kind="stable")[: self.overlays]:
                name = f"{row:05d}-{slugify(item['image_id'])[:60]}-{class_slug(self.classes[k])}.png"
                rel = posixpath.join(OVERLAY_DIR, f"part-{part:05d}", name)
                self.out.write_bytes(posixpath.join(self.out_dir, rel), overlay_png(image, m[k]))
                mine.append(rel)
            paths.append(mine)
        return paths

    def table(self, items: list[dict], probs: np.ndarray, overlays: list[list[str]] | None = None) -> pa.Table:
        """The output rows of scored items (module docstring: the columns)."""
        decisions = probs >= self.thresholds  # (n, K)
        prob_cols, pred_cols = class_columns(self.classes)
        findings = [
            [self.classes[k] for k in np.argsort(-p, kind="stable") if d[k]]
            for p, d in zip(probs, decisions, strict=True)
        ]
        columns: dict[str, Any] = {
            "image_id": [i["image_id"] for i in items],
            "uri": [i.get("uri") for i in items],
            **{c: probs[:, k].astype(np.float32) for k, c in enumerate(prob_cols)},
            **{c: decisions[:, k] for k, c in enumerate(pred_cols)},
            "findings": findings,
            "overlays": overlays if overlays is not None else [[] for _ in items],
        }
        return pa.Table.from_pydict(columns, schema=self.schema)

    # ------------------------------------------------------------------------------------------------ parts

    def write_part(self, part: int, items: list[dict]) -> dict:
        """Scores one part and writes it, unless it is already written.

        Returns:
            ``part``, ``written`` (rows), ``bad`` (the bad items), ``skipped``, ``seconds``.
        """
        t0 = time.perf_counter()
        rel = posixpath.join(self.out_dir, part_file(part))
        sidecar = posixpath.join(self.out_dir, sidecar_file(part))
        if self.out.exists(rel) and self.out.exists(sidecar):
            return {**self.out.read_json(sidecar), "skipped": True, "seconds": time.perf_counter() - t0}
        good, images, bad = self.load(items)
        probs, maps = self.score(images)  # (n, K), (n, K, h, w) | None
        overlays = self._write_overlays(part, good, images, probs, maps) if maps is not None else None
        table = self.table(good, probs, overlays)
        summary = {"part": part, "written": table.num_rows, "bad": bad}
        self.out.write_json(sidecar, summary)
        self.out.write_parquet(rel, table)  # the part's commit point: one object, whole or absent
        log.info("part %d: %d images scored, %d bad", part, table.num_rows, len(bad))
        return {**summary, "skipped": False, "seconds": time.perf_counter() - t0}

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Ray Data batch: one row per part, column ``payload`` (:func:`trcgl.predict.sources.part_payloads`)."""
        rows = []
        for payload in batch["payload"]:
            spec = json.loads(payload)
            done = self.write_part(int(spec["part"]), spec["items"])
            rows.append({**done, "bad": json.dumps(done["bad"])})
        return pd.DataFrame(rows, columns=["part", "written", "bad", "skipped", "seconds"])


def _where(item: dict) -> dict:
    """An item's id and location for a report line."""
    return {"image_id": item["image_id"], "uri": item.get("uri") or item.get("file")}
