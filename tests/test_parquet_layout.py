"""Every folder of Parquet parts the project writes opens as it stands with tools that know nothing of the project
(issue 20 item 4), and folders in the layout before that still load.

``pd.read_parquet(folder)`` (pyarrow's dataset discovery, which skips names starting with ``_`` or ``.``) and DuckDB
over ``folder/part-*.parquet`` must find exactly the rows the project's own readers find, in a prepared dataset, a
generate output (``synthetic/``), an oracle output and a predict output, on a local root and on the loopback S3
server. DuckDB's glob does not skip ``_`` names (``folder/*.parquet`` would read ``_plan.parquet`` too), hence
``part-*.parquet``; on S3 it reads through s3fs registered as an fsspec filesystem, since its own S3 client (the
httpfs extension) would be a download.

The folders come from the real jobs on the session's tiny dataset, with untrained models: what is checked is where
the rows are, not what they hold.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from trcgl.config import StorageConfig, load_config
from trcgl.storage import (
    COOCCURRENCE,
    DATASET_CONFIG,
    GENERATE_PLAN,
    GENERATE_REPORT,
    GRIDS,
    LABELS,
    MANIFEST,
    PREPARE_REPORT,
    REALISM,
    Storage,
    dataset_dir,
    run_dir,
    s3fs_filesystem,
)

pytestmark = pytest.mark.slow

RUN = "parquet-layout"
KINDS = ("dataset", "synthetic", "oracle", "predict")


def _ids(storage: Storage, parts: list[str]) -> list[str]:
    """Sorted image ids of Parquet files (paths relative to the root)."""
    fs = storage.pyarrow_fs
    return sorted(
        i
        for p in parts
        for i in pq.read_table(fs.open_input_file(storage.path(p)), columns=["image_id"])[0].to_pylist()
    )


def own_reader(kind: str, dataset: str) -> tuple[str, Callable[[Storage], list[str]]]:
    """(folder, the project's own reader of its image ids) for one kind of Parquet folder."""
    from trcgl.data.dataset import read_dataset
    from trcgl.train.data import synthetic_parts

    if kind == "dataset":
        return dataset_dir(dataset), lambda s: sorted(
            read_dataset(s, dataset, columns=["image_id"])["image_id"].to_pylist()
        )
    if kind in ("synthetic", "oracle"):  # what the classifier's mixing reads: the manifest's parts
        folder = run_dir(RUN, kind)

        def generated(s: Storage) -> list[str]:
            return _ids(s, [p[len(s.path()) + 1 :] for p in synthetic_parts(s, [folder])])

        return folder, generated
    folder = run_dir(RUN, "predict")  # predict has no reader of its own: the manifest's parts
    return folder, lambda s: _ids(s, [p for p in s.iter_manifest_files(folder, ".parquet") if "/part-" in p])


@pytest.fixture(scope="module")
def written(tiny_prepared: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A generate, an oracle and a predict output of run ``parquet-layout`` beside the session's tiny dataset."""
    import torch

    from trcgl.data.dataset import load_dataset_info, read_dataset
    from trcgl.data.ray_oracle import run_oracle
    from trcgl.diffusion.model import TextToXray
    from trcgl.diffusion.plan import read_train_rows
    from trcgl.diffusion.prompts import prompt_vocabulary
    from trcgl.diffusion.ray_generate import run_generate
    from trcgl.models import build_model
    from trcgl.predict.ray_predict import PredictOptions, run_predict
    from trcgl.train import checkpoint as ckpt

    root, dataset = tiny_prepared
    storage = Storage(root)
    models = tmp_path_factory.mktemp("layout-models")
    overrides = [f"storage.root={root}", f"train.run={RUN}", f"train.dataset={dataset}", "generate.actors_max=1"]
    cfg = load_config("tiny", [*overrides, f"generate.model={models / 'diffusion'}"])
    info = load_dataset_info(storage, dataset)
    torch.manual_seed(0)
    locs = sorted({loc for locs in read_train_rows(storage, info)["localizations"] for loc in locs})
    TextToXray.build(cfg.diffusion, prompt_vocabulary(info.classes, locs)).save_pretrained(str(models / "diffusion"))
    generated = run_generate(cfg)
    oracle = run_oracle(cfg)
    model = build_model(cfg.model, info.num_classes, info.cooccurrence)
    ckpt.write_local(models / "classifier", ckpt.checkpoint_files(model, cfg, info, 0, {}))
    opts = PredictOptions(str(models / "classifier"), "dataset:test", out=run_dir(RUN, "predict"), actors=1)
    predicted = run_predict(cfg, PredictOptions(**{**opts.__dict__, "fixed_threshold": 0.5}))
    test_ids = sorted(read_dataset(storage, dataset, split="test", columns=["image_id"])["image_id"].to_pylist())
    return {
        "root": root,
        "dataset": dataset,
        "cfg": cfg,
        "rows": {"synthetic": generated["images"], "oracle": oracle["images"], "predict": len(test_ids)},
        "predicted": predicted,
        "test_ids": test_ids,
        "generate_report": generated,
    }


@pytest.fixture(scope="module")
def on_s3(written: dict[str, Any], s3_endpoint: str) -> Storage:
    """The four folders copied file by file to a bucket of the loopback S3 server, under the same paths."""
    import boto3

    from trcgl.ray_runtime import free_port

    bucket = f"trcgl-layout-{free_port()}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    local, remote = Storage(written["root"]), Storage(f"s3://{bucket}/trcgl", StorageConfig(endpoint_url=s3_endpoint))
    for kind in KINDS:
        folder, _ = own_reader(kind, written["dataset"])
        for rel in local.list_files(folder):
            remote.write_bytes(rel, local.read_bytes(rel))
    return remote


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, written: dict[str, Any]) -> Storage:
    """The storage root the folders are read from."""
    return Storage(written["root"]) if request.param == "local" else request.getfixturevalue("on_s3")


def _sidecars(storage: Storage, folder: str) -> set[str]:
    """The top-level names (files or folders) in a folder that are not Parquet parts."""
    names = {f[len(folder) + 1 :].split("/")[0] for f in storage.list_files(folder)}
    return {n for n in names if not (n.startswith("part-") and n.endswith(".parquet"))}


@pytest.mark.parametrize("kind", KINDS)
def test_pandas_reads_the_rows_the_project_reads(written: dict[str, Any], place: Storage, kind: str) -> None:
    folder, read_own = own_reader(kind, written["dataset"])
    expected = read_own(place)
    assert len(expected) == written["rows"].get(kind, len(expected)) > 0
    # the folder holds sidecars (a report and the manifest at least), each named out of the Parquet namespace
    sidecars = _sidecars(place, folder)
    assert len(sidecars) >= 2 and all(n.startswith("_") for n in sidecars), sidecars
    options = {"client_kwargs": {"endpoint_url": place.cfg.endpoint_url}} if place.is_s3 else None
    frame = pd.read_parquet(place.uri(folder), columns=["image_id"], storage_options=options)
    assert sorted(frame["image_id"]) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_duckdb_reads_the_rows_the_project_reads(written: dict[str, Any], place: Storage, kind: str) -> None:
    folder, read_own = own_reader(kind, written["dataset"])
    con = duckdb.connect()
    if place.is_s3:
        con.register_filesystem(s3fs_filesystem(place.cfg))  # s3:// through s3fs: no httpfs download
    got = con.sql(f"select image_id from read_parquet('{place.uri(folder)}/part-*.parquet')").fetchall()
    assert sorted(r[0] for r in got) == read_own(place)


def test_predict_folder_is_the_test_split(written: dict[str, Any]) -> None:
    """The predict output's rows are the images asked for (so the row counts above are counts of the right rows)."""
    frame = pd.read_parquet(Path(written["root"]) / run_dir(RUN, "predict"))
    assert sorted(frame["image_id"]) == written["test_ids"] and written["predicted"]["images_scored"] == len(frame)


# ---------------------------------------------------------------------------------------------------- old layouts

LEGACY = (LABELS, COOCCURRENCE, PREPARE_REPORT, DATASET_CONFIG)


def to_old_layout(storage: Storage, folder: str, names: tuple[str, ...]) -> None:
    """Rewrites a published folder as the code before the underscore wrote it: each sidecar of ``names`` (a file or
    a folder) under its name without the leading ``_``, and the manifest listing those names."""
    manifest = storage.manifest(folder)
    assert manifest is not None
    renamed = {}
    for rel, size in manifest["files"].items():
        old = rel[1:] if rel.split("/")[0] in names else rel
        if old != rel:
            storage.write_bytes(posixpath.join(folder, old), storage.read_bytes(posixpath.join(folder, rel)))
        renamed[old] = size
    for name in names:
        storage.delete(posixpath.join(folder, name))
    storage.write_json(posixpath.join(folder, MANIFEST), {**manifest, "files": renamed})


def test_a_dataset_in_the_old_layout_loads_is_reused_and_resumes_into_the_new_one(ray_local, tmp_path, caplog):
    from trcgl.data.dataset import load_dataset_info, read_dataset
    from trcgl.data.label_graph import read_graph
    from trcgl.data.ray_prepare import run_prepare
    from trcgl_dev.faults.inputs import make_padchest_like

    make_padchest_like(tmp_path / "src")
    cfg = load_config(
        "tiny",
        [
            f"storage.root={tmp_path / 'root'}",
            "data.source=padchest",
            f"data.metadata={tmp_path / 'src'}/meta.csv",
            f"data.images={tmp_path / 'src'}/images",
            "data.shard_rows=6",
            "data.image_size=24",
            "data.split.val_fraction=0.2",
            "data.split.test_fraction=0.2",
        ],
    )
    report = run_prepare(cfg)
    storage, name = Storage(cfg.storage.root), report["dataset"]
    folder = dataset_dir(name)
    info, graph, ids = load_dataset_info(storage, name), read_graph(storage, name), read_dataset(storage, name)
    to_old_layout(storage, folder, LEGACY)
    assert storage.exists(f"{folder}/labels.json") and not storage.exists(f"{folder}/{LABELS}")
    with pytest.raises(Exception, match="(?i)parquet"):  # what the old layout did to other tools
        pd.read_parquet(storage.uri(folder))

    # loads: the same dataset info, label graph and rows as in the new layout
    old = load_dataset_info(storage, name)
    assert old.classes == info.classes and old.parts == info.parts and old.split_sizes == info.split_sizes
    np.testing.assert_array_equal(old.cooccurrence, info.cooccurrence)
    np.testing.assert_array_equal(old.train_counts, info.train_counts)
    assert read_graph(storage, name) == graph
    assert read_dataset(storage, name).equals(ids)

    # a rerun finds it prepared (same config hash in its manifest) and says it is in the old layout
    with caplog.at_level(logging.INFO, logger="trcgl.data.prepare"):
        again = run_prepare(cfg)
    assert again["skipped"] is True and again["rows_written"] == report["rows_written"]
    assert "layout before sidecars took the underscore" in caplog.text

    # a prepare of the old code killed before its manifest, resumed by this code: the shards are kept, the sidecars
    # are written under the new names and the old ones removed, so the folder reads as a Parquet dataset
    storage.delete(f"{folder}/{MANIFEST}")
    resumed = run_prepare(cfg)
    assert resumed["skipped_shards"] == report["shards"]
    listed = set(storage.manifest(folder)["files"])
    assert set(LEGACY) <= listed and not {n[1:] for n in LEGACY} & listed
    assert not any(storage.exists(f"{folder}/{n[1:]}") for n in LEGACY)
    frame = pd.read_parquet(storage.uri(folder), columns=["image_id"])
    assert sorted(frame["image_id"]) == sorted(ids["image_id"].to_pylist())


def test_generated_folders_in_the_old_layout_are_read_by_their_consumers(written: dict[str, Any]) -> None:
    """A synthetic/ and an oracle/ folder as the old code published them: the classifier's mixing lists the same
    parts, the pipeline report finds the grids, and the oracle stage finds its folder published and reads back the
    report under its old name."""
    from trcgl.data.ray_oracle import run_oracle
    from trcgl.data.synth import oracle
    from trcgl.pipeline.html import Images
    from trcgl.pipeline.report import synthetic_section
    from trcgl.train.data import synthetic_parts

    storage, old_run = Storage(written["root"]), f"{RUN}-old"
    for kind in ("synthetic", "oracle"):
        for rel in storage.list_files(run_dir(RUN, kind)):
            storage.write_bytes(rel.replace(f"runs/{RUN}/", f"runs/{old_run}/", 1), storage.read_bytes(rel))
    synthetic, old_oracle = run_dir(old_run, "synthetic"), run_dir(old_run, "oracle")
    to_old_layout(storage, synthetic, (GENERATE_PLAN, GENERATE_REPORT, REALISM, GRIDS))
    to_old_layout(storage, old_oracle, (oracle.REPORT_FILE,))
    assert storage.exists(f"{synthetic}/generate_report.json") and not storage.exists(f"{synthetic}/{GRIDS}")

    parts = synthetic_parts(storage, [synthetic])
    assert [p.rsplit("/", 1)[1] for p in parts] == [
        p.rsplit("/", 1)[1] for p in synthetic_parts(storage, [run_dir(RUN, "synthetic")])
    ]
    syn = storage.read_json(storage.sidecar_rel(synthetic, GENERATE_REPORT))
    assert syn["images"] == written["generate_report"]["images"]
    grids = [b for b in synthetic_section(storage, old_run, syn).blocks if isinstance(b, Images)]
    assert len(grids) == 1 and len(grids[0].items) == len(syn["per_class"])

    reread = run_oracle(load_config("tiny", [f"storage.root={written['root']}", f"train.run={old_run}",
                                             f"train.dataset={written['dataset']}"]))  # fmt: skip
    assert reread["skipped"] is True and reread["images"] == written["rows"]["oracle"]
