"""Connecting a job to Ray: a cluster when one is named (``ray.address`` or ``$RAY_ADDRESS``), else a local Ray."""

from __future__ import annotations

import logging
import os

import ray

from trcgl.config import Config

log = logging.getLogger(__name__)


def init_ray(cfg: Config) -> bool:
    """Initialises Ray once per driver.

    Under ``ray job submit`` the driver already runs inside the cluster and ``ray.init()`` attaches to it; under
    ``python -m jobs.X`` with no address a local Ray is started with ``ray.num_cpus`` CPUs.

    Returns:
        True when this call started Ray (the caller then shuts it down).
    """
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        log.info("starting a local Ray (num_cpus=%s)", cfg.ray.num_cpus)
        # address="local": always a new instance, never a stray cluster found on the host
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=True)
    return True


def check_gpus(per_worker: float, autoscaling: bool, key: str) -> None:
    """Fails fast when work asks for GPUs that no node has and no autoscaler can add.

    A request Ray cannot place pends forever with no error (RAY_NOTES.md); with ``ray.autoscaling`` on, the
    autoscaler is trusted to add GPU nodes and the job waits for them.

    Raises:
        ValueError: naming the config key, the request and what the cluster has.
    """
    if per_worker <= 0 or autoscaling:
        return
    have = ray.cluster_resources().get("GPU", 0.0)
    if have < per_worker:
        raise ValueError(
            f"config key {key!r} asks for {per_worker} GPU(s) per worker but the Ray cluster has {have:g} GPUs and "
            "ray.autoscaling is false; run on a GPU cluster, set ray.autoscaling=true where an autoscaler adds GPU "
            f"nodes, or set {key}=0"
        )
