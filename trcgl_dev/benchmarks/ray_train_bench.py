"""``python -m jobs.benchmark train``: what the TRCGL-Net heads and Ray Train cost per training step.

Three loops of identical training steps (AdamW, BCE, same backbone, batch, image size, thread count, random images
with random multi-hot labels):

(a) the backbone alone with a linear head on pooled features (the plain peer), in-process;
(b) full TRCGL-Net (SE gate, class attention, label GCN), in-process;
(c) full TRCGL-Net inside a 1-worker Ray Train ``TorchTrainer``, its batches read from a Ray Dataset shard and
    decoded from the prepared-image byte format, as the training job does.

Printed: images/s of each, b/a (target >= 0.8: the heads must be cheap) and c/b (target >= 0.9: Ray must not cost
much). Warm-up steps are excluded from every timing.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import ray
import ray.train
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from trcgl.config import ModelConfig, from_dict, to_dict
from trcgl.data.images import encode_prepared
from trcgl.models import build_model
from trcgl.train.data import decode_batch

log = logging.getLogger(__name__)


@dataclass
class TrainBenchResult:
    backbone: str
    image_size: int
    batch_size: int
    threads: int
    plain: float
    full: float
    ray_full: float

    def lines(self) -> list[str]:
        head = f"train  {self.backbone} {self.image_size}px batch {self.batch_size}, {self.threads} threads"
        return [
            f"{head}: (a) backbone + linear {self.plain:.1f} images/s",
            f"{head}: (b) full TRCGL-Net {self.full:.1f} images/s",
            f"{head}: (c) full TRCGL-Net in Ray Train, 1 worker {self.ray_full:.1f} images/s",
            f"train  ratio b/a (heads' cost): {self.full / self.plain:.2f}  (target >= 0.8)",
            f"train  ratio c/b (Ray's cost): {self.ray_full / self.full:.2f}  (target >= 0.9)",
        ]


def _cooccurrence(k: int, rng: np.random.Generator) -> np.ndarray:
    y = (rng.random((2000, k)) < np.linspace(0.3, 0.005, k)).astype(np.int64)  # long-tailed labels
    return y.T @ y


def _model_cfg(backbone: str, full: bool) -> ModelConfig:
    cfg = ModelConfig(backbone=backbone)
    if not full:
        cfg = dataclasses.replace(cfg, se=False, class_attention=False, gcn=False, csra=False)
    return cfg


def _timed_steps(model: torch.nn.Module, batches, warmup: int) -> float:
    """Runs training steps over ``batches`` (an iterable of (x, y)); returns images/s after ``warmup`` steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    n, t0 = 0, None
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if t0 is not None:
            n += x.shape[0]
    if t0 is None or n == 0:
        raise ValueError("not enough batches to time after warm-up")
    return n / (time.perf_counter() - t0)


def _in_process(
    model_cfg: ModelConfig, k: int, cooc: np.ndarray, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int
) -> float:
    torch.manual_seed(0)
    model = build_model(model_cfg, k, cooc)
    return _timed_steps(model, ((x, y) for _ in range(steps + warmup)), warmup)


def _ray_worker(config: dict) -> None:
    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    model_cfg = from_dict({"model": config["model"]}).model
    model = ray.train.torch.prepare_model(build_model(model_cfg, config["k"], np.asarray(config["cooc"])))
    shard = ray.train.get_dataset_shard("train")

    def batches():
        for batch in shard.iter_batches(batch_size=config["batch_size"], batch_format="numpy", drop_last=True):
            yield decode_batch(batch["image"], batch["labels"])

    ips = _timed_steps(model, batches(), config["warmup"])
    with tempfile.TemporaryDirectory() as tmp:  # Ray Train V2 keeps the metrics of reports with a checkpoint
        ray.train.report({"images_per_s": ips}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def run(
    backbone: str = "resnet18",
    image_size: int = 128,
    batch_size: int = 32,
    steps: int = 12,
    warmup: int = 3,
    threads: int = 2,
    classes: int = 30,
) -> TrainBenchResult:
    """Measures (a), (b) and (c); starts and stops its own local Ray for (c)."""
    rng = np.random.default_rng(0)
    cooc = _cooccurrence(classes, rng)
    x = torch.rand(batch_size, 1, image_size, image_size)
    y = (torch.rand(batch_size, classes) < 0.1).float()
    torch.set_num_threads(threads)
    plain = _in_process(_model_cfg(backbone, full=False), classes, cooc, x, y, steps, warmup)
    log.info("(a) %.1f images/s", plain)
    full = _in_process(_model_cfg(backbone, full=True), classes, cooc, x, y, steps, warmup)
    log.info("(b) %.1f images/s", full)
    rows = batch_size * (steps + warmup)
    images = [encode_prepared(x[i % batch_size, 0].numpy()) for i in range(rows)]
    labels = [y[i % batch_size].numpy().astype(np.uint8) for i in range(rows)]
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=threads + 1, include_dashboard=False, log_to_driver=False)
    try:
        ds = ray.data.from_items([{"image": im, "labels": lab} for im, lab in zip(images, labels, strict=True)])
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={
                "model": to_dict(_model_cfg(backbone, full=True)),
                "k": classes,
                "cooc": cooc.tolist(),
                "batch_size": batch_size,
                "warmup": warmup,
                "threads": threads,
            },
            datasets={"train": ds.materialize()},
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": threads}),
            run_config=RunConfig(name="bench-train", storage_path=tempfile.mkdtemp(prefix="trcgl-bench-train-")),
        )
        result = trainer.fit()
        ray_full = float(result.metrics["images_per_s"])
    finally:
        if started:
            ray.shutdown()
    return TrainBenchResult(backbone, image_size, batch_size, threads, plain, full, ray_full)
