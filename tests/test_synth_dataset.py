"""PadChest-Synth as a dataset: rendered by a real Ray Data job, read by torchxrayvision and by our prepare."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trcgl.config import load_config
from trcgl.data import labelsets
from trcgl.data.padchest import FRONTAL, clean_metadata, read_metadata
from trcgl.data.ray_prepare import run_prepare
from trcgl.data.ray_synth import run_synthesize
from trcgl.data.synth.source import CSV_FILE, select_subset, source_name
from trcgl.storage import Storage, source_dir

pytestmark = pytest.mark.slow


def test_subset_keeps_every_class_with_a_floor(tmp_path):
    cfg = load_config("demo", ["synth.rows=300", "synth.tail_floor=3", "synth.lateral_fraction=0.1"])
    from trcgl.data.synth.source import read_full_csv

    subset = select_subset(cfg, read_full_csv())
    assert len(subset) >= 300 and subset["ImageID"].is_unique
    typed = subset.replace("", np.nan)
    typed["csv_row"] = range(len(subset))
    kept, _ = clean_metadata(typed, FRONTAL)
    y = labelsets.load_file("cxr-lt-30").encode(kept["raw_labels"].tolist())
    assert (y.sum(axis=0) >= 3).all(), "every class reaches the floor (each has >= 3 real frontal positives)"
    assert (subset["Projection"] == "L").sum() == 30
    again = select_subset(cfg, read_full_csv())
    assert again["ImageID"].tolist() == subset["ImageID"].tolist()  # deterministic


def test_full_csv_read_is_pandas_text_read():
    # pyarrow's reader stands in for pandas' only if every column, name, value and type comes out the same: the
    # subset CSV is written from these cells, and the cells with quoted line breaks are where the readers could part
    from trcgl.data.padchest import default_metadata_path
    from trcgl.data.synth.source import read_full_csv

    ours = read_full_csv()
    reference = pd.read_csv(default_metadata_path(), dtype=str, keep_default_na=False)
    assert list(ours.columns) == list(reference.columns) and reference.columns[0] == "Unnamed: 0"
    assert reference["LocalizationsCUIS"].str.contains("\n").any()  # quoted line breaks are in the file
    pd.testing.assert_frame_equal(ours, reference)


def test_rendered_source_is_padchest_format(tiny_synth):
    cfg, report = tiny_synth["cfg"], tiny_synth["report"]
    storage = Storage(cfg.storage.root)
    base = source_dir(source_name(cfg))
    meta = read_metadata(storage.uri(base, CSV_FILE))
    assert len(meta) == report["rows"] == report["rendered"]
    for r in meta.head(10).itertuples():
        data = storage.read_bytes(f"{base}/images/{r.ImageDir}/{r.ImageID}")  # PadChest's own layout
        img = Image.open(io.BytesIO(data))
        assert img.mode.startswith("I;16") and img.size == (cfg.synth.size, cfg.synth.size)
        assert np.asarray(img).max() < 2 ** int(r.BitsStored_DICOM)
    sheets = [f for f in storage.list_files(f"{base}/sheets") if f.endswith(".png")]
    assert len(sheets) == 29  # one per finding class
    assert set(json.loads(json.dumps(report["projections"]))) >= {"L"}


def test_rerun_renders_nothing_and_resumes_missing(tiny_synth):
    cfg = tiny_synth["cfg"]
    storage = Storage(cfg.storage.root)
    base = source_dir(source_name(cfg))
    assert run_synthesize(cfg)["rendered"] == tiny_synth["report"]["rendered"]  # published: skipped, same report
    images = [f for f in storage.list_files(f"{base}/images")]
    before = storage.read_bytes(images[0])
    storage.delete(f"{base}/_manifest.json")
    storage.delete(images[0])
    resumed = run_synthesize(cfg)
    assert resumed["rendered"] == 1 and resumed["already_present"] == len(images) - 1
    assert storage.read_bytes(images[0]) == before  # deterministic per ImageID and seed


def test_torchxrayvision_pc_dataset_loads_padchest_synth(ray_local, tmp_path):
    import torchxrayvision as xrv

    cfg = load_config("tiny", [f"storage.root={tmp_path}", "synth.layout=flat"])
    run_synthesize(cfg)
    base = tmp_path / source_dir(source_name(cfg))
    ds = xrv.datasets.PC_Dataset(
        imgpath=str(base / "images"),
        csvpath=str(base / CSV_FILE),
        views=["PA", "AP", "AP Supine"],
        unique_patients=False,
    )
    assert len(ds) > 0
    sample = ds[0]
    assert sample["img"].shape == (1, cfg.synth.size, cfg.synth.size)
    assert -1024 <= sample["img"].min() and sample["img"].max() <= 1024
    card = ds.pathologies.index("Cardiomegaly")
    csv = pd.read_csv(base / CSV_FILE)
    assert ds.labels[:, card].sum() == sum("cardiomegaly" in str(x) for x in ds.csv["Labels"]) and len(csv) >= len(ds)


def test_prepare_on_padchest_synth(tiny_synth):
    cfg = tiny_synth["cfg"]
    report = run_prepare(cfg)
    assert report["rejected_images"] == 0
    frontal = (pd.Series(tiny_synth["report"]["projections"]).reindex(FRONTAL).fillna(0)).sum()
    assert report["rows_written"] == frontal
    assert report["dropped_projections"] == {"L": tiny_synth["report"]["projections"]["L"]}
