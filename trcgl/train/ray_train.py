"""Classifier training on Ray Train: a ``TorchTrainer`` whose workers read their shard of a Ray Dataset.

Outputs under ``{root}/runs/{run}/``: ``config.yaml``; ``classifier/`` holds Ray Train's checkpoints (one per epoch,
the newest ``train.checkpoints_to_keep`` kept), ``best/`` (the best epoch by val mAP), ``history.json``, and after
the test evaluation ``metrics.json``, ``per_class.parquet`` and ``report/``. Rerunning with the same ``train.run``
resumes from the last registered checkpoint; a run trained with a different model config refuses to resume.
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.train
import torch
from ray.train import DataConfig
from ray.train.torch import TorchTrainer

from trcgl.config import Config, ConfigError, dump_yaml, from_dict, to_dict
from trcgl.data.dataset import COLUMNS, DatasetInfo, load_dataset_info, resolve_dataset_name
from trcgl.losses import build_loss
from trcgl.metrics import METRICS, evaluate_scores
from trcgl.models import build_model
from trcgl.storage import Storage, run_dir
from trcgl.train import checkpoint as ckpt
from trcgl.train.data import augment, choose_resampled, choose_synthetic, decode_batch, lr_factor, synthetic_parts
from trcgl.train.devices import amp_enabled, prepare_for_speed, to_device
from trcgl.train.ray_common import (
    all_workers_sum,
    hold_if_small,
    id_checksum,
    run_config,
    scaling_config,
    torch_config,
    train_device,
)
from trcgl.train.ray_evaluate import evaluate_checkpoint

log = logging.getLogger(__name__)

STAGE = "classifier"


# ---------------------------------------------------------------------------------------------------- datasets


def split_dataset(storage: Storage, info: DatasetInfo, split: str) -> ray.data.Dataset:
    """One split of a prepared dataset as a Ray Dataset with the training columns."""
    ds = ray.data.read_parquet(info.parts, filesystem=storage.pyarrow_fs, columns=[*COLUMNS, "split"])
    return ds.filter(expr=f"split == '{split}'").select_columns(COLUMNS)


def train_dataset(cfg: Config, storage: Storage, info: DatasetInfo) -> tuple[ray.data.Dataset, int, dict]:
    """Real train rows plus the chosen synthetic rows; returns (dataset, row count, mixing summary)."""
    real = split_dataset(storage, info, "train")
    n_real = info.split_sizes["train"]
    if cfg.train.extra_source == "real":
        return resampled_dataset(cfg, storage, info, real)
    if not cfg.train.synthetic or (cfg.train.aug_ratio_tail <= 0 and cfg.train.aug_ratio_medium <= 0):
        return real, n_real, {"real": n_real, "synthetic": 0, "per_class": {}}
    parts = synthetic_parts(storage, cfg.train.synthetic)
    meta = pa.concat_tables(
        [pq.read_table(storage.pyarrow_fs.open_input_file(p), columns=["image_id", "labels"]) for p in parts]
    )
    labels = np.asarray(meta["labels"].to_pylist(), dtype=np.uint8).reshape(meta.num_rows, info.num_classes)
    chosen, per_class = choose_synthetic(labels, info, cfg.train)
    keep = set(meta["image_id"].take(pa.array(chosen)).to_pylist()) if len(chosen) else set()
    log.info("training mix: %d real + %d synthetic rows %s", n_real, len(keep), per_class)
    if not keep:
        return real, n_real, {"real": n_real, "synthetic": 0, "per_class": per_class}
    keep_arr = pa.array(sorted(keep))

    def only_chosen(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.is_in(batch["image_id"], value_set=keep_arr))

    synth = (
        ray.data.read_parquet(parts, filesystem=storage.pyarrow_fs, columns=COLUMNS)
        .map_batches(only_chosen, batch_format="pyarrow")
        .select_columns(COLUMNS)
    )
    return real.union(synth), n_real + len(keep), {"real": n_real, "synthetic": len(keep), "per_class": per_class}


def resampled_dataset(
    cfg: Config, storage: Storage, info: DatasetInfo, real: ray.data.Dataset
) -> tuple[ray.data.Dataset, int, dict]:
    """Real train rows plus re-sampled copies of real tail/medium positives (``train.extra_source=real``)."""
    n_real = info.split_sizes["train"]
    if cfg.train.aug_ratio_tail <= 0 and cfg.train.aug_ratio_medium <= 0:
        return real, n_real, {"real": n_real, "synthetic": 0, "resampled": 0, "per_class": {}}
    meta = pa.concat_tables(
        [
            pq.read_table(storage.pyarrow_fs.open_input_file(p), columns=["image_id", "labels", "split"])
            for p in info.parts
        ]
    )
    meta = meta.filter(pc.equal(meta["split"], "train"))
    labels = np.asarray(meta["labels"].to_pylist(), dtype=np.uint8).reshape(meta.num_rows, info.num_classes)
    copies, per_class = choose_resampled(labels, info, cfg.train)
    extra = {i: int(c) for i, c in zip(meta["image_id"].to_pylist(), copies, strict=True) if c > 0}
    n_extra = int(sum(extra.values()))
    log.info("training mix: %d real + %d re-sampled copies of real rows %s", n_real, n_extra, per_class)
    mix = {"real": n_real, "synthetic": 0, "resampled": n_extra, "per_class": per_class}
    if not extra:
        return real, n_real, mix
    ids = pa.array(sorted(extra))

    def repeat_chosen(batch: pa.Table) -> pa.Table:
        batch = batch.filter(pc.is_in(batch["image_id"], value_set=ids))
        take = [i for i, image_id in enumerate(batch["image_id"].to_pylist()) for _ in range(extra[image_id])]
        return batch.take(pa.array(take, type=pa.int64()))

    copies_ds = real.map_batches(repeat_chosen, batch_format="pyarrow")
    return real.union(copies_ds), n_real + n_extra, mix


# ---------------------------------------------------------------------------------------------------- worker


def _predict(model: torch.nn.Module, it: Any, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    scores, targets = [], []
    model.eval()
    with torch.no_grad():
        for batch in it:
            x, y = decode_batch(batch["image"], batch["labels"])
            scores.append(torch.sigmoid(model(x.to(device))).float().cpu().numpy())
            targets.append(y.numpy())
    return np.concatenate(scores), np.concatenate(targets)


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: build the model, resume if a checkpoint exists, train, validate (rank 0), report."""
    cfg = from_dict(config["cfg"], "train worker")
    info = DatasetInfo.from_dict(config["dataset"])
    storage = Storage(cfg.storage.root, cfg.storage)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    device = train_device("classifier")
    model = build_model(cfg.model, info.num_classes, info.cooccurrence)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    steps_per_epoch = int(config["steps_per_epoch"])
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup = int(round(cfg.train.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup))
    start_epoch, history, best = 0, [], -1.0
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as folder:
            model_state, state, meta = ckpt.load_training_state(folder)
        if meta["signature"] != ckpt.model_signature(cfg, info.name):
            raise ConfigError(
                f"run {cfg.train.run!r} was trained with another model config or dataset; "
                "choose a new train.run to start fresh"
            )
        model.load_state_dict(model_state)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        log.info("rank %d resumed from epoch %d", rank, state["epoch"])
        if rank == 0:  # the history of the checkpoint, also when no epoch is left to train
            storage.write_json(f"{run_dir(cfg.train.run, STAGE)}/history.json", history)
    model = ray.train.torch.prepare_model(model, move_to_device=device)
    step_model = prepare_for_speed(model, cfg.train.channels_last, cfg.train.compile, cfg.train.compile_backend)
    loss_fn = build_loss(cfg.loss, info.train_counts, cfg.train.epochs)
    use_amp = amp_enabled(cfg.train.amp, device)
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        model.train()
        gen = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch * 101 + rank)
        losses, seen, id_sum = [], 0, 0
        batches = shard.iter_batches(
            batch_size=cfg.train.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=4 * cfg.train.batch_size,
            local_shuffle_seed=cfg.train.seed + epoch * 1000 + rank,
        )
        for batch in batches:
            x, y = decode_batch(batch["image"], batch["labels"])
            x = to_device(augment(x, cfg.train.augment, gen), device, cfg.train.pin_memory, cfg.train.channels_last)
            y = to_device(y, device, cfg.train.pin_memory)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = loss_fn(step_model(x), y, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            seen += x.shape[0]
            id_sum += id_checksum(batch["image_id"])
        images, id_sum = all_workers_sum([seen, id_sum], device)
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "train_images_per_worker": seen,
            "start_epoch": start_epoch,  # where this attempt began: 0 fresh, k + 1 resumed after epoch k
            "train_images": images,  # all workers: each train row once per epoch (checked by the fault suite)
            "train_id_checksum": id_sum,
            "lr": scheduler.get_last_lr()[0],
            "epoch_seconds": time.perf_counter() - t0,
        }
        if rank == 0:
            val_scores, val_targets = _predict(
                ckpt.bare(model),
                ray.train.get_dataset_shard("val").iter_batches(batch_size=64, batch_format="numpy"),
                device,
            )
            val = evaluate_scores(val_scores, val_targets, info.classes, info.groups, bootstrap=0)
            metrics.update({f"val_{k}": val[k] for k in METRICS})
            history.append(metrics)
            score = val["mAP"] if val["mAP"] is not None else -1.0
            improved = score > best
            best = max(best, score)
            state = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": history,
                "best": best,
            }
            files = ckpt.checkpoint_files(model, cfg, info, epoch, metrics, state)
            classifier = run_dir(cfg.train.run, STAGE)
            if improved:
                ckpt.write_storage(
                    storage, f"{classifier}/best", {k: v for k, v in files.items() if k != ckpt.STATE_FILE}
                )
            storage.write_json(f"{classifier}/history.json", history)
            with tempfile.TemporaryDirectory() as tmp:
                ckpt.write_local(tmp, files)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            log.info(
                "epoch %d: loss %.4f val mAP %s mAUC %s (%.1f s)",
                epoch,
                metrics["train_loss"],
                metrics["val_mAP"],
                metrics["val_mAUC"],
                metrics["epoch_seconds"],
            )
        else:
            ray.train.report(metrics, checkpoint=None)


# ---------------------------------------------------------------------------------------------------- driver


def run_training(cfg: Config, callbacks: list | None = None) -> dict:
    """Trains (or resumes) ``train.run`` on Ray Train, then evaluates the best checkpoint on the test split.

    Args:
        cfg: the run's config.
        callbacks: extra Ray Train callbacks (a sweep trial reports each epoch to Tune through one).

    Returns:
        Summary: dataset, epochs, best val mAP, test metrics with intervals, output locations.
    """

    storage = Storage(cfg.storage.root, cfg.storage)
    storage.check_writable()
    dataset = resolve_dataset_name(cfg, storage)
    cfg.train.dataset = dataset
    info = load_dataset_info(storage, dataset)
    storage.write_text(f"{run_dir(cfg.train.run)}/config.yaml", dump_yaml(cfg))
    train_ds, n_train, mix = train_dataset(cfg, storage, info)
    train_ds = hold_if_small(train_ds, info.estimated_bytes(n_train), cfg.train.cache_mb, "train rows")
    val_rows = info.split_sizes.get("val", 0)
    val_ds = hold_if_small(
        split_dataset(storage, info, "val"), info.estimated_bytes(val_rows), cfg.train.cache_mb, "val rows"
    )
    per_worker = n_train // max(1, cfg.train.num_workers)
    steps_per_epoch = max(1, -(-per_worker // cfg.train.batch_size))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "dataset": info.to_dict(), "steps_per_epoch": steps_per_epoch},
        datasets={
            "train": train_ds.randomize_block_order(seed=cfg.train.seed),
            "val": val_ds,
        },
        dataset_config=DataConfig(datasets_to_split=["train"]),
        scaling_config=scaling_config(cfg),
        torch_config=torch_config(cfg),
        run_config=run_config(cfg, storage, STAGE, callbacks),
    )
    t0 = time.perf_counter()
    log.info(
        "training %s on %s: %d train rows, %d workers, %d steps/epoch",
        cfg.train.run,
        dataset,
        n_train,
        cfg.train.num_workers,
        steps_per_epoch,
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    classifier = run_dir(cfg.train.run, STAGE)
    history = storage.read_json(f"{classifier}/history.json")
    best_uri = storage.uri(classifier, "best")
    test = evaluate_checkpoint(cfg, best_uri, dataset, "test", classifier, history=history)
    summary = {
        "run": cfg.train.run,
        "dataset": dataset,
        "train_rows": mix,
        "epochs_run": len(history),
        "best_val_mAP": max((h["val_mAP"] or -1) for h in history),
        "test": {k: test[k] for k in METRICS} | {"ci": test["ci"]},
        "best_checkpoint": best_uri,
        "outputs": storage.uri(classifier),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    storage.write_json(posixpath.join(classifier, "summary.json"), summary)
    return summary
