"""What every Ray Train job of a run shares: worker resources and where its checkpoints go."""

from __future__ import annotations

import logging
import time
import zlib
from typing import Any

import ray.data
import ray.train.torch
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig

from trcgl.config import Config
from trcgl.ray_runtime import check_cpu_budget, check_gpus
from trcgl.storage import Storage, run_dir
from trcgl.train.devices import dist_backend

log = logging.getLogger(__name__)


def scaling_config(cfg: Config) -> ScalingConfig:
    """Workers, CPUs and GPUs per worker from ``train.*`` (failing fast on GPUs no node has, see check_gpus)."""
    check_cpu_budget(cfg)
    resources = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        resources["GPU"] = cfg.train.gpus_per_worker
        check_gpus(cfg.train.gpus_per_worker, cfg.ray.autoscaling, "train.gpus_per_worker")
    return ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu, resources_per_worker=resources)


def torch_config(cfg: Config) -> TorchConfig:
    """The process-group backend from ``train.dist_backend`` ("auto": NCCL with GPUs where torch has it, else gloo).

    The driver decides for all workers, so the driver's and the workers' torch builds must agree (one image).
    """
    return TorchConfig(backend=dist_backend(cfg.train.use_gpu, cfg.train.dist_backend))


def run_config(cfg: Config, storage: Storage, stage: str, callbacks: list | None = None) -> RunConfig:
    """Checkpoints of ``stage`` under ``{root}/runs/{train.run}/{stage}/``; the same name on a rerun resumes.

    ``callbacks``: Ray Train callbacks (a sweep trial passes Tune's ``TuneReportCallback``).
    """
    return RunConfig(
        name=stage,
        storage_path=storage.path(run_dir(cfg.train.run)),
        storage_filesystem=storage.pyarrow_fs,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.checkpoints_to_keep),
        failure_config=FailureConfig(max_failures=cfg.train.max_failures),
        callbacks=callbacks,
    )


def hold_if_small(ds: ray.data.Dataset, nbytes: int, cache_mb: float, what: str) -> ray.data.Dataset:
    """``ds`` read once and held in Ray's object store when its estimated size ``nbytes`` is within ``cache_mb``
    (``train.cache_mb``); else ``ds`` as it is, which Ray Train executes again (read, filter, map tasks) every epoch.

    On small data those per-epoch tasks cost more than the training: a tiny-config classifier epoch took 6.6 s
    streamed and 2.7 s held on 2 CPUs (``python -m jobs.benchmark cache``). The held blocks belong to the driver, so
    they outlive a Train worker restart.
    """
    if nbytes <= 0:
        log.info("%s: size unknown, streamed from storage each epoch", what)
        return ds
    if nbytes > cache_mb * 2**20:
        mb = nbytes / 2**20
        log.info("%s: about %.0f MB, streamed from storage each epoch (train.cache_mb=%g)", what, mb, cache_mb)
        return ds
    t0 = time.perf_counter()
    held = ds.materialize()
    log.info("%s: read once and held in the object store, about %.1f MB (%.1f s)", what, nbytes / 2**20,
             time.perf_counter() - t0)  # fmt: skip
    return held


def id_checksum(image_ids: Any) -> int:
    """Sum of the CRC-32s of image ids: equal sums over an epoch mean (with high probability) the same rows, each
    as often, whatever the order or the split between workers."""
    return sum(zlib.crc32(str(i).encode()) for i in image_ids)


def all_workers_sum(values: list[int], device: torch.device) -> list[int]:
    """Each value summed over the Train workers (an all-reduce over the process group; as is without one).

    ``device``: the training device (NCCL reduces CUDA tensors only; gloo takes either)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.int64, device=device)
    torch.distributed.all_reduce(t)
    return [int(v) for v in t.tolist()]


def train_device(stage: str) -> torch.device:
    """The device a Ray Train worker trains on: Ray's choice, or the CPU where Ray assigned a GPU that has no CUDA.

    A worker given a GPU by Ray (``train.use_gpu``) on a node whose GPUs are declared but not usable from torch (a
    fake GPU node of the local autoscaling cluster, a CPU-only torch build, a broken driver) would fail moving the
    model; it trains on the CPU instead and says so once in its log.

    Args:
        stage: what trains, for the log line ("classifier", "diffusion").
    """
    device = ray.train.torch.get_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        log.warning("%s: Ray assigned a GPU but CUDA is not available on this node: training on the CPU", stage)
        return torch.device("cpu")
    return device
