"""The oracle generator (PadChest-Synth's renderer as the upper bound of tail synthesis) and per-finding visibility.

The oracle rows are the generation plan's rows rendered fresh: the donors' labels, localizations and projection, new
ids, prepared exactly like real rows and mixed into training like synthetic rows; any other data source is refused.
Visibility: a finding that changes an organ changes many more pixels at the working size than a thin or tiny one.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from trcgl import records
from trcgl.config import ConfigError, apply_overrides, load_config
from trcgl.data.dataset import load_dataset_info, read_dataset
from trcgl.data.images import decode_prepared
from trcgl.data.synth import oracle
from trcgl.data.synth.render import render_image
from trcgl.data.synth.visibility import VISIBLE_MIN_PIXELS, finding_visibility, visible_classes
from trcgl.diffusion.plan import make_plan, output_schema, read_train_rows
from trcgl.storage import Storage, run_dir
from trcgl.study import rows as ab
from trcgl.train.data import choose_generated, choose_synthetic

RUN = "oracle-test"


@pytest.fixture(scope="module")
def oracle_run(tiny_prepared: tuple[str, str]) -> dict[str, Any]:
    """The oracle stage of run ``oracle-test`` on the tiny dataset (real Ray Data job), its rows and plan."""
    from trcgl.data.ray_oracle import run_oracle

    root, dataset = tiny_prepared
    cfg = load_config("tiny", [f"storage.root={root}", f"train.run={RUN}", f"train.dataset={dataset}"])
    report = run_oracle(cfg)
    storage = Storage(root)
    out = run_dir(RUN, "oracle")
    parts = sorted(p for p in storage.list_files(out) if "/part-" in p)
    table = pd.concat([pq.read_table(str(Path(root) / p)).to_pandas() for p in parts], ignore_index=True)
    plan = pq.read_table(str(Path(root) / out / oracle.PLAN_FILE)).to_pandas()
    info = load_dataset_info(storage, dataset)
    return {
        "cfg": cfg,
        "report": report,
        "rows": table,
        "plan": plan,
        "info": info,
        "storage": storage,
        "parts": [str(Path(root) / p) for p in parts],
    }


def test_oracle_rows_are_the_sample_plans_rows_with_the_donors_labels(oracle_run: dict[str, Any]) -> None:
    cfg, info, storage = oracle_run["cfg"], oracle_run["info"], oracle_run["storage"]
    train_rows = read_train_rows(storage, info)
    plan = make_plan(info, train_rows, cfg.generate)  # what diffusion sampling makes, in the same order
    rows, oplan = oracle_run["rows"], oracle_run["plan"]
    assert len(rows) == len(plan) == oracle_run["report"]["images"] > 0
    assert rows["target_class"].tolist() == plan["target_class"].tolist()
    assert [list(v) for v in rows["labels"]] == [list(v) for v in plan["labels"]]
    assert rows["prompt"].tolist() == plan["prompt"].tolist()  # the prompt names the donor's localizations too
    assert rows["donor_id"].tolist() == plan["donor_id"].tolist() == oplan["donor_id"].tolist()
    assert set(rows["source"]) == {"oracle"} and set(rows["generator"]) == {"padchest-synth-renderer"}
    assert set(rows["mode"]) == {"sample"}
    donors = train_rows.set_index("image_id").loc[oplan["donor_id"]]
    assert oplan["projection"].tolist() == donors["projection"].tolist()
    assert [json.loads(v) for v in oplan["render_localizations"]] == [list(v) for v in donors["localizations"]]
    for labels, classes, target in zip(rows["labels"], oplan["render_classes"], rows["target_class"], strict=True):
        assert target in json.loads(classes)  # the donor was rendered with the finding (cxr-lt-30)
        assert labels[info.classes.index(target)] == 1


def test_oracle_ids_are_new_and_never_real_ids(oracle_run: dict[str, Any]) -> None:
    ids = oracle_run["rows"]["image_id"].tolist()
    real = read_dataset(oracle_run["storage"], oracle_run["info"].name, columns=["image_id"])["image_id"].to_pylist()
    real = set(real)
    assert len(set(ids)) == len(ids) and all(i.startswith("oracle-") for i in ids)
    assert not set(ids) & real
    assert not set(oracle_run["plan"]["donor_id"]) - real


def test_oracle_images_are_prepared_like_real_rows(oracle_run: dict[str, Any]) -> None:
    """Decoded at data.image_size; and the same render-and-prepare path reproduces a real row's bytes exactly."""
    cfg, rows, oplan = oracle_run["cfg"], oracle_run["rows"], oracle_run["plan"]
    assert pq.read_schema(oracle_run["parts"][0]) == output_schema(oracle_run["info"].num_classes)
    images = [decode_prepared(b) for b in rows["image"]]
    assert {im.shape for im in images} == {(cfg.data.image_size, cfg.data.image_size)}
    assert all(im.std() > 0.02 for im in images)
    donor = oplan.iloc[0]
    real = read_dataset(oracle_run["storage"], oracle_run["info"].name, columns=["image_id", "image"]).to_pandas()
    real_bytes = real.set_index("image_id").loc[donor["donor_id"], "image"]

    def prepared(image_id: str, classes: list[str]) -> bytes:
        pixels = render_image(
            image_id=image_id,
            classes=classes,
            localizations=json.loads(donor["render_localizations"]),
            projection=donor["projection"],
            bits_stored=int(donor["bits_stored"]),
            size=cfg.synth.size,
            dataset_seed=cfg.synth.seed,
        )
        return oracle.prepared_pixels(pixels, int(donor["bits_stored"]), cfg.data.image_size)

    classes = json.loads(donor["render_classes"])
    assert prepared(donor["donor_id"], classes) == real_bytes  # the donor's own id: the real row, byte for byte
    assert prepared(donor["image_id"], classes) == rows["image"].iat[0]  # the oracle id: a new anatomy
    assert rows["image"].iat[0] != real_bytes
    # the control: the same film without any finding (the renderer's empty prompt)
    assert cfg.generate.controls and prepared(donor["image_id"], []) == rows["control_image"].iat[0]
    assert rows["control_image"].iat[0] != rows["image"].iat[0]


def test_oracle_rerun_skips_resumes_and_refuses_other_values(oracle_run: dict[str, Any]) -> None:
    from trcgl.data.ray_oracle import run_oracle

    cfg, storage = oracle_run["cfg"], oracle_run["storage"]
    assert run_oracle(cfg)["skipped"] is True
    out = run_dir(RUN, "oracle")
    parts = sorted(p for p in storage.list_files(out) if "/part-" in p)
    before = storage.read_bytes(parts[-1])
    storage.delete(parts[-1])
    storage.delete(posixpath.join(out, "_manifest.json"))  # as if killed before publishing
    report = run_oracle(cfg)
    assert report["skipped"] is False and report["parts_skipped"] == len(parts) - 1
    assert storage.read_bytes(parts[-1]) == before  # rendering is deterministic
    other = apply_overrides(cfg, {"generate.seed": cfg.generate.seed + 1}, "test")
    with pytest.raises(records.StaleStageError, match="generate.seed"):
        run_oracle(other)


def test_oracle_rows_mix_into_training_like_synthetic_rows(oracle_run: dict[str, Any]) -> None:
    cfg, info, storage, rows = oracle_run["cfg"], oracle_run["info"], oracle_run["storage"], oracle_run["rows"]
    train_cfg = apply_overrides(cfg, {"train.extra_source": "oracle", "train.aug_ratio_tail": 1.0}, "test")
    folders = records.extra_folders(train_cfg)
    assert folders == [run_dir(RUN, "oracle")]  # default: the run's own oracle folder
    parts, keep, per_class = choose_generated(storage, folders, info, train_cfg.train)
    labels = np.asarray(rows["labels"].tolist(), dtype=np.uint8)  # (M, K), in part order
    chosen, expected = choose_synthetic(labels, info, train_cfg.train)
    assert keep == sorted(rows["image_id"].iloc[chosen]) and per_class == expected and len(keep) > 0
    assert len(parts) == oracle_run["report"]["parts"]
    record = records.classifier_record(train_cfg, storage, info.name)
    assert record["input.oracle"] == {run_dir(RUN, "oracle"): records.upstream_hash(storage, run_dir(RUN, "oracle"))}


def test_oracle_train_dataset_adds_the_chosen_rows(oracle_run: dict[str, Any]) -> None:
    """The classifier's training set with extra_source=oracle: real rows plus the chosen oracle rows (counted as the
    synthetic path counts them; executing the dataset is the synthetic path's, tested in test_train)."""
    from trcgl.train.ray_train import train_dataset

    cfg, info, storage = oracle_run["cfg"], oracle_run["info"], oracle_run["storage"]
    train_cfg = apply_overrides(cfg, {"train.extra_source": "oracle", "train.aug_ratio_tail": 1.0}, "test")
    _, n, mix = train_dataset(train_cfg, storage, info)
    _, keep, per_class = choose_generated(storage, records.extra_folders(train_cfg), info, train_cfg.train)
    assert mix == {"real": info.split_sizes["train"], "synthetic": 0, "oracle": len(keep), "per_class": per_class}
    assert n == info.split_sizes["train"] + len(keep)
    missing = apply_overrides(train_cfg, {"train.oracle": "runs/nowhere/oracle"}, "test")
    with pytest.raises(FileNotFoundError, match="jobs.oracle"):
        train_dataset(missing, storage, info)


def test_oracle_refused_for_another_data_source(tmp_path: Path) -> None:
    cfg = load_config("tiny", [f"storage.root={tmp_path}", "data.source=padchest", f"data.images={tmp_path}"])
    with pytest.raises(ConfigError, match="data.source"):
        oracle.check_source(cfg)
    with pytest.raises(ConfigError, match="data.source"):
        apply_overrides(cfg, {"train.extra_source": "oracle"}, "test")
    row = {"ablation.rows": {"backbone + BCE": {"extra": "none"}, "oracle": {"extra": "oracle"}}}
    with pytest.raises(ConfigError, match=r"ablation.rows.oracle.extra.*data.source"):
        apply_overrides(cfg, row, "test")
    with pytest.raises(ConfigError, match="train.extra_source"):
        apply_overrides(cfg, {"train.extra_source": "diffusion"}, "test")
    from jobs import oracle as job

    args = ["--config", "tiny", "--check", "--set", f"storage.root={tmp_path}", "data.source=padchest"]
    assert job.main([*args, f"data.images={tmp_path}"]) == 2


def test_ablation_oracle_row_draws_the_runs_oracle_folder(tmp_path: Path) -> None:
    rows = {"backbone + BCE": {"extra": "none"}, "oracle": {"model.gcn": False, "extra": "oracle"}}
    cfg = apply_overrides(load_config("tiny", [f"storage.root={tmp_path}"]), {"ablation.rows": rows}, "test")
    assert ab.needs_oracle(cfg) and not ab.needs_generation(cfg)
    row = ab.row_config(cfg, "oracle", 0, (1.0, 0.0))
    assert row.train.extra_source == "oracle" and row.train.synthetic == []
    assert records.extra_folders(row) == [run_dir(cfg.train.run, "oracle")]
    assert row.train.aug_ratio_tail == 1.0


# ---------------------------------------------------------------------------------------------------- visibility

LARGE = ("emphysema", "hyperinflated lung")
TINY = ("azygos lobe", "calcified densities")


def test_large_findings_change_many_more_pixels_than_tiny_ones_at_32px() -> None:
    v = finding_visibility([*LARGE, *TINY, "normal", "not a renderer class"], 32, render_size=64)
    assert min(v[c] for c in LARGE) >= 10 * max(1, max(v[c] for c in TINY))
    assert min(v[c] for c in LARGE) >= VISIBLE_MIN_PIXELS > max(v[c] for c in TINY)
    assert v["normal"] == 0 and v["not a renderer class"] == 0
    assert set(visible_classes(v)) == set(LARGE)


def test_visibility_grows_with_the_working_size_and_is_cached() -> None:
    small = finding_visibility(list(LARGE), 32, render_size=64)
    large = finding_visibility(list(LARGE), 64, render_size=64)
    assert all(large[c] > small[c] for c in LARGE)
    assert finding_visibility(list(LARGE), 32, render_size=64) == small
    with pytest.raises(ValueError, match="render_size"):
        finding_visibility(list(LARGE), 64, render_size=32)


def test_visibility_renders_the_same_anatomy_with_and_without_the_finding() -> None:
    """Only the finding's pixels differ: a finding drawn at one place leaves the rest of the film unchanged."""
    args = {"localizations": (), "projection": "PA", "bits_stored": 12, "size": 64, "dataset_seed": 0}
    without = render_image(image_id="visibility-0-000", classes=[], **args).astype(np.int32)
    with_finding = render_image(image_id="visibility-0-000", classes=["calcified densities"], **args).astype(np.int32)
    changed = np.abs(with_finding - without) > 0
    assert 0 < changed.mean() < 0.2
