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
import tempfile
import time

import numpy as np
import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from trcgl.config import Config, config_hash, dump_yaml, from_dict, to_dict
from trcgl.data.dataset import DatasetInfo, load_dataset_info, resolve_dataset_name
from trcgl.diffusion.grouping import group_repeats, repeat_by_group
from trcgl.diffusion.model import TextToXray
from trcgl.diffusion.plan import read_train_rows
from trcgl.diffusion.prompts import build_prompt, prompt_vocabulary
from trcgl.storage import Storage, run_dir
from trcgl.train.data import decode_batch
from trcgl.train.devices import amp_enabled, to_device
from trcgl.train.ray_common import (
    all_workers_sum,
    hold_if_small,
    id_checksum,
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
        names = [c for c, v in zip(classes, np.asarray(labels), strict=True) if v]
        out.append(build_prompt(names, list(locs), str(proj)))
    return out


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: build or resume the model, train epochs, report a checkpoint per epoch (rank 0)."""
    cfg = from_dict(config["cfg"], "diffusion worker")
    info = DatasetInfo.from_dict(config["dataset"])
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    model = TextToXray.build(cfg.diffusion, config["vocabulary"], cfg.storage)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=cfg.diffusion.lr)
    start_epoch = 0
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as folder:
            state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1
        log.info("rank %d resumed diffusion training after epoch %d", rank, state["epoch"])
    storage = Storage(cfg.storage.root, cfg.storage)
    history_rel = posixpath.join(run_dir(cfg.train.run, STAGE), "history.json")
    history: list[dict] = []
    if rank == 0 and storage.exists(history_rel):  # epochs after the resumed checkpoint are trained again
        history = [h for h in storage.read_json(history_rel) if int(h["epoch"]) < start_epoch]
    device = train_device("diffusion")
    loss_module = ray.train.torch.prepare_model(_Loss(model), move_to_device=device)
    shard = ray.train.get_dataset_shard("train")
    use_amp = amp_enabled(cfg.diffusion.amp, device)
    for epoch in range(start_epoch, cfg.diffusion.epochs):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(cfg.diffusion.seed * 1_000_003 + epoch * 101 + rank)
        losses, seen, id_sum = [], 0, 0
        for batch in shard.iter_batches(
            batch_size=cfg.diffusion.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=4 * cfg.diffusion.batch_size,
            local_shuffle_seed=cfg.diffusion.seed + epoch * 1000 + rank,
        ):
            x, _ = decode_batch(batch["image"], batch["labels"])
            x = to_device(x, device, cfg.train.pin_memory)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = loss_module(x, prompts_of(batch, info.classes), gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.update_ema()
            losses.append(float(loss.detach()))
            seen += len(batch["image_id"])
            id_sum += id_checksum(batch["image_id"])
        images, id_sum = all_workers_sum([seen, id_sum], device)
        metrics = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "epoch_seconds": time.perf_counter() - t0,
            "start_epoch": start_epoch,  # where this attempt began: 0 fresh, k + 1 resumed after epoch k
            "train_images": images,  # all workers; the same multiset every epoch (checked by the fault suite)
            "train_id_checksum": id_sum,
        }
        if rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(os.path.join(tmp, "model"))
                torch.save(
                    {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                    os.path.join(tmp, "state.pt"),
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            history.append(metrics)
            storage.write_json(history_rel, history)
            log.info("diffusion epoch %d: loss %.4f (%.1f s)", epoch, metrics["loss"], metrics["epoch_seconds"])
        else:
            ray.train.report(metrics, checkpoint=None)


def run_train_diffusion(cfg: Config) -> dict:
    """Trains (or resumes) the diffusion model of ``train.run``; publishes ``diffusion/model/``."""
    storage = Storage(cfg.storage.root, cfg.storage)
    storage.check_writable()
    dataset = resolve_dataset_name(cfg, storage)
    info = load_dataset_info(storage, dataset)
    rows = read_train_rows(storage, info)
    vocabulary = prompt_vocabulary(info.classes, sorted({loc for locs in rows["localizations"] for loc in locs}))
    storage.write_text(f"{run_dir(cfg.train.run)}/config.yaml", dump_yaml(cfg))
    ds = ray.data.read_parquet(info.parts, filesystem=storage.pyarrow_fs, columns=[*COLUMNS, "split"])
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
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": to_dict(cfg), "dataset": info.to_dict(), "vocabulary": vocabulary},
        datasets={"train": ds.randomize_block_order(seed=cfg.diffusion.seed)},
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
