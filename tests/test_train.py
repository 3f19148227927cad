"""Classifier training pieces (mixing plan, augmentation, schedule) and the Ray Train job end to end."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from trcgl.config import AugmentConfig, TrainConfig, load_config
from trcgl.data.dataset import DatasetInfo
from trcgl.storage import Storage, run_dir
from trcgl.train.data import augment, choose_resampled, choose_synthetic, lr_factor

# In a two-lane run (tests/conftest.py, two_lanes) this file runs in the other lane: it uses the tiny dataset but
# neither shared tiny run, and the tiny lane is the longer.
pytestmark = pytest.mark.lane("other")


def make_synthetic_folder(storage: Storage, dataset: str) -> str:
    """A synthetic folder built from real tail-positive train images (what the generation job writes)."""
    from trcgl.data.dataset import load_dataset_info, read_dataset

    tail = [i for i, g in enumerate(load_dataset_info(storage, dataset).groups) if g == "tail"]
    table = read_dataset(storage, dataset, split="train").to_pylist()
    rows = [r for r in table if any(r["labels"][k] for k in tail)]
    assert rows, "the tiny dataset has tail-positive train images"
    out = {
        "image_id": [f"syn-{i:04d}" for i in range(len(rows) * 2)],
        "image": [r["image"] for r in rows] * 2,
        "labels": [r["labels"] for r in rows] * 2,
        "source": ["synthetic"] * (len(rows) * 2),
    }
    folder = "runs/synth-test/synthetic"
    storage.write_parquet(f"{folder}/part-00000.parquet", pa.table(out))
    storage.publish(folder, {"stage": "generate"})
    return folder


def _info(counts, groups):
    k = len(counts)
    return DatasetInfo(
        "ds", [f"c{i}" for i in range(k)], groups, np.asarray(counts), np.eye(k, dtype=np.int64), 32, [], {}
    )


def test_synthetic_mix_follows_ratios_and_seed():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 3)) < [0.0, 0.3, 0.5]).astype(np.uint8)  # (M, K)
    info = _info([1000, 40, 5], ["head", "medium", "tail"])
    train = TrainConfig(aug_ratio_tail=2.0, aug_ratio_medium=0.5, seed=3)
    chosen, per_class = choose_synthetic(labels, info, train)
    assert per_class == {"c2": 10, "c1": 20}
    assert labels[chosen, 2].sum() >= 10 and labels[chosen, 1].sum() >= 20
    assert len(chosen) <= 30 and len(set(chosen)) == len(chosen)
    again, _ = choose_synthetic(labels, info, train)
    assert (again == chosen).all()
    none, _ = choose_synthetic(labels, info, TrainConfig())
    assert len(none) == 0


def test_resampling_copies_real_positives_at_the_same_ratios():
    rng = np.random.default_rng(1)
    labels = (rng.random((300, 3)) < [0.6, 0.1, 0.03]).astype(np.uint8)  # (N, K) real train rows
    counts = labels.sum(axis=0)
    info = _info(list(counts), ["head", "medium", "tail"])
    train = TrainConfig(aug_ratio_tail=2.0, aug_ratio_medium=0.5, seed=3)
    copies, per_class = choose_resampled(labels, info, train)
    want_tail, want_medium = int(round(2.0 * counts[2])), int(round(0.5 * counts[1]))
    assert per_class["c2"] == want_tail and per_class["c1"] >= want_medium
    assert (copies[labels[:, 2] == 1].sum()) == want_tail  # copies only of real tail positives for the tail class
    assert copies[(labels[:, 1] == 0) & (labels[:, 2] == 0)].sum() == 0  # no head-only row is copied
    assert copies.max() >= 2  # drawn with replacement: a tail row may be copied several times
    again, _ = choose_resampled(labels, info, train)
    assert (again == copies).all()
    assert choose_resampled(labels, info, TrainConfig())[0].sum() == 0


def test_augment_identity_when_off_and_reproducible():
    x = torch.rand(4, 1, 16, 16)
    off = AugmentConfig(rotate_deg=0, translate=0, scale=0, brightness=0, contrast=0)
    assert torch.allclose(augment(x, off, torch.Generator().manual_seed(0)), x, atol=1e-5)
    on = AugmentConfig()
    a = augment(x, on, torch.Generator().manual_seed(1))
    b = augment(x, on, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, x) and a.min() >= 0 and a.max() <= 1
    # no horizontal flip by default: a left-bright image stays left-bright
    left = torch.zeros(2, 1, 16, 16)
    left[..., :6] = 1.0
    out = augment(left, on, torch.Generator().manual_seed(2))
    assert (out[..., :8].mean() > out[..., 8:].mean()).item()


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, 100, 10) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False)) and f[-1] < 0.01


def test_epoch_order_gives_each_rank_its_own_rows_of_each_epochs_permutation():
    from trcgl.train.ray_common import epoch_order

    rows, world = 101, 3  # 101 % 3 = 2 rows left out of each epoch
    epochs = [[epoch_order(rows, 7, e, r, world) for r in range(world)] for e in range(3)]
    for parts in epochs:
        assert [len(p) for p in parts] == [rows // world] * world  # as many steps on every rank
        fed = np.concatenate(parts)
        assert len(set(fed.tolist())) == len(fed) == rows - rows % world  # each kept row once, on one rank
        assert set(fed.tolist()) <= set(range(rows))
    assert not np.array_equal(epochs[0][0], epochs[1][0])  # the rows move between ranks from epoch to epoch
    assert set(epochs[0][0].tolist()) != set(epochs[1][0].tolist())
    assert np.array_equal(epoch_order(rows, 7, 1, 2, world), epochs[1][2])  # a rerun of an epoch: the same rows
    assert not np.array_equal(epoch_order(rows, 8, 1, 2, world), epochs[1][2])  # another seed: others
    assert sorted(epoch_order(rows, 7, 0, 0, 1).tolist()) == list(range(rows))  # one worker: every row


def _actors(class_name: str) -> int:
    """Actors of ``class_name`` the session's Ray has ever had (the state API lists dead actors too)."""
    from trcgl_dev.ray_state import list_actors

    return len(list_actors(filters=[("class_name", "=", class_name)], limit=10_000, raise_on_missing_output=False))


def chance_mauc_bound(per_class: list[dict], z: float) -> float:
    """The mAUC a model that learned nothing stays below with one-sided probability Φ(z), on these classes.

    Under no learning a class's AUC is the Mann-Whitney statistic over its positives and negatives, with mean 0.5 and
    variance (n_pos + n_neg + 1) / (12 n_pos n_neg); the macro mean of K such classes (treated as independent) has
    mean 0.5 and the mean of their variances over K as variance.
    """
    var = [(c["positives"] + c["negatives"] + 1) / (12 * c["positives"] * c["negatives"]) for c in per_class
           if c["status"] == "ok"]  # fmt: skip
    return 0.5 + z * float(np.sqrt(np.sum(var))) / len(var)


@pytest.mark.slow
def test_train_resume_evaluate_on_tiny(tiny_prepared):
    from jobs.evaluate import main as evaluate_main
    from trcgl.records import StaleStageError
    from trcgl.train.ray_train import run_training
    from trcgl.train.thresholds import f1_optimal

    root, dataset = tiny_prepared
    storage = Storage(root)
    classifier = run_dir("t1", "classifier")
    overrides = [f"storage.root={root}", "train.run=t1", f"train.dataset={dataset}"]
    coordinators = _actors("SplitCoordinator")
    first = run_training(load_config("tiny", [*overrides, "train.epochs=1"]))
    assert first["epochs_run"] == 1 and first["train_rows"]["synthetic"] == 0
    # held rows reach the workers as block refs: no split coordinator (the streamed control:
    # test_streamed_rows_go_through_ray_trains_split)
    assert _actors("SplitCoordinator") == coordinators
    synthetic = make_synthetic_folder(storage, dataset)
    # compiled with the tracing backend (the GPU path that exists on CPU): the learning, resume and evaluate checks
    # below then hold for a compiled training step
    compiled = ["train.compile=true", "train.compile_backend=aot_eager"]
    cfg = load_config("tiny", [*overrides, f"train.synthetic=[{synthetic}]", "train.aug_ratio_tail=1.0", *compiled])
    # the same run with other values is refused, naming them, before any work
    with pytest.raises(StaleStageError, match=r"train\.aug_ratio_tail: 0\.0 -> 1\.0.*train\.epochs: 1 -> 6"):
        run_training(cfg)
    summary = run_training(cfg, force=True)  # recomputed from scratch, now mixing synthetic rows
    assert 0 < summary["train_rows"]["synthetic"] <= 40
    history = storage.read_json(f"{classifier}/history.json")
    assert [h["epoch"] for h in history] == list(range(cfg.train.epochs))
    assert {h["start_epoch"] for h in history} == {0}  # one attempt from epoch 0: nothing kept from the 1-epoch run
    assert summary["epochs_run"] == cfg.train.epochs
    # an unchanged rerun of the finished run trains no epoch again and returns its summary
    again = run_training(cfg)
    assert storage.read_json(f"{classifier}/history.json") == history
    assert again == storage.read_json(f"{classifier}/summary.json")  # returned as stored: Ray Train not started again
    assert again["train_seconds"] == summary["train_seconds"]
    assert again["test"]["mAP"] == pytest.approx(summary["test"]["mAP"], abs=1e-9)

    # learns: test mAUC above what a model that learned nothing reaches with p < 5 % on this split's classes (the
    # tiny split's bound is about 0.57; at p < 0.1 % it would be about 0.62, above what 6 tiny epochs reliably reach)
    metrics = storage.read_json(f"{classifier}/metrics.json")
    bound = chance_mauc_bound(metrics["per_class"], z=1.645)
    assert bound > 0.5, bound
    assert summary["test"]["mAUC"] > bound, (summary["test"], bound)
    files = storage.list_files(classifier)
    for name in (
        "metrics.json",
        "per_class.parquet",
        "report/per_class_ap_vs_frequency.png",
        "report/groups.png",
        "report/training_curves.png",
        "report/attention_maps.png",
        "best/model.pt",
        "best/meta.json",
    ):
        assert f"{classifier}/{name}" in files, name
    # two code paths agree: the training loop's val metrics of the best epoch (scored in the Train worker) and
    # jobs.evaluate on val from the saved best checkpoint (scored by batch inference)
    args = ["--checkpoint", summary["best_checkpoint"], "--split", "val", "--config", "tiny"]
    code = evaluate_main([*args, "--set", f"storage.root={root}"])
    assert code == 0
    evaluated = storage.read_json(f"{classifier}/eval-val/metrics.json")
    best = max(history, key=lambda h: h["val_mAP"])
    assert evaluated["mAP"] == pytest.approx(best["val_mAP"], abs=1e-4)
    assert evaluated["mAUC"] == pytest.approx(best["val_mAUC"], abs=1e-4)
    # the decision thresholds stored with best/ (in the Train worker): the F1 rule on the same val predictions
    meta = storage.read_json(f"{classifier}/best/meta.json")
    val = pa.parquet.read_table(storage.path(f"{classifier}/eval-val/predictions.parquet")).to_pandas()
    expected, _, _ = f1_optimal(np.stack(val["scores"]), np.stack(val["labels"]))
    assert meta["thresholds"]["values"] == pytest.approx(expected.tolist(), abs=1e-4)
    assert meta["thresholds"]["source"] == {"epoch": meta["epoch"], "dataset": dataset}
    table = pa.parquet.read_table(storage.path(f"{classifier}/per_class.parquet")).to_pandas()
    assert set(table["status"]) <= {"ok", "no_positives", "no_negatives"}


@pytest.mark.slow
def test_small_data_is_held_in_the_object_store_and_large_data_streams(tiny_prepared):
    """train.cache_mb: a split estimated within it is read once (materialized); above it, or at 0, it streams."""
    import os

    from ray.data.dataset import MaterializedDataset

    from trcgl.data.dataset import load_dataset_info
    from trcgl.train.ray_common import hold_if_small
    from trcgl.train.ray_train import split_dataset

    root, dataset = tiny_prepared
    storage = Storage(root)
    info = load_dataset_info(storage, dataset)
    assert info.parts_bytes == sum(os.path.getsize(p) for p in info.parts)  # the manifest's sizes, every part
    assert DatasetInfo.from_dict(info.to_dict()).parts_bytes == info.parts_bytes  # travels to the workers
    rows = info.split_sizes["train"]
    nbytes = info.estimated_bytes(rows)
    assert info.estimated_bytes(sum(info.split_sizes.values())) == info.parts_bytes
    assert 0 < nbytes < info.parts_bytes
    ds = split_dataset(storage, info, "train")
    held = hold_if_small(ds, nbytes, 1024, "train rows")
    assert isinstance(held, MaterializedDataset) and held.count() == rows
    assert sorted(r["image_id"] for r in held.take_all()) == sorted(r["image_id"] for r in ds.take_all())
    assert hold_if_small(ds, nbytes, nbytes / 2**20 * 0.99, "train rows") is ds  # just over the limit: streamed
    assert hold_if_small(ds, nbytes, 0, "train rows") is ds  # 0: always stream
    assert hold_if_small(ds, 0, 1024, "train rows") is ds  # size unknown: streamed


@pytest.mark.slow
def test_streamed_rows_go_through_ray_trains_split(tiny_prepared):
    """train.cache_mb=0: the rows stream through Ray Train's split (its split coordinator runs) and every epoch still
    feeds each train row once over the 2 workers, less the equal split's remainder."""
    from trcgl.train.ray_train import run_training
    from trcgl_dev.faults.run_files import epochs_saw_each_row_once, train_ids

    root, dataset = tiny_prepared
    before = _actors("SplitCoordinator")
    cfg = load_config("tiny", [f"storage.root={root}", f"train.dataset={dataset}", "train.run=streamed",
                               "train.cache_mb=0", "train.epochs=1", "train.bootstrap=10"])  # fmt: skip
    summary = run_training(cfg)
    assert _actors("SplitCoordinator") > before
    history = Storage(root).read_json(f"{run_dir('streamed', 'classifier')}/history.json")
    assert summary["epochs_run"] == 1
    assert epochs_saw_each_row_once(history, train_ids(root, dataset), cfg.train.num_workers), history


@pytest.mark.slow
def test_driver_and_actor_pool_scoring_agree(tiny_prepared):
    """A small split scored in the driver (train.eval_local_rows) gives the actor pool's predictions."""
    from trcgl.data.dataset import load_dataset_info
    from trcgl.models import build_model
    from trcgl.train import checkpoint as ckpt
    from trcgl.train.ray_evaluate import predict_local, predict_split

    root, dataset = tiny_prepared
    storage = Storage(root)
    info = load_dataset_info(storage, dataset)
    cfg = load_config("tiny", [f"storage.root={root}", f"train.dataset={dataset}", "train.eval_local_rows=0"])
    torch.manual_seed(0)
    model = build_model(cfg.model, info.num_classes, info.cooccurrence)
    ckpt.write_storage(storage, "eval-compare", ckpt.checkpoint_files(model, cfg, info, 0, {}))
    uri = storage.uri("eval-compare")
    pool = predict_split(cfg, uri, info, "val")  # eval_local_rows=0: always the actor pool
    local = predict_local(cfg, uri, info, "val", batch_size=7)  # other batch boundaries too
    assert len(local) == info.split_sizes["val"] and local["image_id"].is_unique
    assert local["image_id"].tolist() == pool["image_id"].tolist()
    np.testing.assert_allclose(np.stack(local["scores"]), np.stack(pool["scores"]), atol=1e-5)
    np.testing.assert_array_equal(np.stack(local["labels"]), np.stack(pool["labels"]))
