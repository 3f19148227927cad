"""``data.source=table``: any labelled table of chest X-ray paths (CSV or Parquet) as a prepare source.

Dataset card
------------
**Source.** A table at ``data.metadata`` (``.csv``, ``.csv.gz`` or ``.parquet``, local or s3://), one row per image,
its columns mapped by ``data.table`` (:class:`trcgl.config.TableConfig`). README "Your own data: a labelled table"
gives the mappings of NIH ChestX-ray14 and CheXpert / MIMIC-CXR.

**What we read.** The image path (relative to ``data.images``, else to the table's folder; or absolute, or s3://);
the patient (a column, or the first group of a regex on the path; with a given split column and neither, the image is
its own patient); an optional split column; optional view columns; the labels, either one delimited column (tokens
split on ``labels_separator``, ``none_labels`` tokens dropped) or one column per finding; optional localizations.
Every cell is read as text; blank means empty or missing.

**Labels.** A row's raw findings are its tokens, or the names of its label columns whose value is positive, both
normalised (lower case, single spaces) so that the label set (``data.label_set``: a YAML of rules, or ``top-N``
computed from the train split) matches them exactly. A per-finding value is ``1`` (positive), ``0`` (negative),
``-1`` (uncertain: ``data.table.uncertain`` ``zeros`` makes it negative, ``ones`` positive: U-Zeros and U-Ones of
Irvin et al. 2019, https://arxiv.org/abs/1901.07031) or blank (unmentioned: ``data.table.blank`` ``zeros``, negative).
Written as any float (``1.0``, ``-1.0``). ``ignore`` (for ``uncertain``, ``blank`` or both) is U-Ignore: the class is
not known for the row (:data:`trcgl.label_values.UNKNOWN` in the prepared labels) unless the row is positive for it
through another column mapped to the same class; the losses, metrics, thresholds and generation plan leave it out
and counts count positives only (:mod:`trcgl.label_values` says how each does). ``ignore`` applies to label
columns only: a delimited labels column has no uncertain or blank value per finding. ``label_columns: auto`` takes
every column that no other key maps and whose non-blank values are mostly (at least half) ``1``, ``0`` or ``-1``: the
finding columns of CheXpert, not its Age or Sex.

**Views.** The non-blank values of ``view_columns``, joined by a space (CheXpert: ``Frontal AP``, ``Lateral``), mapped
through ``view_values`` (else kept as they are) give the projection, which must be one of ``data.projections``.
Without view columns no row is dropped for its view and the projection is ``UNK``.

**What we drop, and why** (each dropped row is counted by reason in ``_prepare_report.json``, as PadChest's are):

=========================  ============================================================================
reason                     rule
=========================  ============================================================================
``missing_path``           the path cell is blank.
``missing_patient``        the patient cell is blank, or the path does not match ``patient_pattern``.
``split_unknown``          the split cell is not train, val (valid, validate, validation) or test.
``labels_missing``         the labels cell is blank, or every label column of the row is blank.
``labels_empty``           the labels cell holds only separators and spaces.
``labels_unparseable``     a label column holds anything but a number equal to 1, 0 or -1 (``2``, ``maybe``).
``projection_not_kept``    the projection is not in ``data.projections`` (a blank view is ``UNK``).
``duplicate_image_id``     the same path again (the first occurrence is kept).
``ragged_row``             a CSV line with more fields than the header (kept aside, never misaligned).
=========================  ============================================================================

An image that is missing or cannot be decoded is rejected by prepare with its reason, as for PadChest. The image id
(``image_id`` in the dataset) is the path cell as written.
"""

from __future__ import annotations

import io
import logging
import posixpath
import re
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trcgl.config import DataConfig, StorageConfig, TableConfig
from trcgl.data.labelsets import normalise_label
from trcgl.errors import ConfigError
from trcgl.storage import filesystem_for, parse_uri

log = logging.getLogger(__name__)

LAYOUT = "table"  # the prepare plan's layout for table rows: each row names its own file
PARQUET_SUFFIXES = (".parquet", ".pq")
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validate": "val", "validation": "val", "test": "test"}
LABEL_VALUES = {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}
NO_VIEW = "UNK"


def read_table(uri: str, storage: StorageConfig) -> pd.DataFrame:
    """Reads a CSV (``.csv``, ``.csv.gz``) or Parquet table with every cell as text, blank as ``""``.

    Returns:
        The rows, plus ``csv_row`` (1-based line of a CSV, header = line 1; for Parquet the row number + 2, so both
        count alike); ``attrs["ragged_rows"]`` holds CSV lines with more fields than the header.
    """
    fs, path = filesystem_for(uri, storage)
    with fs.open_input_stream(path, compression=None) as fh:
        raw = fh.read()
    ragged: list[list[str]] = []
    if path.lower().endswith(PARQUET_SUFFIXES):
        df = pq.read_table(io.BytesIO(raw)).to_pandas()
        df = pd.DataFrame({c: [_text(v) for v in df[c].tolist()] for c in df.columns}, columns=list(df.columns))
    else:
        kwargs: dict[str, Any] = {
            "compression": "gzip" if path.endswith(".gz") else None,
            "dtype": str,
            "keep_default_na": False,
            "na_filter": False,
        }
        try:
            df = pd.read_csv(io.BytesIO(raw), on_bad_lines="error", **kwargs)
        except pd.errors.ParserError:
            # as trcgl.data.padchest.read_metadata: lines with more fields than the header are kept aside
            df = pd.read_csv(io.BytesIO(raw), engine="python", on_bad_lines=lambda f: ragged.append(f), **kwargs)
        df = df.map(str.strip)
    df["csv_row"] = np.arange(2, len(df) + 2)
    df.attrs["ragged_rows"] = ragged
    log.info("read %d table rows from %s", len(df), uri)
    return df


def _text(value: object) -> str:
    """A Parquet cell as the text a CSV would hold: None and NaN blank, whole floats without ``.0``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _label_value(text: str) -> float | None:
    """1.0, 0.0 or -1.0 for a label cell; None when it is anything else (blank is handled before)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value in LABEL_VALUES else None


def label_columns(df: pd.DataFrame, t: TableConfig) -> list[str]:
    """``t.label_columns``, with ``auto`` resolved (module docstring); [] in delimited mode."""
    if t.labels_column:
        return []
    if t.label_columns != "auto":
        return list(t.label_columns)
    mapped = {t.path_column, t.patient_column, t.split_column, t.localization_column, "csv_row", *t.view_columns}
    chosen = []
    for col in df.columns:
        values = [v for v in df[col].tolist() if v != ""] if col not in mapped else []
        if values and sum(_label_value(v) is not None for v in values) * 2 >= len(values):
            chosen.append(col)
    return chosen


def check_columns(df: pd.DataFrame, t: TableConfig, uri: str) -> list[str]:
    """The label columns, after checking that every column the config names is in the table.

    Raises:
        ConfigError: names the key, the column, the table and its columns.
    """
    have = [c for c in df.columns if c != "csv_row"]
    named: list[tuple[str, str | None]] = [
        ("path_column", t.path_column),
        ("patient_column", t.patient_column),
        ("split_column", t.split_column),
        ("labels_column", t.labels_column),
        ("localization_column", t.localization_column),
        *(("view_columns", c) for c in t.view_columns),
    ]
    if t.label_columns != "auto":
        named += [("label_columns", c) for c in t.label_columns]
    for key, col in named:
        if col and col not in have:
            raise ConfigError(f"data.table.{key} {col!r} is not a column of {uri} (columns: {have})")
    cols = label_columns(df, t)
    if not t.labels_column and not cols:
        raise ConfigError(f"data.table.label_columns 'auto' found no label column in {uri} (columns: {have})")
    return cols


def _split_cell(cell: str, separator: str) -> list[str]:
    """Normalised, de-duplicated non-empty tokens of a delimited cell."""
    out: list[str] = []
    for token in cell.split(separator):
        norm = normalise_label(token)
        if norm and norm not in out:
            out.append(norm)
    return out


def parse_labels(
    row: dict[str, str], t: TableConfig, columns: list[str]
) -> tuple[tuple[str, ...], str | None, str, tuple[str, ...]]:
    """A row's raw findings (normalised), or the reason it has none usable.

    Returns:
        (findings, drop reason or None, detail of the reason, unknown findings: the columns whose value the
        ``ignore`` policies leave unknown, normalised).
    """
    if t.labels_column:
        cell = row[t.labels_column]
        if cell == "":
            return (), "labels_missing", "", ()
        tokens = _split_cell(cell, t.labels_separator)
        if not tokens:
            return (), "labels_empty", cell[:80], ()
        none = {normalise_label(v) for v in t.none_labels}
        return tuple(x for x in tokens if x not in none), None, "", ()
    found: list[str] = []
    unknown: list[str] = []
    blank = 0
    for col in columns:
        cell = row[col]
        if cell == "":
            blank += 1
            if t.blank == "ignore":
                unknown.append(normalise_label(col))
            continue  # else blank: zeros
        value = _label_value(cell)
        if value is None:
            return (), "labels_unparseable", f"{col}={cell[:40]!r}", ()
        if value == 1.0 or (value == -1.0 and t.uncertain == "ones"):
            found.append(normalise_label(col))
        elif value == -1.0 and t.uncertain == "ignore":
            unknown.append(normalise_label(col))
    if blank == len(columns):
        return (), "labels_missing", "every label column is blank", ()
    return tuple(dict.fromkeys(found)), None, "", tuple(dict.fromkeys(unknown))


def clean_table(
    df: pd.DataFrame, data: DataConfig, uri: str, *, labels: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Maps and filters table rows (module docstring: the rules), as :func:`trcgl.data.padchest.clean_metadata` does
    PadChest's.

    Args:
        df: rows from :func:`read_table`.
        data: the data section (``table``, ``projections``).
        uri: the table's location, for messages.
        labels: parse the labels (prepare); off, rows are kept whatever their labels (predict).

    Returns:
        ``(kept, rejected)``. ``kept`` has columns image_id, image_dir, patient_id, projection, raw_labels (tuple),
        raw_unknown (tuple: findings the ``ignore`` policies leave unknown), localizations (tuple), sex, birth_year,
        study_date, bits_stored, csv_row, and split when the table gives it, sorted by image_id; with ``labels``,
        ``kept.attrs["label_columns"]`` names the columns the labels came from (``auto`` resolved). ``rejected`` has
        image_id, csv_row, reason, detail: one row per dropped table row.

    Raises:
        ConfigError: a column the config names is not in the table.
    """
    t = data.table
    columns = check_columns(df, t, uri) if labels else []
    pattern = re.compile(t.patient_pattern) if t.patient_pattern else None
    keep_proj = set(data.projections)
    rejects: list[dict[str, object]] = [
        {"image_id": "", "csv_row": -1, "reason": "ragged_row", "detail": ",".join(map(str, fields))[:120]}
        for fields in df.attrs.get("ragged_rows", [])
    ]
    kept: list[dict[str, object]] = []
    seen: set[str] = set()
    for row in df.to_dict(orient="records"):
        path = row[t.path_column]
        reason, detail, split = None, "", None
        patient = row[t.patient_column] if t.patient_column else ""
        if pattern is not None and (m := pattern.search(path)):
            patient = m.group(1) or ""
        if not (t.patient_column or pattern):
            patient = path  # a given split and no patient: each image is its own patient
        view = " ".join(row[c] for c in t.view_columns if row[c] != "")
        projection = t.view_values.get(view, view) if t.view_columns else NO_VIEW
        raw: tuple[str, ...] = ()
        if path == "":
            reason = "missing_path"
        elif patient == "":
            reason, detail = "missing_patient", (t.patient_pattern or t.patient_column or "")[:80]
        elif t.split_column and (split := SPLIT_VALUES.get(row[t.split_column].lower())) is None:
            reason, detail = "split_unknown", row[t.split_column][:40]
        elif labels and (parsed := parse_labels(row, t, columns))[1] is not None:
            reason, detail = parsed[1], parsed[2]
        elif t.view_columns and (projection or NO_VIEW) not in keep_proj:
            reason, detail = "projection_not_kept", projection or NO_VIEW
        elif path in seen:
            reason = "duplicate_image_id"
        if reason is not None:
            rejects.append({"image_id": path, "csv_row": int(row["csv_row"]), "reason": reason, "detail": detail})
            continue
        unknown: tuple[str, ...] = ()
        if labels:
            raw, unknown = parsed[0], parsed[3]
        seen.add(path)
        locs = _split_cell(row[t.localization_column], t.localization_separator) if t.localization_column else []
        kept.append(
            {
                "image_id": path,
                "image_dir": "",
                "patient_id": patient,
                "projection": projection or NO_VIEW,
                "raw_labels": raw,
                "raw_unknown": unknown,
                "localizations": tuple(locs),
                "sex": "",
                "birth_year": -1,
                "study_date": "",
                "bits_stored": 0,  # unknown: inferred from the pixels at decode
                "csv_row": int(row["csv_row"]),
                **({"split": split} if t.split_column else {}),
            }
        )
    cols = ["image_id", "image_dir", "patient_id", "projection", "raw_labels", "raw_unknown", "localizations", "sex",
            "birth_year", "study_date", "bits_stored", "csv_row", *(["split"] if t.split_column else [])]  # fmt: skip
    out = pd.DataFrame(kept, columns=cols).sort_values("image_id", kind="stable").reset_index(drop=True)
    rejected = pd.DataFrame(rejects, columns=["image_id", "csv_row", "reason", "detail"])
    if labels:
        out.attrs["label_columns"] = [t.labels_column] if t.labels_column else columns  # auto resolved, for the report
        log.info("table label columns: %s", out.attrs["label_columns"])
    log.info("table %s: kept %d rows, dropped %d", uri, len(out), len(rejected))
    return out, rejected


def images_root(data: DataConfig, table_uri: str) -> str:
    """Where relative paths of the table point: ``data.images``, else the table's folder."""
    return data.images or posixpath.dirname(parse_uri(table_uri).uri)


def image_uri(path: str, root: str) -> str:
    """The location of a path cell: as written when absolute or a URI, else below ``root``."""
    if "://" in path or path.startswith("/"):
        return path
    return posixpath.join(root, path)


def locate(uri: str, storage: StorageConfig, cache: dict[str, pafs.FileSystem]) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of an image location, one filesystem per scheme in ``cache`` (rows of a shard share it)."""
    scheme = parse_uri(uri).scheme
    if scheme not in cache:
        cache[scheme] = filesystem_for(uri, storage)[0]
    return cache[scheme], parse_uri(uri).path


def probe_images(rows: pd.DataFrame, root: str, storage: StorageConfig, probe: int) -> None:
    """Checks that at least one of the first ``probe`` rows' images exists, so a wrong ``data.images`` fails at once.

    Raises:
        FileNotFoundError: none exists (names the tried paths).
    """
    cache: dict[str, pafs.FileSystem] = {}
    tried = []
    for image_id in rows["image_id"].head(probe):
        fs, path = locate(image_uri(image_id, root), storage, cache)
        if fs.get_file_info(path).type == pafs.FileType.File:
            return
        tried.append(image_uri(image_id, root))
    raise FileNotFoundError(
        f"no image of the first {len(tried)} table rows exists (tried e.g. {tried[:2]}); relative paths are below "
        f"data.images, else the table's folder ({root!r})"
    )
