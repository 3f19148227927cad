"""PadChest metadata: locate, read, parse and clean the CSV.

Dataset card
------------
**Source.** PadChest (Bustos et al., 2019): ~160k chest X-rays of ~67k patients from Hospital San Juan, Alicante,
labelled from Spanish radiology reports (about a quarter by physicians, the rest by an NLP model trained on them).
The metadata is one CSV, ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz]``; the full copy ships with the
``torchxrayvision`` package, so labels, the long tail and co-occurrence are real even without the images.

**What we read.** ImageID, ImageDir, PatientID, Projection, Labels (a Python-list string), Localizations, sex,
birth year, study date, BitsStored (12 or 10 bits; 16 when absent and unknown).

**What we keep and drop, and why** (each dropped row is counted by reason in ``_prepare_report.json``):

=========================  ============================================================================
reason                     rule
=========================  ============================================================================
``labels_missing``         Labels is NaN (103 rows in the real CSV): no report, no target.
``labels_unparseable``     Labels is not a Python list literal (read with ``ast.literal_eval``, never eval).
``labels_empty``           Labels is ``[]`` or ``['']`` (777 rows): an empty list is not "normal".
``exclude``                the report says ``exclude`` (1,312 rows).
``suboptimal_study``       the report says ``suboptimal study``: image quality too poor to label.
``projection_not_kept``    Projection not in ``data.projections`` (default PA, AP, AP_horizontal: frontal).
``missing_ids``            ImageID or PatientID empty.
``duplicate_image_id``     the same ImageID again (the first occurrence is kept).
``ragged_row``             a CSV line with more fields than the header (kept aside, never misaligned).
=========================  ============================================================================

Raw labels are normalised (lower case, stray and repeated spaces removed) and matched exactly by the label set
(see :mod:`trcgl.data.labelsets`); substring matching would make "pseudonodule" a nodule.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import io
import logging
import os
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from trcgl.config import StorageConfig
from trcgl.data.labelsets import normalise_label
from trcgl.storage import filesystem_for

log = logging.getLogger(__name__)

CSV_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
REQUIRED_COLUMNS = ("ImageID", "ImageDir", "PatientID", "Projection", "Labels")
OPTIONAL_COLUMNS = (
    "Localizations",
    "PatientSex_DICOM",
    "PatientBirth",
    "StudyDate_DICOM",
    "BitsStored_DICOM",
)
FRONTAL = ("PA", "AP", "AP_horizontal")
DROP_LABELS = {"exclude": "exclude", "suboptimal study": "suboptimal_study"}


def torchxrayvision_data_dir() -> str:
    """The ``data`` folder of the installed torchxrayvision package, found without importing it (a slow import).

    Raises:
        FileNotFoundError: when torchxrayvision is not installed.
    """
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "torchxrayvision is not installed: it carries the PadChest metadata and lung masks "
            "(pip install torchxrayvision), or set data.metadata to your PadChest CSV"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def default_metadata_path() -> str:
    """The real PadChest CSV shipped inside torchxrayvision."""
    path = os.path.join(torchxrayvision_data_dir(), CSV_NAME + ".gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"the PadChest CSV is missing from torchxrayvision's data folder: {path}")
    return path


def read_metadata(uri: str | None = None, storage: StorageConfig | None = None) -> pd.DataFrame:
    """Reads a PadChest-format CSV (``.csv`` or ``.csv.gz``, local or s3://) with string-typed ids.

    Args:
        uri: CSV location; None for the copy in torchxrayvision.
        storage: endpoint settings for s3:// URIs.

    Returns:
        The raw rows, plus ``csv_row`` (1-based line number in the file, header = line 1) for error reports.

    Raises:
        ValueError: when a required column is missing (names the file and the columns).
    """

    uri = uri or default_metadata_path()
    fs, path = filesystem_for(uri, storage or StorageConfig())
    with fs.open_input_stream(path, compression=None) as fh:
        raw = fh.read()
    compression = "gzip" if uri.endswith(".gz") else None
    wanted = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    kwargs = {
        "compression": compression,
        "dtype": {"ImageID": str, "ImageDir": str, "PatientID": str, "Projection": str, "Labels": str},
        "low_memory": False,
    }
    ragged: list[list[str]] = []
    # All columns are read (with usecols pandas would silently accept rows with extra fields).
    try:
        df = pd.read_csv(io.BytesIO(raw), on_bad_lines="error", **kwargs)
    except pd.errors.ParserError:
        # Rows with more fields than the header: re-read with the (slower) python engine, keeping them aside.
        kwargs.pop("low_memory")
        df = pd.read_csv(io.BytesIO(raw), engine="python", on_bad_lines=lambda fields: ragged.append(fields), **kwargs)
    df = df[[c for c in df.columns if c in wanted]].copy()
    df.attrs["ragged_rows"] = ragged
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"PadChest metadata {uri!r} lacks required columns {missing}; has {list(df.columns)}")
    for col in OPTIONAL_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan
    df["csv_row"] = np.arange(2, len(df) + 2)
    log.info("read %d metadata rows from %s", len(df), uri)
    return df


@dataclass(frozen=True)
class Parsed:
    """The outcome of parsing one Labels or Localizations cell."""

    items: tuple[str, ...]
    reason: str | None = None  # None when usable; else a drop reason


def parse_list_cell(cell: object) -> Parsed:
    """Parses a PadChest list cell (``"['a', ' B ']"``) safely into normalised, de-duplicated items.

    Returns a :class:`Parsed` with ``reason`` set to ``labels_missing``, ``labels_unparseable`` or ``labels_empty``
    when the cell cannot be used.
    """
    if cell is None or (not isinstance(cell, (str, list, tuple)) and pd.isna(cell)):
        return Parsed((), "labels_missing")
    return _parse_text(str(cell).strip())


# A Python list display of plain single-quoted strings: no backslash, quote, line break or NUL inside an item, items
# separated by commas (an optional trailing one), only the tokenizer's spaces around them. For such a text
# ast.literal_eval gives exactly the items between the quotes; anything else goes to ast.literal_eval.
_SPACE = r"[ \t\f\r\n]*"
_CHARS = r"[^'\\\r\n\x00]*"
_ITEM = rf"'{_CHARS}'"
_PLAIN_LIST = re.compile(rf"\[{_SPACE}(?:{_ITEM}(?:{_SPACE},{_SPACE}{_ITEM})*{_SPACE},?{_SPACE})?\]")
_PLAIN_ITEM = re.compile(rf"'({_CHARS})'")


def literal_list(text: str) -> object:
    """``ast.literal_eval(text)``, with a fast path for the list displays PadChest's cells almost all are.

    Raises:
        ValueError, SyntaxError, MemoryError, RecursionError: as ``ast.literal_eval`` for a text it cannot evaluate.
    """
    if _PLAIN_LIST.fullmatch(text):
        return _PLAIN_ITEM.findall(text)
    return ast.literal_eval(text)


@functools.lru_cache(maxsize=1 << 16)
def _parse_text(text: str) -> Parsed:
    """:func:`parse_list_cell` of one stripped text, cached: the full CSV's 160,861 rows hold about 29,000 distinct
    Labels and 20,000 distinct Localizations cells, so whole-CSV cleaning parses each text once (Parsed is frozen)."""
    try:
        value = literal_list(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return Parsed((), "labels_unparseable")
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        return Parsed((), "labels_unparseable")
    items = []
    for v in value:
        if not isinstance(v, str):
            return Parsed((), "labels_unparseable")
        norm = normalise_label(v)
        if norm and norm not in items:
            items.append(norm)
    if not items:
        return Parsed((), "labels_empty")
    return Parsed(tuple(items))


def parse_localizations(cell: object) -> tuple[str, ...]:
    """Localizations are informative only: an unusable cell gives ``()`` instead of dropping the row."""
    parsed = parse_list_cell(cell)
    return parsed.items if parsed.reason is None else ()


def clean_metadata(df: pd.DataFrame, projections: list[str] | tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parses and filters raw metadata rows.

    Args:
        df: rows from :func:`read_metadata`.
        projections: Projection values to keep.

    Returns:
        ``(kept, rejected)``. ``kept`` has columns image_id, image_dir, patient_id, projection, raw_labels (tuple),
        localizations (tuple), sex, birth_year, study_date, bits_stored, csv_row, sorted by image_id. ``rejected``
        has image_id, csv_row, reason, detail: one row per dropped metadata row.
    """
    rejects: list[dict[str, object]] = [
        {"image_id": "", "csv_row": -1, "reason": "ragged_row", "detail": ",".join(map(str, fields))[:120]}
        for fields in df.attrs.get("ragged_rows", [])
    ]
    keep_proj = set(projections)
    parsed = [parse_list_cell(c) for c in df["Labels"].tolist()]
    keep = np.ones(len(df), dtype=bool)
    image_ids = df["ImageID"].fillna("").astype(str).str.strip().to_numpy()
    patient_ids = df["PatientID"].fillna("").astype(str).str.strip().to_numpy()
    proj = df["Projection"].fillna("UNK").astype(str).str.strip().to_numpy()
    rows = df["csv_row"].to_numpy()
    seen: set[str] = set()
    for i, p in enumerate(parsed):
        reason, detail = None, ""
        if not image_ids[i] or not patient_ids[i] or image_ids[i] == "nan" or patient_ids[i] == "nan":
            reason, detail = "missing_ids", f"ImageID={image_ids[i]!r} PatientID={patient_ids[i]!r}"
        elif p.reason is not None:
            reason, detail = p.reason, str(df["Labels"].iat[i])[:80]
        elif drop := next((DROP_LABELS[x] for x in p.items if x in DROP_LABELS), None):
            reason = drop
        elif proj[i] not in keep_proj:
            reason, detail = "projection_not_kept", proj[i]
        elif image_ids[i] in seen:
            reason = "duplicate_image_id"
        if reason is not None:
            keep[i] = False
            rejects.append({"image_id": image_ids[i], "csv_row": int(rows[i]), "reason": reason, "detail": detail})
        else:
            seen.add(image_ids[i])
    sub = df[keep]
    bits = pd.to_numeric(sub["BitsStored_DICOM"], errors="coerce")
    kept = pd.DataFrame(
        {
            "image_id": image_ids[keep],
            "image_dir": sub["ImageDir"].fillna("").astype(str).str.strip().str.replace(r"\.0$", "", regex=True),
            "patient_id": patient_ids[keep],
            "projection": proj[keep],
            "raw_labels": [p.items for p, k in zip(parsed, keep, strict=True) if k],
            "localizations": [parse_localizations(c) for c in sub["Localizations"].tolist()],
            "sex": _text(sub["PatientSex_DICOM"]),
            "birth_year": pd.to_numeric(sub["PatientBirth"], errors="coerce").fillna(-1).astype(int),
            "study_date": _text(sub["StudyDate_DICOM"]).str.replace(r"\.0$", "", regex=True),
            "bits_stored": bits.fillna(0).astype(int),  # 0: unknown, inferred from pixels at decode
            "csv_row": rows[keep],
        }
    )
    kept = kept.sort_values("image_id", kind="stable").reset_index(drop=True)
    rejected = pd.DataFrame(rejects, columns=["image_id", "csv_row", "reason", "detail"])
    log.info("metadata: kept %d rows, dropped %d (%s)", len(kept), len(rejected), count_reasons(rejected))
    return kept, rejected


def _text(series: pd.Series) -> pd.Series:
    """A column as text, missing values as ""."""
    return series.map(lambda v: "" if pd.isna(v) else str(v)).astype(object)


def count_reasons(rejected: pd.DataFrame) -> dict[str, int]:
    """Drop counts by reason, largest first."""
    if rejected.empty:
        return {}
    return {str(k): int(v) for k, v in rejected["reason"].value_counts().items()}
