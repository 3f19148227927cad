"""The prepare job end to end on a real local Ray: real PNG files, bad inputs, reruns, local folder and S3."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from trcgl.config import StorageConfig, load_config
from trcgl.data.dataset import load_dataset_info, read_dataset
from trcgl.data.images import decode_prepared
from trcgl.data.label_graph import TAUS, graph_summary, read_graph
from trcgl.data.ray_prepare import run_prepare
from trcgl.storage import COOCCURRENCE, LABELS, PREPARE_REPORT, Storage, dataset_dir
from trcgl_dev.faults.inputs import BAD_IMAGE_REASONS, BAD_ROW_REASONS, make_padchest_like

pytestmark = pytest.mark.slow


def _cfg(root: str, folder: str, *extra: str):
    return load_config(
        "tiny",
        [
            f"storage.root={root}",
            "data.source=padchest",
            f"data.metadata={folder}/meta.csv",
            f"data.images={folder}/images",
            "data.shard_rows=6",
            "data.image_size=24",
            "data.split.val_fraction=0.2",
            "data.split.test_fraction=0.2",
            *extra,
        ],
    )


def _check_dataset(storage: Storage, report: dict, ids: dict[str, list[str]]) -> None:
    name = report["dataset"]
    table = read_dataset(storage, name)
    assert sorted(table["image_id"].to_pylist()) == sorted(ids["good"])  # every good row kept, none lost
    assert report["rows_written"] == len(ids["good"])
    by_image = {r["image_id"]: r["reason"] for r in report["rejected_image_list"]}
    assert by_image == BAD_IMAGE_REASONS
    assert report["dropped_metadata_by_reason"] == BAD_ROW_REASONS
    labels = storage.read_json(f"{dataset_dir(name)}/{LABELS}")
    k = labels["classes"].index("cardiomegaly")
    rows = table.to_pylist()
    cardio = [r["image_id"] for r in rows if r["labels"][k] == 1]
    assert len(cardio) == sum(labels["counts"][s]["cardiomegaly"] for s in ("train", "val", "test")) > 0
    img = decode_prepared(rows[0]["image"])
    assert img.shape == (24, 24) and 0.0 <= img.min() and img.max() <= 1.0
    # 10-bit and 12-bit noise images both fill the range after normalisation by BitsStored
    for r in rows:
        assert decode_prepared(r["image"]).max() > 0.5, r["image_id"]
    patients = {}
    for r in rows:
        patients.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in patients.values())
    co = pq.read_table(storage.pyarrow_fs.open_input_file(storage.path(f"{dataset_dir(name)}/{COOCCURRENCE}")))
    assert co.num_rows > 0
    files = storage.manifest(dataset_dir(name))["files"]
    assert {"_labels.json", "_cooccurrence.parquet", "_prepare_report.json", "_config.yaml"} <= set(files)
    assert sum(f.startswith("part-") for f in files) == 4  # 20 planned rows / 6 per shard


def test_prepare_local_keeps_good_rows_reports_bad_and_resumes(ray_local, tmp_path):
    ids = make_padchest_like(tmp_path / "src")
    cfg = _cfg(str(tmp_path / "root"), str(tmp_path / "src"))
    report = run_prepare(cfg)
    storage = Storage(cfg.storage.root)
    _check_dataset(storage, report, ids)
    # rerun with the same config: skipped, no duplicates
    again = run_prepare(cfg)
    assert again["skipped"] is True and again["dataset"] == report["dataset"]
    assert read_dataset(storage, report["dataset"]).num_rows == len(ids["good"])
    # a killed run (manifest and one shard gone) resumes: only the missing shard is redone
    d = dataset_dir(report["dataset"])
    storage.delete(f"{d}/_manifest.json")
    storage.delete(f"{d}/part-00001.parquet")
    resumed = run_prepare(cfg)
    assert resumed["skipped_shards"] == 3 and resumed["rows_written"] == len(ids["good"])
    assert read_dataset(storage, report["dataset"]).num_rows == len(ids["good"])
    # a different config is a different dataset
    other = run_prepare(_cfg(str(tmp_path / "root"), str(tmp_path / "src"), "data.image_size=16"))
    assert other["dataset"] != report["dataset"]


def test_prepare_reads_flat_layout(ray_local, tmp_path):
    ids = make_padchest_like(tmp_path / "src", layout="flat")
    report = run_prepare(_cfg(str(tmp_path / "root"), str(tmp_path / "src")))
    assert report["layout"] == "flat" and report["rows_written"] == len(ids["good"])
    # _labels.json carries the label graph's summary of the train co-occurrence; a dataset without it (prepared
    # before) gets the same summary computed from _cooccurrence.parquet
    storage = Storage(str(tmp_path / "root"))
    labels_rel = f"{dataset_dir(report['dataset'])}/{LABELS}"
    labels = storage.read_json(labels_rel)
    info = load_dataset_info(storage, report["dataset"])
    assert labels["graph"] == graph_summary(info.cooccurrence, info.classes, info.groups)
    assert [t["tau"] for t in labels["graph"]["by_tau"]] == list(TAUS)
    storage.write_json(labels_rel, {k: v for k, v in labels.items() if k != "graph"})
    assert read_graph(storage, report["dataset"]) == labels["graph"]


def test_prepare_on_s3(ray_local, tmp_path, s3_endpoint, s3_bucket):
    ids = make_padchest_like(tmp_path / "src")
    # upload the source dataset to S3 too: metadata, images and outputs all on the S3-compatible server
    src = Storage(f"s3://{s3_bucket}/padchest", StorageConfig(endpoint_url=s3_endpoint))
    for path in (tmp_path / "src").rglob("*"):
        if path.is_file():
            src.write_bytes(str(path.relative_to(tmp_path / "src")), path.read_bytes())
    cfg = _cfg(f"s3://{s3_bucket}/trcgl", f"s3://{s3_bucket}/padchest", f"storage.endpoint_url={s3_endpoint}")
    report = run_prepare(cfg)
    storage = Storage(cfg.storage.root, cfg.storage)
    _check_dataset(storage, report, ids)
    saved = storage.read_json(f"{dataset_dir(report['dataset'])}/{PREPARE_REPORT}")
    assert saved["rows_written"] == len(ids["good"]) and saved["images"].startswith("s3://")
    assert json.dumps(saved).find("testing") == -1  # no credential leaks into the report


def test_a_key_added_at_its_neutral_value_keeps_the_dataset_name():
    """Datasets prepared before data.dicom_window (or data.accept_8bit) existed keep their names (and their stages'
    records stay valid) while it is off; turning it on prepares another dataset."""
    from trcgl.config import config_hash, to_dict
    from trcgl.data.prepare import dataset_name

    cfg = load_config("tiny", [])
    before_the_key = to_dict(cfg.data)
    before_the_key.pop("name")
    before_the_key.pop("dicom_window")
    before_the_key.pop("table")  # data.table (data.source=table only) at its default is neutral too
    before_the_key.pop("accept_8bit")  # and data.accept_8bit off
    before_the_key["metadata"], before_the_key["images"] = "m.csv", "imgs"
    prefix = f"{cfg.data.source}-{cfg.data.label_set}-{cfg.data.image_size}px-"
    assert dataset_name(cfg, "m.csv", "imgs") == prefix + config_hash(before_the_key)
    windowed = load_config("tiny", ["data.dicom_window=true"])
    assert dataset_name(windowed, "m.csv", "imgs") != dataset_name(cfg, "m.csv", "imgs")
    eight_bit = load_config("tiny", ["data.accept_8bit=true"])
    assert dataset_name(eight_bit, "m.csv", "imgs") != dataset_name(cfg, "m.csv", "imgs")
