"""Training the text-guided diffusion model on Ray Train (data-parallel, checkpointed every epoch, resumable).

Outputs under ``{root}/runs/{run}/diffusion/``: Ray Train checkpoints (``model/`` in diffusers' ``save_pretrained``
layout plus ``state.pt`` for resuming) and, at the end, ``model/`` with its manifest: the folder ``jobs.generate``
samples from. Rows of tail classes are repeated by ``diffusion.group_weights`` (the largest weight among a row's
classes' groups), since tail synthesis is the purpose.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

import numpy as np
import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from trcgl import records
from trcgl.config import Config, check_generator_size, config_hash, dump_yaml, from_dict, to_dict
from trcgl.data.dataset import DatasetInfo, load_dataset_info, resolve_dataset_name
from trcgl.diffusion.grouping import group_repeats, repeat_by_group
from trcgl.diffusion.model import TextToXray
from trcgl.diffusion.plan import read_train_rows
from trcgl.diffusion.prompts import build_prompt, prompt_vocabulary
from trcgl.ray_parquet import read_parts
from trcgl.storage import Storage, run_dir
from trcgl.train.data import decode_batch
from trcgl.train.devices import amp_enabled, to_device
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
)

log = logging.getLogger(__name__)

STAGE = "diffusion"
COLUMNS = ["image_id", "image", "labels", "localizations", "projection"]


class _Loss(torch.nn.Module):
    """DDP synchronises gradients of ``forward`` calls only: this makes the training loss the forward."""

    def __init__(self, model: TextToXray) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, prompts: list[str], generator: torch.Generator) -> torch.Tensor:
        return self.model.training_loss(images, prompts, generator)


def prompts_of(batch: dict, classes: list[str]) -> list[str]:
    """Prompts of a numpy batch (labels, localizations, projection columns)."""
    out = []
    for labels, locs, proj in zip(batch["labels"], batch["localizations"], batch["projection"], strict=True):
        names = [c for c, v in zip(classes, np.asarray(labels), strict=True) if v == 1]  # not UNKNOWN (255)
        out.append(build_prompt(names, list(locs), str(proj)))
    return out


@dataclass(frozen=True)
class _Worker:
    """What one diffusion worker trains with (:func:`_build`).

    Attributes:
        model: the bare model (the checkpoint saves it; its EMA weights are updated after every step).
        use_amp: bf16 autocast in training steps.
    """

    cfg: Config
    info: DatasetInfo
    storage: Storage
    rank: int
    device: torch.device
    model: TextToXray
    optimizer: torch.optim.Optimizer
    use_amp: bool


def _history_path(cfg: Config) -> str:
    """``history.json`` of the run's diffusion stage: one row of metrics per trained epoch (rank 0 writes it)."""
    return posixpath.join(run_dir(cfg.train.run, STAGE), "history.json")


def _build(config: dict) -> _Worker:
    """The worker's config, model and optimiser, from ``train_loop_config``.

    The model's initial weights come from ``diffusion.seed`` (:meth:`TextToXray.build` seeds a forked RNG), so every
    rank starts from the same weights.
    """
    cfg = from_dict(config["cfg"], "diffusion worker")
    info = DatasetInfo.from_dict(config["dataset"])
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    model = TextToXray.build(cfg.diffusion, config["vocabulary"], cfg.storage)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.diffusion.lr)
    storage = Storage(cfg.storage.root, cfg.storage)
    device = train_device("diffusion")
    use_amp = amp_enabled(cfg.diffusion.amp, device)
    return _Worker(cfg, info, storage, rank, device, model, optimizer, use_amp)


def _resume(w: _Worker) -> tuple[int, list[dict]]:
    """Loads the checkpoint Ray Train hands this attempt, if any, into the model and optimiser.

    Returns:
        (first epoch to train: 0 without a checkpoint, k + 1 after the checkpoint of epoch k; on rank 0 the epochs
        of ``history.json`` before it, on other ranks []). Epochs from there on are trained again, so their history
        rows are dropped.
    """
    start_epoch = 0
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as folder:
            state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=False)
        w.model.load_state_dict(state["model"])
        w.optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        log.info("rank %d resumed diffusion training after epoch %d", w.rank, state["epoch"])
    history: list[dict] = []
    if w.rank == 0 and w.storage.exists(_history_path(w.cfg)):
        history = [h for h in w.storage.read_json(_history_path(w.cfg)) if int(h["epoch"]) < start_epoch]
    return start_epoch, history


def _train_epoch(
    w: _Worker, loss_module: torch.nn.Module, batches: Iterable[dict[str, np.ndarray]], epoch: int
) -> float:
    """One pass over this worker's batches: per batch, the denoising loss, backward, an optimiser and an EMA step.

    Timesteps, noise and prompt dropout draw from a generator seeded by ``diffusion.seed``, ``epoch`` and the rank.

    Args:
        w: the worker.
        loss_module: :class:`_Loss` of ``w.model``, wrapped for DDP.
        batches: numpy batches: ``image`` B encoded images and the prompt columns (``labels`` B label vectors of
            K, ``localizations``, ``projection``).
        epoch: the epoch being trained.

    Returns:
        This worker's mean loss over its batches; NaN when it had none.
    """
    gen = torch.Generator().manual_seed(w.cfg.diffusion.seed * 1_000_003 + epoch * 101 + w.rank)
    losses = []
    for batch in batches:
        x, _ = decode_batch(batch["image"], batch["labels"])  # (B, 1, S, S)
        x = to_device(x, w.device, w.cfg.train.pin_memory)
        with torch.autocast(w.device.type, dtype=torch.bfloat16, enabled=w.use_amp):
            loss = loss_module(x, prompts_of(batch, w.info.classes), gen)
        w.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        w.optimizer.step()
        w.model.update_ema()
        losses.append(float(loss.detach()))
    return float(np.mean(losses)) if losses else float("nan")


def _write_checkpoint(folder: str, w: _Worker, epoch: int) -> None:
    """Rank 0's checkpoint of an epoch into ``folder``: ``model/`` (diffusers' ``save_pretrained`` layout, what
    generation samples from) and ``state.pt`` (model and optimiser state dicts and the epoch, for resuming)."""
    w.model.save_pretrained(os.path.join(folder, "model"))
    torch.save(
        {"model": w.model.state_dict(), "optimizer": w.optimizer.state_dict(), "epoch": epoch},
        os.path.join(folder, "state.pt"),
    )


def _record_epoch(w: _Worker, history: list[dict], metrics: dict) -> None:
    """Rank 0, after the epoch's report: appends ``metrics`` to ``history`` and rewrites ``history.json``."""
    history.append(metrics)
    w.storage.write_json(_history_path(w.cfg), history)
    log.info("diffusion epoch %d: loss %.4f (%.1f s)", metrics["epoch"], metrics["loss"], metrics["epoch_seconds"])


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: build, resume if a checkpoint exists, then per epoch train, checkpoint (rank 0) and
    report.

    Args:
        config: ``train_loop_config``: ``cfg`` (the run's config as a dict), ``dataset`` (``DatasetInfo.to_dict``),
            ``vocabulary`` (the tokenizer's words).
    """
    # -- build: model (the same initial weights on every rank) and optimiser
    w = _build(config)
    # -- resume: from the run's newest checkpoint Ray Train registered, if any
    start_epoch, history = _resume(w)
    # -- distribute: the loss module under DDP on the training device; this worker's shard of the train rows
    loss_module = ray.train.torch.prepare_model(_Loss(w.model), move_to_device=w.device)
    train_rows = WorkerRows("train", config)
    diffusion = w.cfg.diffusion
    for epoch in range(start_epoch, diffusion.epochs):
        t0 = time.perf_counter()
        # -- train the epoch, its rows counted for the fault suite
        rows = EpochRows(train_rows.epoch_batches(diffusion.batch_size, diffusion.seed, epoch), start_epoch)
        loss = _train_epoch(w, loss_module, rows, epoch)
        totals = rows.totals(w.device)  # an all-reduce: every rank, once an epoch
        metrics = {"epoch": epoch, "loss": loss, "epoch_seconds": time.perf_counter() - t0, **totals}
        # -- checkpoint (rank 0) and report: every rank, once an epoch (a barrier)
        report_epoch(metrics, partial(_write_checkpoint, w=w, epoch=epoch) if w.rank == 0 else None)
        # -- history (rank 0), after the report returned: history.json lists only epochs whose checkpoint is stored
        if w.rank == 0:
            _record_epoch(w, history, metrics)


def stage_record(cfg: Config, dataset: str) -> dict:
    """What ``{run}/diffusion/`` is made from (:func:`trcgl.records.diffusion_record`)."""
    return records.diffusion_record(cfg, dataset)


def claim_output(cfg: Config, storage: Storage, dataset: str, force: bool = False, option: str = "--force") -> str:
    """Claims ``{run}/diffusion/`` (checkpoints and the published model) for this config (:func:`records.claim`)."""
    return records.claim(storage, run_dir(cfg.train.run, STAGE), stage_record(cfg, dataset), option, force)


def run_train_diffusion(cfg: Config, force: bool = False) -> dict:
    """Trains (or resumes) the diffusion model of ``train.run``; publishes ``diffusion/model/``.

    Args:
        cfg: the config.
        force: recompute even when the model was made from other diffusion values (its folder is cleared first).

    Raises:
        trcgl.records.StaleStageError: the model was made from other diffusion values and ``force`` is off.
        ConfigError: ``diffusion.image_size`` is not ``data.image_size`` (the model could not make the classifier's
            rows).
    """
    check_generator_size(cfg)
    storage = Storage(cfg.storage.root, cfg.storage)
    storage.check_writable()
    dataset = resolve_dataset_name(cfg, storage)
    claim_output(cfg, storage, dataset, force)
    info = load_dataset_info(storage, dataset)
    rows = read_train_rows(storage, info)
    locs = sorted({loc for locs in rows["localizations"] for loc in locs})
    vocabulary = prompt_vocabulary(info.classes, locs, sorted(set(rows["projection"])))  # a table's views too
    storage.write_text(f"{run_dir(cfg.train.run)}/config.yaml", dump_yaml(cfg))
    ds = read_parts(info.parts, storage.pyarrow_fs, [*COLUMNS, "split"])
    ds = (
        ds.filter(expr="split == 'train'")
        .select_columns(COLUMNS)
        .map_batches(
            repeat_by_group,
            batch_format="pandas",
            fn_kwargs={"groups": info.groups, "weights": dict(cfg.diffusion.group_weights)},
        )
    )
    repeated = int(group_repeats(rows, info.groups, dict(cfg.diffusion.group_weights)).sum())  # rows of an epoch
    ds = hold_if_small(ds, info.estimated_bytes(repeated), cfg.train.cache_mb, "diffusion train rows")
    datasets, held, data_config = hand_over({"train": ds}, ["train"], cfg.diffusion.seed)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "dataset": info.to_dict(), "vocabulary": vocabulary, HELD: held},
        datasets=datasets,
        dataset_config=data_config,
        scaling_config=scaling_config(cfg),
        torch_config=torch_config(cfg),
        run_config=run_config(cfg, storage, STAGE),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("diffusion training reported no checkpoint")
    out = posixpath.join(run_dir(cfg.train.run, STAGE), "model")
    with result.checkpoint.as_directory() as folder:
        src = os.path.join(folder, "model")
        for dirpath, _, files in os.walk(src):
            for name in files:
                full = os.path.join(dirpath, name)
                storage.write_bytes(
                    posixpath.join(out, os.path.relpath(full, src).replace(os.sep, "/")), open(full, "rb").read()
                )
    storage.publish(
        out, {"stage": "train_diffusion", "dataset": dataset, "diffusion_config": config_hash(cfg.diffusion)}
    )
    metrics = result.metrics or {}
    return {
        "run": cfg.train.run,
        "dataset": dataset,
        "model": storage.uri(out),
        "epochs": cfg.diffusion.epochs,
        "last_loss": metrics.get("loss"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
