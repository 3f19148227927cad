"""Classifier training on Ray Train: a ``TorchTrainer`` whose workers read their shard of a Ray Dataset.

Outputs under ``{root}/runs/{run}/``: ``config.yaml``; ``classifier/`` holds Ray Train's checkpoints (one per epoch,
the newest ``train.checkpoints_to_keep`` kept), ``best/`` (the best epoch by val mAP), ``history.json``, and after
the test evaluation ``metrics.json``, ``per_class.parquet`` and ``report/``. Rerunning with the same ``train.run``
resumes from the last registered checkpoint; a run trained with a different model config refuses to resume.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from trcgl import records
from trcgl.config import Config, ConfigError, dump_yaml, from_dict, to_dict
from trcgl.data.dataset import COLUMNS, DatasetInfo, load_dataset_info, resolve_dataset_name
from trcgl.losses import build_loss
from trcgl.metrics import METRICS, evaluate_scores
from trcgl.models import build_model
from trcgl.ray_parquet import read_parts
from trcgl.storage import Storage, run_dir
from trcgl.train import checkpoint as ckpt
from trcgl.train.data import augment, choose_generated, choose_resampled, decode_batch, lr_factor
from trcgl.train.devices import amp_enabled, prepare_for_speed, to_device
from trcgl.train.ray_common import (
    HELD,
    EpochRows,
    WorkerRows,
    hand_over,
    hold_if_small,
    report_epoch,
    run_config,
    scaling_config,
    torch_config,
    train_device,
    worker_placement,
)
from trcgl.train.ray_evaluate import evaluate_checkpoint
from trcgl.train.thresholds import threshold_record

log = logging.getLogger(__name__)

STAGE = "classifier"
# what history.json records per epoch beside the reported metrics: where the attempt's workers ran (worker_placement)
PLACEMENT_KEYS = ("dist_backend", "workers")


# ---------------------------------------------------------------------------------------------------- datasets


def split_dataset(storage: Storage, info: DatasetInfo, split: str) -> ray.data.Dataset:
    """One split of a prepared dataset as a Ray Dataset with the training columns."""
    ds = read_parts(info.parts, storage.pyarrow_fs, [*COLUMNS, "split"])
    return ds.filter(expr=f"split == '{split}'").select_columns(COLUMNS)


def train_dataset(cfg: Config, storage: Storage, info: DatasetInfo) -> tuple[ray.data.Dataset, int, dict]:
    """Real train rows plus the chosen extra rows; returns (dataset, row count, mixing summary).

    ``train.extra_source`` says where extra rows come from: ``synthetic`` (the folders of ``train.synthetic``) and
    ``oracle`` (the oracle folder, see :func:`trcgl.records.extra_folders`) are generated rows, chosen and mixed
    alike (:func:`trcgl.train.data.choose_generated`); ``real`` adds re-sampled copies of real rows.
    """
    real = split_dataset(storage, info, "train")
    n_real = info.split_sizes["train"]
    if cfg.train.extra_source == "real":
        return resampled_dataset(cfg, storage, info, real)
    source = cfg.train.extra_source

    def mix(n: int, per_class: dict[str, int]) -> dict:
        return {"real": n_real, "synthetic": 0, source: n, "per_class": per_class}

    folders = records.extra_folders(cfg)
    if not folders or (cfg.train.aug_ratio_tail <= 0 and cfg.train.aug_ratio_medium <= 0):
        return real, n_real, mix(0, {})
    try:
        parts, keep, per_class = choose_generated(storage, folders, info, cfg.train)
    except FileNotFoundError as exc:
        if source != records.ORACLE_STAGE:
            raise
        raise FileNotFoundError(f"{exc}; python -m jobs.oracle with this config writes the oracle rows") from exc
    log.info("training mix: %d real + %d %s rows %s", n_real, len(keep), source, per_class)
    if not keep:
        return real, n_real, mix(0, per_class)
    keep_arr = pa.array(keep)

    def only_chosen(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.is_in(batch["image_id"], value_set=keep_arr))

    extra = (
        read_parts(parts, storage.pyarrow_fs, COLUMNS)
        .map_batches(only_chosen, batch_format="pyarrow")
        .select_columns(COLUMNS)
    )
    return real.union(extra), n_real + len(keep), mix(len(keep), per_class)


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


@dataclass(frozen=True)
class _Worker:
    """What one classifier worker trains with: built by :func:`_build`, wrapped for DDP by :func:`_distribute`.

    Attributes:
        model: the bare model from :func:`_build`; the DDP-wrapped one on the training device after
            :func:`_distribute` (``ckpt.bare`` unwraps it).
        step_model: the module a training step calls (``model``, in NHWC and compiled when asked); None before
            :func:`_distribute`.
        scheduler: the per-step LR schedule (warm-up, then decay over ``train.epochs``).
        loss_fn: ``loss_fn(logits (B, K), targets (B, K), epoch) -> scalar``.
        use_amp: bf16 autocast in training steps.
    """

    cfg: Config
    info: DatasetInfo
    storage: Storage
    rank: int
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loss_fn: torch.nn.Module
    use_amp: bool
    step_model: torch.nn.Module | None = None


def _build(config: dict) -> _Worker:
    """The worker's config, model, optimiser, LR schedule and loss, from ``train_loop_config``.

    The global torch RNG is seeded with ``train.seed`` right before the model is built, so every rank starts from
    the same weights (DDP also broadcasts rank 0's when it wraps the model).
    """
    cfg = from_dict(config["cfg"], "train worker")
    info = DatasetInfo.from_dict(config["dataset"])
    storage = Storage(cfg.storage.root, cfg.storage)
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)
    device = train_device("classifier")
    model = build_model(cfg.model, info.num_classes, info.cooccurrence, info.split_sizes.get("train"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    steps_per_epoch = int(config["steps_per_epoch"])
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup = int(round(cfg.train.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup))
    cosine_scale = cfg.model.cosine_scale if cfg.model.cosine_classifier else None
    loss_fn = build_loss(cfg.loss, info.train_counts, cfg.train.epochs, cosine_scale)
    use_amp = amp_enabled(cfg.train.amp, device)
    return _Worker(cfg, info, storage, rank, device, model, optimizer, scheduler, loss_fn, use_amp)


def _resume(w: _Worker) -> tuple[int, list[dict], float]:
    """Loads the checkpoint Ray Train hands this attempt, if any, into the model, optimiser and LR schedule.

    Rank 0 then rewrites ``history.json`` with the checkpoint's history (the epochs up to and including the
    checkpoint's), also when no epoch is left to train: rank 0 writes ``history.json`` before it reports an epoch, so
    the file may list epochs whose checkpoint Ray Train never registered, which are trained again.

    Returns:
        (first epoch to train: 0 without a checkpoint, k + 1 after the checkpoint of epoch k; the history of the
        epochs before it; the best val mAP so far, -1 before any).

    Raises:
        ConfigError: the checkpoint was trained with another model config or dataset.
    """
    resumed = ray.train.get_checkpoint()
    if resumed is None:
        return 0, [], -1.0
    with resumed.as_directory() as folder:
        model_state, state, meta = ckpt.load_training_state(folder)
    if meta["signature"] != ckpt.model_signature(w.cfg, w.info.name):
        raise ConfigError(
            f"run {w.cfg.train.run!r} was trained with another model config or dataset; "
            "choose a new train.run to start fresh"
        )
    w.model.load_state_dict(model_state)
    w.optimizer.load_state_dict(state["optimizer"])
    w.scheduler.load_state_dict(state["scheduler"])
    log.info("rank %d resumed from epoch %d", w.rank, state["epoch"])
    if w.rank == 0:
        w.storage.write_json(f"{run_dir(w.cfg.train.run, STAGE)}/history.json", state["history"])
    return state["epoch"] + 1, state["history"], state["best"]


def _distribute(w: _Worker) -> _Worker:
    """``w`` with its model wrapped by Ray Train for DDP on the training device and the module training steps call.

    Called after :func:`_resume`, so the weights DDP broadcasts from rank 0 are the resumed ones.
    """
    model = ray.train.torch.prepare_model(w.model, move_to_device=w.device)
    step_model = prepare_for_speed(model, w.cfg.train.channels_last, w.cfg.train.compile, w.cfg.train.compile_backend)
    return replace(w, model=model, step_model=step_model)


def _train_epoch(w: _Worker, batches: Iterable[dict[str, np.ndarray]], epoch: int) -> float:
    """One pass over this worker's batches: per batch, augment, forward, backward, an optimiser and an LR step.

    The augmentation draws from a generator seeded by ``train.seed``, ``epoch`` and the rank.

    Args:
        w: the worker, after :func:`_distribute`.
        batches: numpy batches: ``image`` B encoded images, ``labels`` B label vectors of K.
        epoch: the epoch being trained (the loss may depend on it, e.g. LDAM-DRW's reweighting).

    Returns:
        This worker's mean loss over its batches; NaN when it had none.
    """
    train = w.cfg.train
    w.model.train()
    gen = torch.Generator().manual_seed(train.seed * 100_003 + epoch * 101 + w.rank)
    losses = []
    for batch in batches:
        x, y = decode_batch(batch["image"], batch["labels"])  # (B, 1, S, S), (B, K)
        x = to_device(augment(x, train.augment, gen), w.device, train.pin_memory, train.channels_last)
        y = to_device(y, w.device, train.pin_memory)
        with torch.autocast(w.device.type, dtype=torch.bfloat16, enabled=w.use_amp):
            loss = w.loss_fn(w.step_model(x), y, epoch)
        w.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        w.optimizer.step()
        w.scheduler.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


def _predict(model: torch.nn.Module, it: Any, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores (N, K) and targets (N, K) of the numpy batches of ``it``, the model in eval mode."""
    scores, targets = [], []
    model.eval()
    with torch.no_grad():
        for batch in it:
            x, y = decode_batch(batch["image"], batch["labels"])
            scores.append(torch.sigmoid(model(x.to(device))).float().cpu().numpy())
            targets.append(y.numpy())
    return np.concatenate(scores), np.concatenate(targets)


def _validate_and_checkpoint(
    w: _Worker,
    val_rows: WorkerRows,
    epoch: int,
    metrics: dict[str, Any],
    history: list[dict],
    best: float,
    placement: dict[str, Any],
) -> tuple[float, dict[str, bytes]]:
    """Rank 0's end of an epoch: validates, records the epoch and builds its checkpoint.

    Adds the val metrics (``val_mAP``, ``val_mAUC``, ...) to ``metrics``, appends ``metrics`` and ``placement`` (the
    attempt's workers and backend, :func:`worker_placement`; kept out of the reported metrics) to ``history``, chooses
    the per-class decision thresholds on the same val predictions (:mod:`trcgl.train.thresholds`, stored in the
    checkpoint's ``meta.json``), rewrites ``best/`` (the checkpoint without ``state.pt``) when val mAP beat ``best``,
    then ``history.json``.

    Returns:
        (the best val mAP so far; the epoch's checkpoint as {file name: bytes}, ``state.pt`` included, for
        :func:`report_epoch`).
    """
    val_scores, val_targets = _predict(ckpt.bare(w.model), val_rows.batches(64), w.device)
    val = evaluate_scores(val_scores, val_targets, w.info.classes, w.info.groups, bootstrap=0)
    metrics.update({f"val_{k}": val[k] for k in METRICS})
    history.append(metrics | placement)
    score = val["mAP"] if val["mAP"] is not None else -1.0
    improved = score > best
    best = max(best, score)
    state = {
        "optimizer": w.optimizer.state_dict(),
        "scheduler": w.scheduler.state_dict(),
        "epoch": epoch,
        "history": history,
        "best": best,
    }
    thresholds = threshold_record(val_scores, val_targets, w.info.classes, epoch=epoch, dataset=w.info.name)
    files = ckpt.checkpoint_files(w.model, w.cfg, w.info, epoch, metrics, state, thresholds)
    classifier = run_dir(w.cfg.train.run, STAGE)
    if improved:
        ckpt.write_storage(w.storage, f"{classifier}/best", {k: v for k, v in files.items() if k != ckpt.STATE_FILE})
    w.storage.write_json(f"{classifier}/history.json", history)
    return best, files


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: build, resume if a checkpoint exists, then per epoch train, validate and checkpoint
    (rank 0) and report.

    Args:
        config: ``train_loop_config``: ``cfg`` (the run's config as a dict), ``dataset`` (``DatasetInfo.to_dict``),
            ``steps_per_epoch`` (for the LR schedule).
    """
    # -- build: model, optimiser, LR schedule, loss; the same initial weights on every rank
    w = _build(config)
    # -- resume: from the run's newest checkpoint Ray Train registered, if any
    start_epoch, history, best = _resume(w)
    # -- distribute: DDP on the training device; this worker's shard of the train rows; where the ranks run
    w = _distribute(w)
    train_rows = WorkerRows("train", config)
    val_rows = WorkerRows("val", config) if w.rank == 0 else None
    placement = worker_placement()  # an all-gather: every rank, once an attempt
    for epoch in range(start_epoch, w.cfg.train.epochs):
        t0 = time.perf_counter()
        # -- train the epoch, its rows counted for the fault suite
        rows = EpochRows(train_rows.epoch_batches(w.cfg.train.batch_size, w.cfg.train.seed, epoch), start_epoch)
        train_loss = _train_epoch(w, rows, epoch)
        totals = rows.totals(w.device)  # an all-reduce: every rank, once an epoch
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_images_per_worker": rows.count,
            **totals,
            "lr": w.scheduler.get_last_lr()[0],
            "epoch_seconds": time.perf_counter() - t0,
        }
        # -- validate and checkpoint (rank 0)
        checkpoint = None
        if w.rank == 0:
            best, files = _validate_and_checkpoint(w, val_rows, epoch, metrics, history, best, placement)
            checkpoint = partial(ckpt.write_local, files=files)
        # -- report: every rank, once an epoch (a barrier); rank 0 attaches the checkpoint
        report_epoch(metrics, checkpoint)
        if w.rank == 0:
            log.info("epoch %d: loss %.4f val mAP %s mAUC %s (%.1f s)", epoch, metrics["train_loss"],
                     metrics["val_mAP"], metrics["val_mAUC"], metrics["epoch_seconds"])  # fmt: skip


# ---------------------------------------------------------------------------------------------------- driver


def stage_record(cfg: Config, storage: Storage, dataset: str, upstream: dict | None = None) -> dict:
    """What ``{run}/classifier/`` is made from (:func:`trcgl.records.classifier_record`), plus ``upstream``: record
    hashes of stages the run's config was derived from (the final run of the pipeline records its sweep's)."""
    record = records.classifier_record(cfg, storage, dataset)
    return record | {f"{records.INPUT_PREFIX}{k}": v for k, v in (upstream or {}).items()}


def claim_output(
    cfg: Config,
    storage: Storage,
    dataset: str,
    force: bool = False,
    option: str = "--force",
    upstream: dict | None = None,
) -> str:
    """Claims ``{run}/classifier/`` (its Ray Train checkpoints included) for this config (:func:`records.claim`)."""
    record = stage_record(cfg, storage, dataset, upstream)
    return records.claim(storage, run_dir(cfg.train.run, STAGE), record, option, force)


def finished_summary(cfg: Config, storage: Storage) -> dict | None:
    """The summary of a run that finished with this config (every epoch trained, the test split scored), else None.

    A rerun of such a run returns it without starting Ray Train: resuming would train no epoch and score the same
    checkpoint again. The summary is written last (after the test evaluation), so its presence means the run ended.
    """
    classifier = run_dir(cfg.train.run, STAGE)
    summary_rel = posixpath.join(classifier, "summary.json")
    if not storage.exists(summary_rel) or not storage.exists(f"{classifier}/history.json"):
        return None
    history = storage.read_json(f"{classifier}/history.json")
    if len(history) < cfg.train.epochs:
        return None
    log.info("%s: already trained for %d epochs with this config: skipping", storage.uri(classifier), len(history))
    return storage.read_json(summary_rel)


def run_training(cfg: Config, callbacks: list | None = None, force: bool = False, upstream: dict | None = None) -> dict:
    """Trains (or resumes) ``train.run`` on Ray Train, then evaluates the best checkpoint on the test split.

    A run that already finished with the same config (and no ``callbacks`` to report to) is returned as it is
    (:func:`finished_summary`).

    Args:
        cfg: the run's config.
        callbacks: extra Ray Train callbacks (a sweep trial reports each epoch to Tune through one).
        force: recompute even when the run was made from other config values (its folder is cleared first).
        upstream: record hashes of the stages the config was derived from (see :func:`stage_record`).

    Raises:
        trcgl.records.StaleStageError: the run was made from other model, loss or train values and ``force`` is off.

    Returns:
        Summary: dataset, epochs, best val mAP, test metrics with intervals, output locations.
    """
    storage = Storage(cfg.storage.root, cfg.storage)
    storage.check_writable()
    dataset = resolve_dataset_name(cfg, storage)
    cfg.train.dataset = dataset
    claimed = claim_output(cfg, storage, dataset, force, upstream=upstream)
    if claimed == "same" and not callbacks:
        finished = finished_summary(cfg, storage)
        if finished is not None:
            return finished
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
    datasets, held, data_config = hand_over({"train": train_ds, "val": val_ds}, ["train"], cfg.train.seed)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": to_dict(cfg),
            "dataset": info.to_dict(),
            "steps_per_epoch": steps_per_epoch,
            HELD: held,
        },  # fmt: skip
        datasets=datasets,
        dataset_config=data_config,
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
        # the last epoch's Train workers (rank, Ray node id) and process-group backend; history.json has each epoch's
        "placement": {k: history[-1].get(k) for k in PLACEMENT_KEYS},
        "outputs": storage.uri(classifier),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    storage.write_json(posixpath.join(classifier, "summary.json"), summary)
    return summary
