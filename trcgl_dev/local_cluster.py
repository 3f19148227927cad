"""An autoscaling Ray cluster on one machine: Ray's fake multi-node provider with trcgl's node types.

``cluster/local-autoscaling.yaml`` declares the node types (a head that runs no work, GPU workers from 0, a CPU
ingest worker); :func:`up` resolves it (the head's GCS address is only known once a free port is picked), starts
``ray start --head --block`` in a process group of its own with token auth, and records what it started in
``<state-dir>/cluster.json``. The autoscaler then adds and removes local "nodes" (raylets spawned by the autoscaler,
in the same process group) as work asks for their resources. :func:`down` stops exactly those processes: the head,
then what is left of its group. Nothing here runs ``ray stop``, which kills every Ray on the host.

:func:`node_counts` reads the live nodes per node type from the dashboard's State API over HTTP (no ``ray.init``
in the caller, so a test or benchmark can watch a cluster while it also runs a local Ray of its own), and
:func:`trcgl.ray_runtime.check_gpus_feasible` (the production check) reads the same node types.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from trcgl.ray_runtime import CONFIG_ENV, load_cluster_config, node_types
from trcgl.ray_runtime import free_port as _free_port
from trcgl_dev.ray_head import ray_cli as _ray_cli

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parent.parent / "cluster" / "local-autoscaling.yaml"
STATE_FILE = "cluster.json"
MARKER_ENV = "TRCGL_LOCAL_CLUSTER"  # set in the head's environment; every process of the cluster inherits it
# AF_UNIX socket paths are limited to 107 bytes and Ray puts its sockets at <temp>/session_<date>_<pid>/sockets/...
MAX_TEMP_DIR_CHARS = 48
_STARTED: dict[int, subprocess.Popen] = {}  # heads started by this process, reaped by down()


@dataclass
class LocalCluster:
    """What :func:`up` started, as recorded in ``<state_dir>/cluster.json``.

    Attributes:
        state_dir: the folder holding cluster.json, the resolved config and the head's log.
        pid: the ``ray start --head --block`` process, leader of the cluster's process group.
        pgid: that process group.
        gcs_address: ``host:port`` of the GCS: the ``RAY_ADDRESS`` for drivers (``ray.init``, our jobs).
        dashboard_url: ``http://127.0.0.1:PORT``: State API, and the ``--address`` of ``ray job submit``.
        config: the resolved autoscaler config (a YAML path).
        temp_dir: Ray's ``--temp-dir`` for this cluster (sessions and logs of the head and every fake node).
        token_path: the auth token file the cluster and its clients share.
        marker: the value of ``TRCGL_LOCAL_CLUSTER`` in the environment the head started with (inherited by
            its processes; ``/proc/PID/environ`` of those that set a process title no longer shows it).
        started_at: wall-clock time of the start.
        head_create_time: the head process's creation time (psutil), telling it apart from a later process that
            reuses its pid.
    """

    state_dir: str
    pid: int
    pgid: int
    gcs_address: str
    dashboard_url: str
    config: str
    temp_dir: str
    token_path: str
    marker: str
    started_at: float
    head_create_time: float = 0.0

    def env(self) -> dict[str, str]:
        """Environment variables a driver (or ``ray job submit``) needs to use this cluster."""
        return {
            "RAY_ADDRESS": self.gcs_address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.token_path,
            CONFIG_ENV: self.config,
        }

    def token(self) -> str:
        """The auth token (for HTTP calls to the dashboard)."""
        return Path(self.token_path).read_text().strip()


# ------------------------------------------------------------------------------------------------ config


def token_path() -> Path:
    """The token file: ``$RAY_AUTH_TOKEN_PATH`` if set, else Ray's default ``~/.ray/auth_token``."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def ensure_token(path: Path) -> Path:
    """Creates a random token at ``path`` (mode 0600) unless one is there; ``ray start`` will not create one."""
    if not path.exists() or not path.read_text().strip():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(secrets.token_hex(32))
        log.info("wrote a new Ray auth token to %s", path)
    return path


def resolve_config(
    gcs_address: str, template: str | Path = TEMPLATE, idle_timeout_minutes: float | None = None
) -> dict[str, Any]:
    """The template with the head's GCS address filled in (and optionally another idle timeout)."""
    with open(template) as fh:
        config = yaml.safe_load(fh)
    config["provider"]["gcs_address"] = gcs_address
    if idle_timeout_minutes is not None:
        config["idle_timeout_minutes"] = idle_timeout_minutes
    return config


def head_resources(config: dict[str, Any]) -> dict[str, float]:
    """The head node type's declared resources (what its raylet must advertise too)."""
    return dict(node_types(config)[config["head_node_type"]].get("resources") or {})


# ------------------------------------------------------------------------------------------------ state API


def _get(url: str, token: str | None, timeout: float = 10.0) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def _state_list(dashboard_url: str, what: str, token: str | None, detail: bool = True) -> list[dict[str, Any]]:
    """One State API listing (``nodes``, ``tasks``, ...) as a list of dicts."""
    url = f"{dashboard_url.rstrip('/')}/api/v0/{what}?limit=10000&timeout=20&detail={str(detail).lower()}"
    body = _get(url, token, timeout=30.0)
    if not body.get("result", True):
        raise RuntimeError(f"State API {what}: {body.get('msg')}")
    return list(body["data"]["result"]["result"])


def list_nodes(dashboard_url: str, token: str | None = None) -> list[dict[str, Any]]:
    """Every node the GCS knows, alive and dead (``node_id``, ``state``, ``is_head_node``, ``resources_total``,
    ``labels``, ``start_time_ms``, ``end_time_ms``)."""
    return _state_list(dashboard_url, "nodes", token if token is not None else _default_token())


def list_tasks(dashboard_url: str, token: str | None = None) -> list[dict[str, Any]]:
    """Every task and actor task the GCS kept events for (``node_id``, ``start_time_ms``, ``end_time_ms``, ...)."""
    return _state_list(dashboard_url, "tasks", token if token is not None else _default_token())


def _default_token() -> str | None:
    path = token_path()
    return path.read_text().strip() if path.exists() else None


def node_type_of(node: dict[str, Any], config: dict[str, Any] | None = None) -> str:
    """The node type of a State API node: the head type, else the type whose resources match.

    Without a config: ``head``, ``gpu_worker`` (GPU > 0) or ``cpu_worker``.
    """
    resources = node.get("resources_total") or {}
    gpus = float(resources.get("GPU", 0))
    if config is None:
        return "head" if node.get("is_head_node") else ("gpu_worker" if gpus > 0 else "cpu_worker")
    if node.get("is_head_node"):
        return config["head_node_type"]
    workers = {k: v for k, v in node_types(config).items() if k != config["head_node_type"]}
    for name in workers:  # a node started for a type says so in its labels where Ray records it
        if name in (node.get("labels") or {}).values():
            return name
    for name, spec in workers.items():
        declared = spec.get("resources") or {}
        if all(abs(float(resources.get(r, 0)) - float(v)) < 1e-9 for r, v in declared.items() if r in ("CPU", "GPU")):
            return name
    gpu_types = [n for n, s in workers.items() if float((s.get("resources") or {}).get("GPU", 0)) > 0]
    cpu_types = [n for n in workers if n not in gpu_types]
    pool = gpu_types if gpus > 0 else cpu_types
    return pool[0] if pool else ("gpu_worker" if gpus > 0 else "cpu_worker")


def node_counts(
    address: str, config: dict[str, Any] | str | Path | None = None, token: str | None = None
) -> dict[str, int]:
    """Alive nodes per node type, from Ray's State API.

    Args:
        address: the dashboard URL (``http://127.0.0.1:PORT``, what :func:`up` prints), or a state dir / its
            cluster.json.
        config: the cluster config (dict or path) whose node type names to use; default: the cluster's own when
            ``address`` is a state dir, else ``$TRCGL_AUTOSCALER_CONFIG``, else the generic names ``head``,
            ``gpu_worker`` (GPU > 0) and ``cpu_worker``.
        token: the auth token; default: the cluster's, else ``$RAY_AUTH_TOKEN_PATH`` / ``~/.ray/auth_token``.

    Returns:
        ``{node_type: count}`` with every type of the config present (0 where none is alive).
    """
    if not address.startswith(("http://", "https://")):
        cluster = read_state(address)
        address = cluster.dashboard_url
        config = cluster.config if config is None else config
        token = cluster.token() if token is None else token
    if config is None and os.environ.get(CONFIG_ENV):
        config = os.environ[CONFIG_ENV]
    cfg = load_cluster_config(config) if isinstance(config, str | Path) else config
    counts = {name: 0 for name in node_types(cfg)} if cfg else {"head": 0, "gpu_worker": 0, "cpu_worker": 0}
    for node in list_nodes(address, token):
        if node.get("state") == "ALIVE":
            kind = node_type_of(node, cfg)
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def gpu_node_count(counts: dict[str, int], config: dict[str, Any] | None = None) -> int:
    """How many of ``counts`` are GPU nodes (types with GPUs in ``config``; else names containing ``gpu``)."""
    if config:
        gpu = {n for n, s in node_types(config).items() if float((s.get("resources") or {}).get("GPU", 0)) > 0}
        return sum(v for k, v in counts.items() if k in gpu)
    return sum(v for k, v in counts.items() if "gpu" in k)


# ------------------------------------------------------------------------------------------------ up / down


def state_file(state_dir: str | Path) -> Path:
    """``<state_dir>/cluster.json`` (``state_dir`` may also be that file)."""
    path = Path(state_dir)
    return path if path.name == STATE_FILE else path / STATE_FILE


def read_state(state_dir: str | Path) -> LocalCluster:
    """The cluster recorded in ``<state_dir>/cluster.json``."""
    path = state_file(state_dir)
    if not path.exists():
        raise FileNotFoundError(f"no cluster recorded at {path} (run `python -m jobs.cluster_local up` first)")
    return LocalCluster(**json.loads(path.read_text()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _head_log_tail(state_dir: Path, n: int = 40) -> str:
    path = state_dir / "head.log"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no head.log)"


def up(
    state_dir: str | Path,
    template: str | Path = TEMPLATE,
    idle_timeout_minutes: float | None = None,
    timeout_s: float = 120.0,
) -> LocalCluster:
    """Starts the autoscaling head on free ports and waits until its dashboard lists the head node alive.

    Args:
        state_dir: where cluster.json, the resolved config and head.log go (and Ray's temp dir when the path is
            short enough for Ray's sockets; else a short folder under the system temp dir, recorded).
        template: the cluster config template.
        idle_timeout_minutes: overrides the template's idle timeout.
        timeout_s: how long to wait for the head.

    Returns:
        The started cluster (also written to ``<state_dir>/cluster.json``).

    Raises:
        RuntimeError: a cluster of this state dir is still running, or the head did not come up in time.
    """
    from ray.util import get_node_ip_address

    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    if state_file(state).exists():
        old = read_state(state)
        if _alive(old.pid):
            raise RuntimeError(f"a cluster of {state} is running (pid {old.pid}); run `down` first")
    token = ensure_token(token_path())
    ip = get_node_ip_address()
    gcs_port, dashboard_port = _free_port(), _free_port()
    gcs_address = f"{ip}:{gcs_port}"
    config = resolve_config(gcs_address, template, idle_timeout_minutes)
    config_path = state / "autoscaling.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    temp_dir = state / "ray"
    if len(str(temp_dir)) > MAX_TEMP_DIR_CHARS:
        temp_dir = Path(tempfile.mkdtemp(prefix="trcgl-ray-"))
    temp_dir.mkdir(parents=True, exist_ok=True)
    head = head_resources(config)
    marker = uuid.uuid4().hex
    cmd = [
        *_ray_cli(),
        "start",
        "--head",
        "--block",
        f"--autoscaling-config={config_path}",
        f"--port={gcs_port}",
        f"--dashboard-port={dashboard_port}",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--num-cpus={int(head.get('CPU', 0))}",
        f"--num-gpus={int(head.get('GPU', 0))}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(
        {
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_DISABLE_USAGE_STATS": "1",
            # SIGTERM to `ray start --block` otherwise first drains the node for up to 30 s
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            CONFIG_ENV: str(config_path),  # drivers of `ray job submit` run under the head and inherit it
            MARKER_ENV: marker,
        }
    )
    log.info("starting the autoscaling head: %s", " ".join(cmd))
    with open(state / "head.log", "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _STARTED[proc.pid] = proc
    import psutil

    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        created = 0.0
    cluster = LocalCluster(
        state_dir=str(state),
        pid=proc.pid,
        pgid=os.getpgid(proc.pid),
        gcs_address=gcs_address,
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        config=str(config_path),
        temp_dir=str(temp_dir),
        token_path=str(token),
        marker=marker,
        started_at=time.time(),
        head_create_time=created,
    )
    state_file(state).write_text(json.dumps(asdict(cluster), indent=2) + "\n")
    deadline = time.monotonic() + timeout_s
    secret = cluster.token()
    while True:
        if proc.poll() is not None:
            down(state)
            raise RuntimeError(f"the head exited with {proc.returncode}:\n{_head_log_tail(state)}")
        try:
            if any(
                n.get("is_head_node") and n.get("state") == "ALIVE" for n in list_nodes(cluster.dashboard_url, secret)
            ):
                break
        except (OSError, urllib.error.URLError, KeyError, ValueError, RuntimeError):
            pass
        if time.monotonic() > deadline:
            down(state)
            raise RuntimeError(f"the head did not answer within {timeout_s:.0f} s:\n{_head_log_tail(state)}")
        time.sleep(0.5)
    log.info(
        "cluster up in %.1f s: RAY_ADDRESS=%s dashboard %s",
        time.time() - cluster.started_at,
        cluster.gcs_address,
        cluster.dashboard_url,
    )
    return cluster


def _group_is_ours(cluster: LocalCluster) -> bool:
    """Whether processes in process group ``cluster.pgid`` are this cluster's.

    While the head (the group's leader) lives, it is ours when its creation time matches. Once it is gone, the
    kernel does not reuse its pid while the group has members, so any member left is one of ours.
    """
    import psutil

    try:
        leader = psutil.Process(cluster.pgid)
        return abs(leader.create_time() - cluster.head_create_time) < 1.0 and leader.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def cluster_processes(cluster: LocalCluster) -> list[int]:
    """Pids of live processes of this cluster: the members of the head's process group (GCS, dashboard, raylets,
    the autoscaler, the fake nodes it spawns and their workers: nothing in Ray starts a session of its own), and any
    process still showing the cluster's marker in its environment."""
    import psutil

    me = os.getpid()
    group = cluster.pgid if _group_is_ours(cluster) else None
    found = set()
    for proc in psutil.process_iter(["pid"]):
        pid = proc.info["pid"]
        if pid == me:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if (group is not None and os.getpgid(pid) == group) or proc.environ().get(MARKER_ENV) == cluster.marker:
                found.add(pid)
        except (psutil.Error, OSError):
            continue
    return sorted(found)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _describe(pids: list[int]) -> str:
    import psutil

    names = []
    for pid in pids:
        try:
            names.append(f"{pid} {psutil.Process(pid).name()}")
        except psutil.Error:
            names.append(str(pid))
    return ", ".join(names)


def _reap(cluster: LocalCluster) -> None:
    """Collects the head's exit status when this process started it (else it lingers as our zombie)."""
    head = _STARTED.get(cluster.pid)
    if head is not None and head.poll() is not None:
        _STARTED.pop(cluster.pid, None)


def _wait_gone(cluster: LocalCluster, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    _reap(cluster)
    left = cluster_processes(cluster)
    while left and time.monotonic() < deadline:
        time.sleep(0.3)
        _reap(cluster)
        left = cluster_processes(cluster)
    return left


def down(state_dir: str | Path, timeout_s: float = 30.0) -> list[int]:
    """Stops the cluster of ``state_dir``: SIGTERM to its whole process group (the head's ``ray start --block``
    stops the processes it started, node draining off; the fake nodes the autoscaler spawned stop with it), then
    SIGTERM once more and at last SIGKILL to whatever of it is left.

    Only processes in the head's process group (while it is provably this cluster's, see :func:`_group_is_ours`)
    or carrying this cluster's marker are signalled. Calling it again on a stopped cluster does nothing.

    Returns:
        Pids that had to be killed with SIGKILL (empty on a clean stop).

    Raises:
        RuntimeError: processes of the cluster survived SIGKILL.
    """
    cluster = read_state(state_dir)
    left = cluster_processes(cluster)
    if left:  # the whole group at once: fake nodes' raylets stop cleanly only while the GCS still answers
        if _group_is_ours(cluster):
            try:
                os.killpg(cluster.pgid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        _signal(left, signal.SIGTERM)
        left = _wait_gone(cluster, timeout_s * 0.5)
    if left:
        log.info("still running after SIGTERM: %s; once more", _describe(left))
        _signal(left, signal.SIGTERM)
        left = _wait_gone(cluster, timeout_s * 0.3)
    killed: list[int] = []
    if left:
        log.warning("killing what ignored SIGTERM: %s", _describe(left))
        _signal(left, signal.SIGKILL)
        killed = left
        left = _wait_gone(cluster, timeout_s * 0.2)
    if left:
        raise RuntimeError(f"processes of the cluster survived SIGKILL: {left}")
    return killed


def leftover_processes(state_dir: str | Path) -> list[str]:
    """Descriptions of live processes that belong to the cluster of ``state_dir`` or mention its temp dir."""
    import psutil

    cluster = read_state(state_dir)
    out = [f"{pid} (group/marker)" for pid in cluster_processes(cluster)]
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and any(cluster.temp_dir in a for a in proc.info["cmdline"] or []):
                out.append(f"{proc.info['pid']} {' '.join(proc.info['cmdline'])[:200]}")
        except psutil.Error:
            continue
    return out


def status_text(state_dir: str | Path) -> str:
    """The cluster's nodes (type, state, resources) and the autoscaler's own ``ray status``."""
    cluster = read_state(state_dir)
    config = load_cluster_config(cluster.config)
    lines = [
        f"RAY_ADDRESS={cluster.gcs_address}",
        f"dashboard   {cluster.dashboard_url}",
        f"head pid    {cluster.pid} ({'running' if _alive(cluster.pid) else 'not running'})",
        "",
        f"{'node type':18} {'state':6} {'CPU':>4} {'GPU':>4}  node id",
    ]
    for node in list_nodes(cluster.dashboard_url, cluster.token()):
        res = node.get("resources_total") or {}
        kind, state = node_type_of(node, config), node.get("state", "?")
        lines.append(f"{kind:18} {state:6} {res.get('CPU', 0):>4g} {res.get('GPU', 0):>4g}  {node.get('node_id', '')}")
    counts = node_counts(cluster.dashboard_url, config, cluster.token())
    lines += ["", "alive: " + ", ".join(f"{k}={v}" for k, v in counts.items()), ""]
    env = {**os.environ, **cluster.env()}
    result = subprocess.run(
        [*_ray_cli(), "status", f"--address={cluster.gcs_address}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines.append(result.stdout.strip() or result.stderr.strip())
    return "\n".join(lines)


def remove_state(state_dir: str | Path) -> None:
    """Deletes cluster.json (after :func:`down`), and Ray's temp dir when it lives outside the state dir."""
    cluster = read_state(state_dir)
    if not Path(cluster.temp_dir).is_relative_to(cluster.state_dir):
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    state_file(state_dir).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ watching a job


@dataclass
class Watch:
    """A job run as a subprocess while the cluster's nodes were polled.

    Attributes:
        rc: the job's exit code.
        started: wall-clock start of the job.
        ended: wall-clock end of the job.
        samples: ``(wall time, {node_type: alive count})`` every poll.
        log: the job's stdout and stderr together.
    """

    rc: int
    started: float
    ended: float
    samples: list[tuple[float, dict[str, int]]]
    log: str

    def max_count(self, kind: str) -> int:
        """The most nodes of one type seen alive at once."""
        return max((counts.get(kind, 0) for _, counts in self.samples), default=0)


def run_watched(
    cmd: list[str],
    cluster: LocalCluster,
    log_path: str | Path,
    timeout_s: float = 600.0,
    poll_s: float = 1.0,
    cwd: str | Path | None = None,
) -> Watch:
    """Runs ``cmd`` against ``cluster`` (its env added to ours) and polls :func:`node_counts` until it exits.

    Raises:
        TimeoutError: the job ran longer than ``timeout_s`` (it is killed first).
    """
    config = load_cluster_config(cluster.config)
    token = cluster.token()
    env = {**os.environ, **cluster.env(), "PYTHONUNBUFFERED": "1"}
    samples: list[tuple[float, dict[str, int]]] = []
    started = time.time()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        while proc.poll() is None:
            if time.time() - started > timeout_s:
                raise TimeoutError(f"{' '.join(cmd)} ran longer than {timeout_s:.0f} s (log: {log_path})")
            try:
                samples.append((time.time(), node_counts(cluster.dashboard_url, config, token)))
            except (OSError, urllib.error.URLError, KeyError, ValueError, RuntimeError) as exc:
                log.debug("node poll failed: %s", exc)
            time.sleep(poll_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ended = time.time()
    return Watch(proc.returncode, started, ended, samples, Path(log_path).read_text(errors="replace"))


def wait_for_gpu_nodes(
    cluster: LocalCluster, count: int, timeout_s: float, poll_s: float = 1.0
) -> tuple[float | None, list[tuple[float, dict[str, int]]]]:
    """Polls until exactly ``count`` GPU nodes are alive; returns (wall time reached or None, samples)."""
    config = load_cluster_config(cluster.config)
    token = cluster.token()
    samples: list[tuple[float, dict[str, int]]] = []
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        counts = node_counts(cluster.dashboard_url, config, token)
        samples.append((time.time(), counts))
        if gpu_node_count(counts, config) == count:
            return samples[-1][0], samples
        time.sleep(poll_s)
    return None, samples
