"""What ``jobs.predict`` scores: a SOURCE listed as image items and cut into parts, without Ray.

SOURCE forms (:func:`list_source`):

* a folder, local or ``s3://bucket/prefix``: every file below it (recursively) whose name ends in ``.png``, ``.dcm``
  or ``.dicom`` (any case) or has no suffix (DICOM files often have none); names or folders starting with ``.`` or
  ``_`` are passed over (hidden files, sidecars). What a file is, PNG or DICOM, is decided from its bytes
  (:func:`trcgl.data.images.decode_xray`). A single image file works too. Item id: the path below the folder;
* ``dataset:SPLIT`` or ``dataset:NAME:SPLIT``: the rows of one split of a prepared dataset (by default the one the
  checkpoint was trained on), already decoded and resized by prepare. Item id: the row's ``image_id``;
* ``table:PATH``: the image paths of a CSV or Parquet table (local or s3://), its columns mapped by a
  ``data.source=table`` data section (:mod:`trcgl.data.table`): the job's own when its config has
  ``data.source=table``, else the checkpoint's. Rows are kept as prepare keeps them, but for their labels (a new table
  needs none): rows without a path or patient, of a view not in ``data.projections``, or repeating a path are passed
  over and counted by reason. Relative paths are below ``data.images``, else the table's folder. Item id: the path
  cell as written.

Items are sorted by id and cut into parts of ``rows_per_part``; part j is ``part-{j:05d}.parquet`` in the output, so
the same listing always gives the same parts (a rerun skips the finished ones).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trcgl.config import DataConfig, StorageConfig, config_hash
from trcgl.data.dataset import load_dataset_info
from trcgl.data.padchest import count_reasons
from trcgl.data.table import clean_table, image_uri, images_root, read_table
from trcgl.errors import ConfigError
from trcgl.storage import Storage, filesystem_for, parse_uri

IMAGE_SUFFIXES = (".png", ".dcm", ".dicom")
ITEM_COLUMNS = ["image_id", "uri", "file"]  # uri: the image file; file: the prepared part holding the row (dataset)
DATASET_PREFIX, TABLE_PREFIX = "dataset:", "table:"


@dataclass
class Listing:
    """The items of a SOURCE.

    Attributes:
        kind: "folder", "dataset" or "table".
        source: the SOURCE as resolved (a folder's absolute path or s3:// URI; ``dataset:NAME:SPLIT``;
            ``table:URI``).
        items: columns :data:`ITEM_COLUMNS`, one row per image, sorted by ``image_id`` (unique).
        ignored: files below a folder passed over by name (other suffixes, hidden or ``_`` names); table rows passed
            over.
        image_size: the side of a dataset's prepared images; None for files (resized by the scorer).
    """

    kind: str
    source: str
    items: pd.DataFrame
    ignored: int = 0
    image_size: int | None = None
    ignored_by_reason: dict[str, int] = field(default_factory=dict)  # table rows passed over, by reason

    def fingerprint(self) -> str:
        """A hash of the item list: another list (images added or removed) is another input."""
        return config_hash(self.items[ITEM_COLUMNS].astype(object).where(self.items.notna(), None).values.tolist(), 12)


def is_image_name(name: str) -> bool:
    """Whether a path below a folder is listed (module docstring): no part hidden or ``_``, an image suffix or none."""
    suffix = posixpath.splitext(posixpath.basename(name))[1].lower()
    hidden = any(p.startswith((".", "_")) for p in name.split("/"))
    return not hidden and (suffix in IMAGE_SUFFIXES or suffix == "")


def _items(ids: list[str], uris: list[str | None], files: list[str | None]) -> pd.DataFrame:
    items = pd.DataFrame({"image_id": ids, "uri": uris, "file": files}, columns=ITEM_COLUMNS)
    return items.sort_values("image_id", kind="stable").reset_index(drop=True)


def list_folder(uri: str, storage_cfg: StorageConfig) -> Listing:
    """The images below a local or s3:// folder, or one image file (module docstring: which files).

    Raises:
        FileNotFoundError: nothing exists at ``uri``.
    """
    fs, root = filesystem_for(uri, storage_cfg)
    scheme = "s3://" if parse_uri(uri).scheme == "s3" else ""
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return Listing("folder", f"{scheme}{root}", _items([posixpath.basename(root)], [f"{scheme}{root}"], [None]))
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no folder or file at {uri!r}")
    base = root.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    names = sorted(i.path[len(base) :] for i in infos if i.type == pafs.FileType.File)
    kept = [n for n in names if is_image_name(n)]
    items = _items(kept, [f"{scheme}{base}{n}" for n in kept], [None] * len(kept))
    return Listing("folder", f"{scheme}{root}", items, ignored=len(names) - len(kept))


def list_dataset(storage: Storage, name: str, split: str) -> Listing:
    """The rows of one split of a prepared dataset (its manifest-listed parts).

    Raises:
        FileNotFoundError: the dataset is not prepared under ``storage``.
        ValueError: the split has no rows.
    """
    info = load_dataset_info(storage, name)
    ids: list[str] = []
    files: list[str | None] = []
    for part in info.parts:
        table = pq.read_table(storage.pyarrow_fs.open_input_file(part), columns=["image_id", "split"])
        chosen = table.filter(pc.equal(table["split"], split))["image_id"].to_pylist()
        ids += chosen
        files += [f"s3://{part}" if storage.is_s3 else part] * len(chosen)
    if not ids:
        raise ValueError(f"split {split!r} of dataset {name!r} has no rows (splits: {info.split_sizes})")
    items = _items(ids, [None] * len(ids), files)
    return Listing("dataset", f"{DATASET_PREFIX}{name}:{split}", items, image_size=info.image_size)


def list_dataset_spec(spec: str, storage: Storage, default_dataset: str, data: DataConfig) -> Listing:
    """``dataset:SPLIT`` (the checkpoint's dataset) or ``dataset:NAME:SPLIT``, listed by :func:`list_dataset`."""
    fields = spec[len(DATASET_PREFIX) :].split(":")
    if len(fields) == 1 and fields[0]:
        return list_dataset(storage, default_dataset, fields[0])
    if len(fields) == 2 and all(fields):
        return list_dataset(storage, fields[0], fields[1])
    raise ConfigError(f"--images {spec!r}: expected dataset:SPLIT or dataset:NAME:SPLIT (e.g. dataset:test)")


def list_table(spec: str, storage: Storage, default_dataset: str, data: DataConfig) -> Listing:
    """``table:URI``: the image paths of a table, mapped by ``data`` (module docstring: which rows).

    Raises:
        ConfigError: ``data`` is not a table source, a mapped column is missing, or no row is left.
    """
    uri = spec[len(TABLE_PREFIX) :]
    if not uri:
        raise ConfigError(f"--images {spec!r}: expected table:PATH (a CSV or Parquet file, local or s3://)")
    if data.source != "table":
        raise ConfigError(
            f"--images {spec!r}: a table needs its column mapping (data.table), but the checkpoint was trained on "
            f"data.source={data.source!r}: give it with --config of a table preset or --set data.source=table "
            "data.table.path_column=... (README: Your own data: a labelled table)"
        )
    kept, rejected = clean_table(read_table(uri, storage.cfg), data, uri, labels=False)
    if kept.empty:
        raise ConfigError(f"--images {spec!r}: no row of {uri} is usable ({count_reasons(rejected)})")
    root = images_root(data, uri)
    ids = kept["image_id"].tolist()
    items = _items(ids, [image_uri(i, root) for i in ids], [None] * len(ids))
    by_reason = count_reasons(rejected)
    return Listing("table", f"{TABLE_PREFIX}{uri}", items, ignored=len(rejected), ignored_by_reason=by_reason)


# SOURCE prefix -> lister(spec, storage, the checkpoint's dataset name, the data section mapping a table); a SOURCE
# without a known prefix is a folder
LISTERS: dict[str, Callable[[str, Storage, str, DataConfig], Listing]] = {
    DATASET_PREFIX: list_dataset_spec,
    TABLE_PREFIX: list_table,
}


def list_source(spec: str, storage: Storage, default_dataset: str, data: DataConfig | None = None) -> Listing:
    """The items of a SOURCE (module docstring: the forms).

    Args:
        spec: the SOURCE as given to ``--images``.
        storage: the storage root (prepared datasets; endpoint settings for s3:// folders and tables).
        default_dataset: the dataset ``dataset:SPLIT`` means (the checkpoint's).
        data: the data section whose ``table`` maps a ``table:`` SOURCE; None: the defaults (no table source).
    """
    for prefix, lister in LISTERS.items():
        if spec.startswith(prefix):
            return lister(spec, storage, default_dataset, data or DataConfig())
    return list_folder(spec, storage.cfg)


def part_payloads(items: pd.DataFrame, rows_per_part: int) -> list[str]:
    """The items cut into parts of ``rows_per_part`` in their order, each as JSON ``{"part": j, "items": [...]}``
    (what travels to a scorer)."""
    if rows_per_part < 1:
        raise ValueError(f"rows per part must be at least 1, got {rows_per_part}")
    records = items[ITEM_COLUMNS].astype(object).where(items[ITEM_COLUMNS].notna(), None).to_dict(orient="records")
    return [
        json.dumps({"part": j, "items": records[start : start + rows_per_part]})
        for j, start in enumerate(range(0, len(records), rows_per_part))
    ]
