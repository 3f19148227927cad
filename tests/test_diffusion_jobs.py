"""Generation plan, generator class and the diffusion jobs on a real local Ray (tiny sizes)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from trcgl.config import GenerateConfig, load_config
from trcgl.data.dataset import DatasetInfo
from trcgl.diffusion.plan import Generator, make_plan, part_payloads
from trcgl.storage import FIDELITY, GRIDS, REALISM, Storage, run_dir
from trcgl_dev.faults.ray_worker_kill import REFERENCE_EPOCHS


def _info_rows():
    classes = ["normal", "cardiomegaly", "mass", "pneumothorax"]
    info = DatasetInfo(
        "ds",
        classes,
        ["head", "medium", "tail", "tail"],
        np.array([50, 10, 4, 2]),
        np.eye(4, dtype=np.int64),
        32,
        [],
        {},
    )
    labels = [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1], [0, 1, 0, 0]]
    rows = pd.DataFrame(
        {
            "image_id": [f"real-{i}" for i in range(len(labels))],
            "labels": labels,
            "localizations": [[], ["loc left"], ["loc right"], [], ["loc apical"], []],
            "projection": ["PA"] * 6,
        }
    )
    return info, rows


def test_plan_counts_seeds_and_real_label_sets():
    info, rows = _info_rows()
    cfg = GenerateConfig(aug_ratio_tail=2.0, per_class_max=5, rows_per_file=3, seed=1)
    plan = make_plan(info, rows, cfg)
    assert plan["target_class"].value_counts().to_dict() == {"mass": 5, "pneumothorax": 4}
    assert plan["image_id"].is_unique and plan["seed"].is_unique
    real_sets = {tuple(v) for v in rows["labels"]}
    assert all(tuple(v) in real_sets for v in plan["labels"])  # label sets copied from real rows
    for target, labels in zip(plan["target_class"], plan["labels"], strict=True):
        assert labels[info.classes.index(target)] == 1
    assert any(sum(v) > 1 for v in plan["labels"])  # co-occurrence kept, not only the single tail label
    assert plan["part"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    again = make_plan(info, rows, cfg)
    pd.testing.assert_frame_equal(plan, again)
    other = make_plan(info, rows, GenerateConfig(aug_ratio_tail=2.0, per_class_max=5, rows_per_file=3, seed=2))
    assert (other["seed"] != plan["seed"]).all()
    assert make_plan(info, rows, GenerateConfig(aug_ratio_tail=0.0)).empty


def test_generator_class_called_directly(tmp_path):
    from trcgl.config import to_dict
    from trcgl.diffusion.model import TextToXray
    from trcgl.diffusion.prompts import prompt_vocabulary

    info, rows = _info_rows()
    cfg = load_config("tiny", [f"storage.root={tmp_path}", "data.image_size=24", "diffusion.image_size=24"])
    model = TextToXray.build(cfg.diffusion, prompt_vocabulary(info.classes, ["loc left", "loc right", "loc apical"]))
    model.save_pretrained(str(tmp_path / "model"))
    plan = make_plan(info, rows, GenerateConfig(aug_ratio_tail=1.0, rows_per_file=4))
    gen = Generator(to_dict(cfg), str(tmp_path / "model"), "out", len(info.classes))
    result = gen(pd.DataFrame({"payload": part_payloads(plan)[:1]}))
    assert result["rows"].tolist() == [4] and not result["skipped"].any()
    table = pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()
    assert [r["image_id"] for r in table] == plan["image_id"].head(4).tolist()
    assert all(len(r["image"]) == 24 * 24 * 2 and r["source"] == "synthetic" for r in table)
    assert all(r["mode"] == "sample" and len(r["control_image"]) == 24 * 24 * 2 for r in table)  # controls on
    assert gen(pd.DataFrame({"payload": part_payloads(plan)[:1]}))["skipped"].all()  # exists: skipped


@pytest.mark.slow
def test_train_diffusion_then_generate_then_score_fidelity(tiny_diffusion):
    from trcgl.diffusion.ray_generate import run_generate

    root, dataset, trained = tiny_diffusion["root"], tiny_diffusion["dataset"], tiny_diffusion["result"]
    storage = Storage(root)
    # the session's diffusion model (run_train_diffusion, 2 epochs): published, finite loss, one entry per epoch
    assert storage.manifest(f"{run_dir(trained['run'], 'diffusion')}/model") is not None
    assert trained["last_loss"] is not None and np.isfinite(trained["last_loss"])
    history = storage.read_json(f"{run_dir(trained['run'], 'diffusion')}/history.json")
    assert [h["epoch"] for h in history] == list(range(REFERENCE_EPOCHS)) and all(
        np.isfinite(h["loss"]) for h in history
    )
    cfg = load_config(
        "tiny",
        [
            f"storage.root={root}",
            "train.run=gen",
            f"train.dataset={dataset}",
            f"generate.model={tiny_diffusion['model']}",
        ],
    )
    first = run_generate(cfg)
    out = run_dir("gen", "synthetic")
    parts = [f for f in storage.list_files(out) if "/part-" in f]
    assert len(parts) == first["parts"] > 1 and first["parts_skipped"] == 0

    def rows():
        return [r for p in parts for r in pq.read_table(storage.path(p)).to_pylist()]

    ids = [r["image_id"] for r in rows()]
    assert len(ids) == len(set(ids)) == first["images"]
    # a killed run fills only the gap: tests/faults/test_faults_generation_kill.py
    grids = [f for f in storage.list_files(f"{out}/{GRIDS}") if f.endswith(".png")]
    assert len(grids) == len(first["per_class"]) and first["fidelity"] is None  # no reference classifier yet
    # realism needs no reference: every generated image (fewer than generate.realism_max_images) against train positives
    assert first["realism"]["n_synthetic"] == first["images"] and first["realism"]["real_split"] == "train"
    assert storage.read_json(f"{out}/{REALISM}") == first["realism"]

    # fidelity with a reference classifier (an untrained one: this checks the mechanics, not the figures)
    from trcgl.data.dataset import load_dataset_info
    from trcgl.models import build_model
    from trcgl.train import checkpoint as ckpt

    info = load_dataset_info(storage, dataset)
    reference = build_model(cfg.model, info.num_classes, info.cooccurrence)
    ckpt.write_storage(storage, "reference", ckpt.checkpoint_files(reference, cfg, info, 0, {}))
    storage.delete(f"{out}/_manifest.json")
    scored = run_generate(
        load_config(
            "tiny",
            [
                f"storage.root={root}",
                "train.run=gen",
                f"train.dataset={dataset}",
                f"generate.model={tiny_diffusion['model']}",
                f"generate.reference_checkpoint={storage.uri('reference')}",
                "generate.fidelity_threshold=-1.0",
                "generate.fidelity_keep_fraction=0.5",
            ],
        )
    )
    assert {r["class"] for r in scored["fidelity"]} == set(first["per_class"]) and scored["fidelity_split"] == "val"
    aurocs = ("auroc_real", "auroc_synthetic", "auroc_control", "auroc_synthetic_vs_control")
    assert all(r[a] is None or 0.0 <= r[a] <= 1.0 for r in scored["fidelity"] for a in aurocs)
    assert all(r["controls"] == r["synthetic"] for r in scored["fidelity"])  # generate.controls: one per image
    assert all(r["visible_pixels"] is not None for r in scored["fidelity"])  # PadChest-Synth: the renderer says
    table = pq.read_table(storage.path(f"{out}/{FIDELITY}")).to_pandas()
    assert {"auroc_real", "auroc_control", "mean_margin", "visible"} <= set(table.columns)
    # a margin (score minus its control's) of -1 passes every image; the keep fraction keeps the better half of each
    assert scored["filtered"]["ranked_by"] == "margin" and scored["filtered"]["of"] == first["images"]
    assert scored["filtered"]["kept"] == sum(math.ceil(n / 2) for n in first["per_class"].values())
    assert len(scored["filtered"]["grids"]) == len(first["per_class"])  # kept vs dropped, one per class
    assert storage.manifest(run_dir("gen", "synthetic_filtered"))["fidelity_keep_fraction"] == 0.5


@pytest.mark.slow
def test_generate_fails_fast_without_gpus(tiny_prepared):
    from trcgl.diffusion.ray_generate import run_generate

    root, dataset = tiny_prepared
    cfg = load_config(
        "tiny", [f"storage.root={root}", "train.run=nogpu", f"train.dataset={dataset}", "generate.num_gpus=1"]
    )
    with pytest.raises(ValueError, match=r"generate.num_gpus.*0 GPUs.*ray.autoscaling"):
        run_generate(cfg)


def test_fidelity_keep_threshold_fraction_and_both():
    from trcgl.diffusion.fidelity import fidelity_keep

    scores = np.array([0.30, 0.01, 0.20, 0.02, 0.03, 0.50, 0.40])
    targets = ["a", "a", "a", "b", "b", "b", "c"]
    assert fidelity_keep(scores, targets).all()
    assert fidelity_keep(scores, targets, threshold=0.1).tolist() == [1, 0, 1, 0, 0, 1, 1]
    # half of 3 rounds up to 2 (the two best of a and of b); c's single image is kept
    assert fidelity_keep(scores, targets, keep_fraction=0.5).tolist() == [1, 0, 1, 0, 1, 1, 1]
    # both bars: b's second-best (0.03) is in its top half but under the threshold
    assert fidelity_keep(scores, targets, threshold=0.1, keep_fraction=0.5).tolist() == [1, 0, 1, 0, 0, 1, 1]
    assert fidelity_keep(scores, targets, keep_fraction=1.0).all()
    # ties keep the earlier image
    assert fidelity_keep(np.array([0.1, 0.1]), ["a", "a"], keep_fraction=0.5).tolist() == [1, 0]


def test_fidelity_keep_fraction_is_checked_and_makes_the_filtered_folder():
    from trcgl.config import ConfigError
    from trcgl.study.rows import check_ablation

    with pytest.raises(ConfigError, match=r"generate\.fidelity_keep_fraction.*got 1\.5"):
        load_config("tiny", ["generate.fidelity_keep_fraction=1.5"])
    overrides = ["ablation.rows={f: {extra: synthetic_filtered}}", "ablation.baseline=f"]
    with pytest.raises(ConfigError, match="fidelity_keep_fraction"):
        check_ablation(load_config("tiny", overrides + ["generate.fidelity_threshold=null"]))
    check_ablation(load_config("tiny", overrides + ["generate.fidelity_keep_fraction=0.5"]))


def test_fidelity_table_auroc():
    from trcgl.diffusion.fidelity import fidelity_table

    classes = ["a", "b"]
    syn = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7]])
    real = np.array([[0.2, 0.1], [0.3, 0.9], [0.95, 0.5]])
    real_labels = np.array([[0, 0], [0, 1], [1, 0]])
    table = fidelity_table(classes, syn, ["a", "a", "b"], real, real_labels).set_index("class")
    assert table.loc["a", "auroc_synthetic"] == 1.0  # synthetic a-scores 0.9, 0.8 above real negatives 0.2, 0.3
    assert table.loc["b", "auroc_synthetic"] == 1.0  # 0.7 above the real b-negatives' 0.1 and 0.5
    assert table.loc["a", "mean_score_synthetic"] == pytest.approx(0.85)
    assert table.loc["a", "mean_score_real_positive"] == pytest.approx(0.95)
    assert table.loc["a", "real_negatives"] == 2 and table.loc["b", "synthetic"] == 1


def test_repeat_by_group_weights_rows_and_its_module_stays_light():
    """Ray Data task workers import the module of a function they run: this one must not pull in torch."""
    import subprocess
    import sys

    from trcgl.diffusion.grouping import group_repeats, repeat_by_group

    batch = pd.DataFrame({"image_id": ["h", "t", "m", "n"], "labels": [[1, 0, 0], [0, 0, 1], [0, 1, 1], [0, 0, 0]]})
    out = repeat_by_group(batch, ["head", "medium", "tail"], {"head": 1.0, "medium": 1.5, "tail": 4.0})
    # tail x4; a row with medium and tail takes the larger weight; no finding: the head weight
    assert out["image_id"].tolist() == ["h", "t", "t", "t", "t", "m", "m", "m", "m", "n"]
    # the driver sizes an epoch from the copies alone (train.cache_mb), without building the repeated frame
    assert group_repeats(batch, ["head", "medium", "tail"], {"head": 1.0, "medium": 1.5, "tail": 4.0}).tolist() == [
        1,
        4,
        4,
        1,
    ]
    code = "import sys, trcgl.diffusion.grouping; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout


def test_grids_and_realism_without_a_reference_classifier(tmp_path):
    """Realism needs no reference: written beside the grids, against real train positives in the class mix."""
    import pyarrow as pa

    from trcgl.data.images import encode_prepared
    from trcgl.diffusion.ray_generate import fidelity_and_grids

    storage = Storage(str(tmp_path))
    cfg = load_config("tiny", [f"storage.root={tmp_path}", "train.run=r", "generate.realism_max_images=12"])
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 3), dtype=np.uint8)
    labels[:15, 1], labels[10:25, 2], labels[25:, 0] = 1, 1, 1
    split = ["train"] * 30 + ["val"] * 5 + ["test"] * 5
    real = pa.table(
        {
            "split": split,
            "labels": pa.array(labels.tolist(), pa.list_(pa.uint8(), 3)),
            "image": [encode_prepared(rng.random((16, 16))) for _ in range(40)],
        }
    )
    for j in range(2):  # two parts: picks span both
        storage.write_parquet(f"datasets/ds/part-{j:05d}.parquet", real.slice(20 * j, 20))
    parts = [storage.path(f"datasets/ds/part-{j:05d}.parquet") for j in range(2)]
    info = DatasetInfo(
        "ds", ["normal", "a", "b"], ["head", "tail", "tail"], labels[:30].sum(0), np.eye(3), 16, parts, {}
    )
    out = run_dir("r", "synthetic")
    storage.write_parquet(
        f"{out}/part-00000.parquet",
        pa.table(
            {
                "image_id": [f"syn-{i}" for i in range(20)],
                "image": [encode_prepared(rng.random((16, 16))) for _ in range(20)],
                "target_class": ["a"] * 14 + ["b"] * 6,
            }
        ),
    )
    result = fidelity_and_grids(cfg, storage, info, out)
    assert result["fidelity"] is None and len(result["grids"]) == 2
    assert result["realism"]["n_synthetic"] == 12 and result["realism"]["n_real"] == 12  # the same class mix
    assert 0.0 <= result["realism"]["auroc"] <= 1.0 and result["realism"]["real_split"] == "train"
    assert storage.read_json(f"{out}/{REALISM}") == result["realism"]
