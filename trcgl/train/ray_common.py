"""What every Ray Train job of a run shares: worker resources and where its checkpoints go, and the per-epoch
pieces of the training loops (this worker's batches, the report, the fault suite's row bookkeeping)."""

from __future__ import annotations

import logging
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data
import ray.train
import ray.train.torch
import torch
from ray.data.block import BlockAccessor
from ray.data.dataset import MaterializedDataset
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend

from trcgl.config import Config
from trcgl.ray_console import quiet_train_reports, train_logging
from trcgl.ray_runtime import check_cpu_budget, check_gpus, check_spread
from trcgl.storage import Storage, run_dir
from trcgl.train.devices import dist_backend

log = logging.getLogger(__name__)


def scaling_config(cfg: Config) -> ScalingConfig:
    """Workers, CPUs and GPUs per worker and their placement from ``train.*`` (failing fast on GPUs no node has, see
    check_gpus, and on a strict spread over more nodes than there are, see check_spread).

    ``train.placement_strategy`` is the strategy of the workers' placement group: PACK (Ray's default: as few nodes as
    possible, DDP traffic stays inside a node), SPREAD (across nodes where it can), STRICT_PACK (one node or none),
    STRICT_SPREAD (one worker per node or none: each worker gets a node's network link and memory to itself).
    """
    check_cpu_budget(cfg)
    resources = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        resources["GPU"] = cfg.train.gpus_per_worker
        check_gpus(cfg.train.gpus_per_worker, cfg.ray.autoscaling, "train.gpus_per_worker")
    strategy = cfg.train.placement_strategy
    check_spread(strategy, cfg.train.num_workers, resources, cfg.ray.autoscaling, "train.placement_strategy")
    return ScalingConfig(
        num_workers=cfg.train.num_workers,
        use_gpu=cfg.train.use_gpu,
        resources_per_worker=resources,
        placement_strategy=strategy,
    )


def torch_config(cfg: Config) -> TorchConfig:
    """The process group's backend from ``train.dist_backend``: nccl or gloo as named; "auto" is gloo for CPU workers
    and, for GPU workers, chosen on the workers once they are placed (:class:`_WorkersChooseBackend`).

    The driver cannot tell for GPU workers: it often runs on a head without GPUs, and a node may declare GPUs that
    torch cannot use (the fake GPUs of the local autoscaling cluster, a broken driver), whose workers train on the
    CPU (:func:`train_device`), where NCCL fails. Ray's own default (``backend=None``) picks NCCL for any GPU worker.
    """
    if cfg.train.dist_backend == "auto" and cfg.train.use_gpu:
        return _WorkersChooseBackendConfig()
    return TorchConfig(backend=dist_backend(cfg.train.use_gpu, cfg.train.dist_backend))


class _WorkersChooseBackend(_TorchBackend):
    """Ray's torch backend, with the process group's backend chosen on the placed workers before it starts.

    Each worker answers :func:`~trcgl.train.devices.dist_backend` for itself (NCCL where its torch can use CUDA and
    has NCCL, else gloo); every rank must use the same one, so it is NCCL only when every worker said NCCL, else gloo
    (which also carries the CUDA tensors of workers that have CUDA). Ray's ``TorchftConfig`` subclasses
    ``_TorchBackend`` the same way.
    """

    def on_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        answers = worker_group.execute(_gpu_worker_backend)
        backend = "nccl" if all(a == "nccl" for a in answers) else "gloo"
        log.info("process group backend %s (the workers' torch: %s)", backend, answers)
        super().on_start(worker_group, replace(backend_config, backend=backend))


def _gpu_worker_backend() -> str:
    """What "auto" means for a GPU worker, asked in the worker's process (Ray's ``execute`` wants a named function)."""
    return dist_backend(True, "auto")


class _WorkersChooseBackendConfig(TorchConfig):
    """A ``TorchConfig`` whose backend the placed workers choose (:class:`_WorkersChooseBackend`)."""

    @property
    def backend_cls(self) -> type[_TorchBackend]:
        return _WorkersChooseBackend


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
        logging_config=train_logging(),  # Ray Train's own INFO lines only with a job's --verbose
    )


def hold_if_small(ds: ray.data.Dataset, nbytes: int, cache_mb: float, what: str) -> ray.data.Dataset:
    """``ds`` read once and held in Ray's object store when its estimated size ``nbytes`` is within ``cache_mb``
    (``train.cache_mb``); else ``ds`` as it is, which Ray Train executes again (read, filter, map tasks) every epoch.

    On small data those per-epoch tasks cost more than the training (``python -m jobs.benchmark cache`` compares the
    two; BENCHMARKS.md has its figures). The held blocks belong to the driver, so they outlive a Train worker restart.
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


# ---------------------------------------------------------------------------------------------------- epochs

HELD = "held_blocks"  # train_loop_config key: {dataset name: Arrow block refs} of the datasets held in the object store


def hand_over(
    datasets: dict[str, ray.data.Dataset], split: Iterable[str], seed: int
) -> tuple[dict[str, ray.data.Dataset], dict[str, list[ray.ObjectRef]], DataConfig]:
    """How a run's datasets reach its Train workers: held ones (:func:`hold_if_small`) as the refs of their Arrow
    blocks, to pass in ``train_loop_config[HELD]``; streamed ones as Ray Train datasets, each named in ``split`` cut
    between the workers by ``streaming_split`` (:class:`ray.train.DataConfig`) in a block order shuffled by ``seed``.

    Held rows skip Ray Train's split: through it a run starts a split-coordinator actor and split tasks, new
    processes that cost a small run more than its training; each worker instead takes its rows of a per-epoch
    permutation itself (:class:`WorkerRows`). The blocks stay owned by this driver, so they outlive a Train worker
    restart.

    Returns:
        (datasets for ``TorchTrainer(datasets=...)``, held block refs by name, the ``DataConfig`` for the streamed).
    """
    streamed: dict[str, ray.data.Dataset] = {}
    held: dict[str, list[ray.ObjectRef]] = {}
    split = set(split)
    for name, ds in datasets.items():
        if isinstance(ds, MaterializedDataset):
            held[name] = ds.to_arrow_refs()  # no copy: the blocks are Arrow tables already
        else:
            streamed[name] = ds.randomize_block_order(seed=seed) if name in split else ds
    return streamed, held, DataConfig(datasets_to_split=sorted(split & set(streamed)))


def epoch_order(rows: int, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """The held rows one rank trains on in one epoch, in the order it trains on them (see :class:`WorkerRows`).

    Args:
        rows: how many rows the dataset holds.
        seed: the stage's seed.
        epoch: the epoch.
        rank: this worker's world rank.
        world: how many workers share the rows.

    Returns:
        (rows // world,) row indices: the epoch's permutation of all rows, without its last ``rows % world``, every
        ``world``-th from ``rank`` on.
    """
    order = np.random.default_rng([seed, epoch]).permutation(rows)
    return order[: rows - rows % world][rank::world]


class WorkerRows:
    """One dataset as this Train worker reads it: rows held in the object store, or Ray Train's shard of a streamed
    dataset (:func:`hand_over` decides which).

    Held rows are split between the ranks here: each epoch every rank draws the same permutation of all rows (seeded
    by the stage's seed and the epoch), drops its last ``rows % world_size`` so every rank gets as many rows (the
    ranks must run as many steps), and takes every ``world_size``-th row from its rank on. So an epoch feeds each kept
    row to exactly one rank, the rows move between ranks from epoch to epoch, and an epoch rerun after a Train worker
    restart draws the same rows on the same ranks (a new driver may hold the rows in another order).
    """

    def __init__(self, name: str, config: dict) -> None:
        """Fetches the held blocks, or asks Ray Train for the streamed dataset's shard (a barrier for a dataset
        :func:`hand_over` split).

        Args:
            name: the dataset's name (``"train"``, ``"val"``).
            config: the worker's ``train_loop_config`` (its :data:`HELD` entry, when present, names held datasets).
        """
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        refs = config.get(HELD, {}).get(name)
        # permissive: real rows store labels as fixed-size uint8 lists, generated rows as int64 lists (both decode)
        self.table = pa.concat_tables(ray.get(refs), promote_options="permissive") if refs is not None else None
        self.shard = None if refs is not None else ray.train.get_dataset_shard(name)

    def epoch_batches(self, batch_size: int, seed: int, epoch: int) -> Iterable[dict[str, np.ndarray]]:
        """This rank's numpy batches of one epoch of a training dataset (the last may be smaller).

        Held rows come in the order of the epoch's permutation. A streamed shard is shuffled locally in a buffer of
        four batches, seeded by ``seed``, ``epoch`` and the rank (which rows reach the rank is Ray Data's split).

        Args:
            batch_size: rows per batch.
            seed: the stage's seed (``train.seed``, ``diffusion.seed``).
            epoch: the epoch about to be trained.
        """
        if self.table is None:
            return self.shard.iter_batches(
                batch_size=batch_size,
                batch_format="numpy",
                local_shuffle_buffer_size=4 * batch_size,
                local_shuffle_seed=seed + epoch * 1000 + self.rank,
            )
        return self._take(epoch_order(self.table.num_rows, seed, epoch, self.rank, self.world), batch_size)

    def batches(self, batch_size: int) -> Iterable[dict[str, np.ndarray]]:
        """Every row of the dataset (a val pass), in stored order, as numpy batches."""
        if self.table is None:
            return self.shard.iter_batches(batch_size=batch_size, batch_format="numpy")
        return self._take(np.arange(self.table.num_rows), batch_size)

    def _take(self, order: np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(order), batch_size):
            rows = self.table.take(pa.array(order[start : start + batch_size]))
            yield BlockAccessor.for_block(rows).to_batch_format("numpy")  # Ray Data's own numpy batches


def report_epoch(metrics: dict[str, Any], write_checkpoint: Callable[[str], None] | None = None) -> None:
    """Reports one epoch to Ray Train, with a checkpoint when ``write_checkpoint`` is given.

    ``ray.train.report`` is a barrier over the Train workers: every rank calls this once an epoch, at the same point,
    or the ranks that did wait for ever. Only rank 0 passes ``write_checkpoint``: DDP keeps the ranks' weights equal,
    so rank 0's checkpoint is the run's, and the other ranks report their metrics only.

    Args:
        metrics: the epoch's metrics (rank 0's are the ones Ray Train keeps with the checkpoint).
        write_checkpoint: writes the checkpoint's files into the folder it is given: a temporary folder, which
            ``ray.train.report`` uploads to the run's storage before it returns (synchronous upload) and which is
            deleted afterwards.
    """
    quiet_train_reports()  # Ray Train's own line per report: only with a job's --verbose
    if write_checkpoint is None:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(tmp)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


# ---------------------------------------------------------------------------------------------------- bookkeeping


class EpochRows:
    """The rows one Train worker fed to training in one epoch, counted for the fault-injection checks.

    The fault suite (``trcgl_dev.faults``) tells from a run's ``history.json`` whether a run whose workers or driver
    were killed still trained each epoch once and fed every train row once an epoch. For that each epoch records
    three metrics, all from this class (:meth:`totals`):

    * ``start_epoch``: the first epoch of the attempt that trained it: 0 when the run started fresh, k + 1 when it
      resumed from the checkpoint of epoch k;
    * ``train_images``: rows trained on, summed over all workers;
    * ``train_id_checksum``: :func:`id_checksum` of those rows' image ids, summed over all workers.

    Iterating an ``EpochRows`` iterates ``batches`` and counts each batch as it is handed to the training step, so
    the step itself keeps no counts. The loop builds one per epoch around the epoch's batches and calls
    :meth:`totals` once the epoch is trained.

    Args:
        batches: the epoch's numpy batches (:func:`epoch_batches`), each with an ``image_id`` column of B ids.
        start_epoch: the first epoch of this attempt (see above).

    Attributes:
        count: rows this worker has handed over so far.
    """

    def __init__(self, batches: Iterable[dict[str, np.ndarray]], start_epoch: int) -> None:
        self._batches = batches
        self._start_epoch = start_epoch
        self._id_sum = 0
        self.count = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for batch in self._batches:
            self.count += len(batch["image_id"])
            self._id_sum += id_checksum(batch["image_id"])
            yield batch

    def totals(self, device: torch.device) -> dict[str, int]:
        """``start_epoch``, ``train_images`` and ``train_id_checksum`` of the epoch, in that order.

        The sums are an all-reduce over the process group (:func:`all_workers_sum`): every rank calls this once an
        epoch, at the same point, after iterating all its batches.

        Args:
            device: the training device.
        """
        images, id_sum = all_workers_sum([self.count, self._id_sum], device)
        return {"start_epoch": self._start_epoch, "train_images": images, "train_id_checksum": id_sum}


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


def worker_placement() -> dict[str, Any]:
    """Where this attempt's Train workers run: ``{"dist_backend": ..., "workers": [{"rank", "node_id"}, ...]}``
    (ranks in order; ``node_id``: the Ray node, which tells nodes apart where hostnames do not, as on the fake nodes
    of the local autoscaling cluster).

    Every rank calls it once, at the same point (an all-gather over the process group; without one, this worker
    alone). Under NCCL the gather goes through the current CUDA device, which Ray Train sets for each worker.
    """
    me = {"rank": ray.train.get_context().get_world_rank(), "node_id": ray.get_runtime_context().get_node_id()}
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return {"dist_backend": None, "workers": [me]}
    workers: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(workers, me)
    return {"dist_backend": str(torch.distributed.get_backend()), "workers": workers}


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
