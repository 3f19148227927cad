"""The prepared-dataset API: what a stage needs to know about, and read from, a published dataset.

A dataset is ``{root}/datasets/{name}/`` (see :mod:`trcgl.storage`): Parquet parts of rows ``image_id`` (string),
``image`` (raw uint16 bytes, :func:`trcgl.data.images.decode_prepared`), ``labels`` (K multi-hot) and ``split``, plus
the sidecars ``_labels.json`` (classes, groups, counts) and ``_cooccurrence.parquet`` (train label co-occurrence
counts), read under their names without the underscore in a dataset prepared before sidecars took it. Readers trust
only the parts its manifest lists.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trcgl.config import Config
from trcgl.data.prepare import dataset_name, resolve_inputs
from trcgl.storage import COOCCURRENCE, LABELS, Storage, dataset_dir

COLUMNS = ["image_id", "image", "labels"]


@dataclass
class DatasetInfo:
    """What a training run needs to know about a prepared dataset (from its labels and co-occurrence sidecars)."""

    name: str
    classes: list[str]
    groups: list[str]
    train_counts: np.ndarray  # (K,)
    cooccurrence: np.ndarray  # (K, K) train counts
    image_size: int
    parts: list[str]  # Parquet part paths on the storage filesystem (manifest-listed)
    split_sizes: dict[str, int]  # images per split
    parts_bytes: int = 0  # bytes of all Parquet parts (the manifest's sizes); 0: unknown

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def estimated_bytes(self, rows: int) -> int:
        """Bytes of ``rows`` rows at the dataset's mean bytes per row (0 when the part sizes are unknown)."""
        total = sum(self.split_sizes.values())
        return int(self.parts_bytes * rows / total) if total else 0

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "classes": self.classes,
            "groups": self.groups,
            "train_counts": self.train_counts.tolist(),
            "cooccurrence": self.cooccurrence.tolist(),
            "image_size": self.image_size,
            "parts": self.parts,
            "split_sizes": self.split_sizes,
            "parts_bytes": self.parts_bytes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DatasetInfo:
        return cls(
            name=d["name"],
            classes=list(d["classes"]),
            groups=list(d["groups"]),
            train_counts=np.asarray(d["train_counts"], dtype=np.int64),
            cooccurrence=np.asarray(d["cooccurrence"], dtype=np.int64),
            image_size=int(d["image_size"]),
            parts=list(d["parts"]),
            split_sizes={k: int(v) for k, v in d.get("split_sizes", {}).items()},  # absent in older checkpoints
            parts_bytes=int(d.get("parts_bytes", 0)),
        )


def load_dataset_info(storage: Storage, name: str) -> DatasetInfo:
    """Reads a published dataset's labels and co-occurrence sidecars.

    Raises:
        FileNotFoundError: when the dataset is not prepared (names the path and the command that makes it).
    """
    base = dataset_dir(name)
    manifest = storage.manifest(base)
    if manifest is None:
        raise FileNotFoundError(
            f"dataset {name!r} is not prepared at {storage.uri(base)!r}: "
            "run python -m jobs.prepare with the same config"
        )
    labels = storage.read_json(storage.sidecar_rel(base, LABELS))
    classes = labels["classes"]
    co = pq.read_table(io.BytesIO(storage.read_bytes(storage.sidecar_rel(base, COOCCURRENCE)))).to_pandas()
    k = len(classes)
    cooc = np.zeros((k, k), dtype=np.int64)
    cooc[co["i"].to_numpy(), co["j"].to_numpy()] = co["count"].to_numpy()
    sizes = {posixpath.join(base, n): int(b) for n, b in manifest["files"].items()}  # rel path -> bytes
    part_rels = sorted(p for p in sizes if p.endswith(".parquet") and "/part-" in p)
    return DatasetInfo(
        name=name,
        classes=classes,
        groups=labels["groups"],
        train_counts=np.asarray([labels["counts"]["train"][c] for c in classes], dtype=np.int64),
        cooccurrence=cooc,
        image_size=int(labels["image_size"]),
        parts=[storage.path(p) for p in part_rels],
        split_sizes={k: int(v) for k, v in labels["images"].items()},
        parts_bytes=sum(sizes[p] for p in part_rels),
    )


def read_dataset(storage: Storage, name: str, split: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """Reads a published dataset's shards (only files its manifest lists), optionally one split."""
    parts = list(storage.iter_manifest_files(dataset_dir(name), ".parquet"))
    parts = [p for p in parts if posixpath.basename(p).startswith("part-")]
    tables = []
    for p in parts:
        with storage.pyarrow_fs.open_input_file(storage.path(p)) as fh:
            t = pq.read_table(fh, columns=columns if columns is None or "split" in columns else [*columns, "split"])
        if split is not None:
            t = t.filter(pc.equal(t["split"], split))
        tables.append(t)
    if not tables:
        raise FileNotFoundError(f"dataset {name!r} has no shards")
    return pa.concat_tables(tables)


def resolve_dataset_name(cfg: Config, storage: Storage) -> str:
    """``train.dataset``, or the name of the dataset the data section prepares."""
    if cfg.train.dataset:
        return cfg.train.dataset
    return dataset_name(cfg, *resolve_inputs(cfg, storage))
