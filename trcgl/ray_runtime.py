"""Connecting a job to Ray (a cluster when one is named by ``ray.address`` or ``$RAY_ADDRESS``, else a local Ray), the
checks that fail fast where Ray would wait forever (GPUs no node has or can get, CPUs left to Ray Data), and the
actor pool that the part-writing jobs (generate, predict) share."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import yaml

from trcgl.config import Config, ConfigError

log = logging.getLogger(__name__)

CONFIG_ENV = "TRCGL_AUTOSCALER_CONFIG"  # path of the autoscaler's cluster config, for check_gpus_feasible
LAUNCHER_CONFIG = Path("~/ray_bootstrap_config.yaml")  # what the cluster launcher leaves on a real head node


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
    # Ray Data's per-operator progress bars drown the stage progress in a batch job's log (set it to 0 to see them);
    # local workers inherit the variable, cluster nodes get it from cluster/runtime_env.yaml
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        log.info("starting a local Ray (num_cpus=%s)", cfg.ray.num_cpus)
        for attempt in (1, 2):
            try:
                # address="local": always a new instance, never a stray cluster found on the host
                ray.init(address="local", num_cpus=cfg.ray.num_cpus, log_to_driver=True, **local_dashboard())
                break
            except Exception as exc:
                # Ray waits a fixed 30 s for its raylet to register, which a heavily loaded machine can exceed
                if attempt == 2 or "timed out during startup" not in str(exc):
                    raise
                log.warning("the local Ray did not come up in time (%s): starting it once more", exc)
                ray.shutdown()
    return True


# Credentials Ray Tune copies from the driver's environment into every trial actor's runtime_env
# (ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE). The runtime env agent logs each runtime_env it creates, so
# the copies land in plain text in runtime_env_agent.log on every node, which the dashboard serves; caught by the
# security scenario (trcgl_dev/faults/security.py) on the pipeline job.
TUNE_CREDENTIAL_VARS = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"}
)


def keep_credentials_out_of_tune() -> None:
    """Stops Ray Tune from copying AWS credentials into its trial actors' runtime_env (and so into Ray's logs).

    Nothing is lost: trial actors are Ray workers, which get the node's environment (the local Ray inherits the
    driver's; a cluster node has its instance role) and the job's runtime_env, like every Ray Data and Ray Train
    worker of the same job.
    """
    # lazy: a private module of Ray Tune, looked up where a sweep or study is about to start, not on every import
    from ray.tune.execution import class_cache

    current = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    if not isinstance(current, (set, frozenset)):
        log.warning("ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE not found: Tune may log AWS credentials")
        return
    class_cache.ENV_VARS_TO_PROPAGATE = set(current) - TUNE_CREDENTIAL_VARS


def connected_address() -> str | None:
    """The GCS address of the Ray this process is connected to, or None when it is not connected."""
    return ray.get_runtime_context().gcs_address if ray.is_initialized() else None


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_dashboard() -> dict:
    """``ray.init`` arguments for a local Ray's dashboard: on loopback, on a free port.

    The dashboard is not optional: Ray Train's placement-group cleaner asks the State API (served by the dashboard)
    whether a training controller is still alive. Without it, a training run killed from outside (a sweep trial
    stopped early by ASHA) leaks its placement group, and the next trial waits forever for the CPUs it holds.
    """
    return {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port()}


def check_gpus(per_worker: float, autoscaling: bool, key: str) -> None:
    """Fails fast when work asks for GPUs that no node has and no autoscaler can add.

    A request Ray cannot place pends forever with no error; with ``ray.autoscaling`` on, the
    autoscaler is trusted to add GPU nodes and the job waits for them.

    Raises:
        ConfigError: naming the config key, the request and what the cluster has.
    """
    if per_worker <= 0:
        return
    if autoscaling:
        check_gpus_feasible(per_worker, key)  # no autoscaler node type can ever hold one worker: fail now
        return
    have = ray.cluster_resources().get("GPU", 0.0)
    if have < per_worker:
        raise ConfigError(
            f"config key {key!r} asks for {per_worker} GPU(s) per worker but the Ray cluster has {have:g} GPUs and "
            "ray.autoscaling is false; run on a GPU cluster, set ray.autoscaling=true where an autoscaler adds GPU "
            f"nodes, or set {key}=0"
        )


def check_cpu_budget(cfg: Config, concurrent_runs: int = 1, driver_cpus: float = 0.0) -> None:
    """Fails fast when training would hold so many CPUs that Ray Data's tasks could never be scheduled.

    Train workers (and sweep trial drivers) that hold every CPU leave Ray Data's read tasks none, and training then
    hangs forever at 0 rows/s (Ray Data reports the operator as backpressured by its resource budget). With
    ``ray.autoscaling`` on, new nodes bring CPUs, so nothing is checked.

    Raises:
        ConfigError: naming the keys to change and the arithmetic.
    """
    if cfg.ray.autoscaling:
        return
    total = ray.cluster_resources().get("CPU", 0.0)
    per_run = driver_cpus + cfg.train.num_workers * cfg.train.cpus_per_worker
    held = concurrent_runs * per_run
    need = cfg.ray.cpus_per_task
    if total - held < need - 1e-9:
        raise ConfigError(
            f"{concurrent_runs} run(s) x ({driver_cpus:g} driver + {cfg.train.num_workers} workers x "
            f"{cfg.train.cpus_per_worker:g} CPU) hold {held:g} of the cluster's {total:g} CPUs, leaving "
            f"{total - held:g}, less than the {need:g} CPU a Ray Data task needs (ray.cpus_per_task): training "
            "would wait forever for data. Lower train.cpus_per_worker, train.num_workers or "
            "sweep.max_concurrent_trials, or add CPUs"
        )


def _fits(have: dict[str, Any], need: dict[str, float]) -> bool:
    return all(float(have.get(k, 0)) + 1e-9 >= v for k, v in need.items() if v > 0)


def check_spread(strategy: str, workers: int, per_worker: dict[str, float], autoscaling: bool, key: str) -> None:
    """Fails fast when a STRICT_SPREAD placement (one worker per node) needs more nodes than there can be.

    Ray places such a group only on ``workers`` distinct nodes that each hold one worker; with fewer it pends forever
    with no error. Without an autoscaler the nodes alive now count; with one, the node types of its config
    (:func:`autoscaler_config_path`: ``max_workers`` of each worker type that holds a worker, and the head if it
    does); where no config is visible the autoscaler is trusted. Other strategies place anywhere the resources are.

    Args:
        strategy: the placement strategy (``train.placement_strategy``).
        workers: workers in the group.
        per_worker: one worker's resources (``{"CPU": ..., "GPU": ...}``).
        autoscaling: ``ray.autoscaling``.
        key: the config key that asked, named in the error.

    Raises:
        ConfigError: naming the key, the workers and the nodes that could hold one.
    """
    if strategy != "STRICT_SPREAD" or workers <= 1:
        return
    if not autoscaling:
        nodes = sum(1 for n in ray.nodes() if n.get("Alive") and _fits(n.get("Resources") or {}, per_worker))
        where = "alive nodes of this cluster hold one worker each and ray.autoscaling is false"
    else:
        path = autoscaler_config_path()
        if path is None:
            return
        config = load_cluster_config(path)
        nodes = sum(
            1 if name == config.get("head_node_type") else int(spec.get("max_workers", 0))
            for name, spec in node_types(config).items()
            if _fits(spec.get("resources") or {}, per_worker)
        )
        where = f"nodes of the autoscaler's node types (config {path}) can hold one worker each"
    if nodes < workers:
        raise ConfigError(
            f"config key {key!r} is STRICT_SPREAD (one worker per node) for {workers} workers of {per_worker}, but "
            f"only {nodes} {where}: the workers would wait forever. Use SPREAD or PACK, fewer workers, or more nodes"
        )


def node_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``available_node_types`` of a cluster config."""
    return dict(config.get("available_node_types") or {})


def autoscaler_config_path() -> Path | None:
    """The autoscaler's cluster config visible to this process, if any.

    ``$TRCGL_AUTOSCALER_CONFIG`` (set by :meth:`LocalCluster.env`), else ``~/ray_bootstrap_config.yaml``, the file
    the Ray cluster launcher leaves on a head node (where ``ray job submit`` runs job drivers).
    """
    named = os.environ.get(CONFIG_ENV)
    if named:
        return Path(named).expanduser()
    launcher = LAUNCHER_CONFIG.expanduser()
    return launcher if launcher.exists() else None


def load_cluster_config(path: str | Path) -> dict[str, Any]:
    """A cluster config from YAML (or JSON, which YAML reads too)."""
    with open(path) as fh:
        return yaml.safe_load(fh)


def largest_gpu_node_type(config: dict[str, Any]) -> tuple[str | None, float]:
    """The node type with the most GPUs that can exist (the head, or a worker type with ``max_workers`` > 0)."""
    best: tuple[str | None, float] = (None, 0.0)
    for name, spec in node_types(config).items():
        gpus = float((spec.get("resources") or {}).get("GPU", 0))
        can_exist = name == config.get("head_node_type") or int(spec.get("max_workers", 0)) > 0
        if can_exist and gpus > best[1]:
            best = (name, gpus)
    return best


def check_gpus_feasible(per_worker: float, key: str, config_path: str | Path | None = None) -> None:
    """Fails fast when one worker asks for more GPUs than any node type of the autoscaler will ever have.

    With an autoscaler, a GPU request the cluster cannot place *now* is fine (a node will be added), but one that
    no node type can hold pends forever with no error. The node types come from the autoscaler's cluster config
    (``config_path``, else :func:`autoscaler_config_path`); where none is visible, nothing is checked.

    Args:
        per_worker: GPUs asked for by one worker / actor / trial.
        key: the config key that asked, named in the error.
        config_path: the cluster config to read instead of the one found in the environment.

    Raises:
        ConfigError: naming the key, the request and the largest GPU node type.
    """
    if per_worker <= 0:
        return
    path = Path(config_path) if config_path is not None else autoscaler_config_path()
    if path is None:
        log.info(
            "no autoscaler config visible (%s unset): %s=%s not checked against node types", CONFIG_ENV, key, per_worker
        )
        return
    config = load_cluster_config(path)
    name, gpus = largest_gpu_node_type(config)
    if per_worker > gpus + 1e-9:
        largest = f"the largest GPU node type, {name!r}, has {gpus:g}" if name else "no node type has any"
        raise ConfigError(
            f"config key {key!r} asks for {per_worker:g} GPU(s) per worker but {largest} GPU(s) (autoscaler config "
            f"{path}): the autoscaler can never add a node that holds one worker and the job would wait forever. "
            f"Set {key} to at most {gpus:g}, or add a node type with more GPUs"
        )


def map_parts(
    fn_class: type,
    payloads: list[str],
    constructor_kwargs: dict[str, Any],
    actors: tuple[int, int],
    num_gpus: float,
    num_cpus: float,
) -> pd.DataFrame:
    """Hands each payload (one unit of output, e.g. a Parquet part) to a callable class on a Ray Data actor pool.

    Each payload is one block and one batch, so an actor handles one unit at a time and a pool of any size makes the
    same units. The class writes its outputs itself and returns a small summary frame per batch.

    Args:
        fn_class: the callable class; called with a pandas batch of one row, column ``payload``.
        payloads: one string per unit.
        constructor_kwargs: the class's constructor arguments (each actor builds one instance).
        actors: (min, max) pool size.
        num_gpus: GPUs per actor.
        num_cpus: CPUs per actor.

    Returns:
        The summaries of every unit, concatenated.
    """
    blocks = [pd.DataFrame({"payload": [p]}) for p in payloads]  # one block per unit
    return (
        ray.data.from_pandas(blocks)
        .map_batches(
            fn_class,
            fn_constructor_kwargs=constructor_kwargs,
            compute=ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1]),
            batch_size=1,
            batch_format="pandas",
            num_gpus=num_gpus,
            num_cpus=num_cpus,
        )
        .to_pandas()
    )
