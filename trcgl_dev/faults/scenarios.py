"""Fault and bad-input scenarios run against real parts, each returning the figures it measured as plain JSON values.

Tests assert on the figures; a benchmark can record them. Nothing here is mocked:

* :func:`s3_outage` puts a :class:`~trcgl_dev.faults.proxy.TcpProxy` in front of a real S3-compatible endpoint (moto in
  tests), cuts it for a while just before one :class:`~trcgl.storage.Storage` operation (read, write, or a checkpoint
  upload published with a manifest) and reports whether the configured retries rode it out, how long it took, and
  whether a failure was loud, named the endpoint and left nothing a later stage would take as complete.
* :func:`security` starts a token-auth Ray head (:func:`token_head`) with a fake AWS secret in its environment,
  checks that calls without the token are refused (:func:`token_auth_refusal`), runs one small real job on it
  (:func:`run_prepare_job`) and scans everything that job left (saved configs, job logs, the Jobs API, Ray's session
  logs) for the secret (:func:`scan_for_secrets`). :func:`cluster_start_commands_without_token` checks every
  ``ray start`` in ``cluster/*.yaml`` (``tests/test_cluster_files.py`` checks each file's own auth set-up in detail).
* :func:`bad_configs` feeds bad settings to the real entry points (config loading, the job CLI, the storage
  writability probe, the GPU checks) and records the error each gives before any work starts.

Processes started here are stopped by pid / process group; nothing runs ``ray stop``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets as pysecrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from trcgl.config import StorageConfig
from trcgl.errors import StorageError
from trcgl.storage import Storage
from trcgl_dev.faults.proxy import TcpProxy

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
CLUSTER_DIR = REPO / "cluster"
OPS = ("read", "write", "checkpoint")
CHECKPOINT_FILES = {"model.pt": 384 * 1024, "optimizer.pt": 192 * 1024, "state.json": 0}  # name -> random bytes
_MAX_ERROR_CHARS = 600


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


# ---------------------------------------------------------------------------------------------------- S3 outage


def _make_checkpoint(folder: Path) -> dict[str, bytes]:
    """A small local checkpoint folder (weights, optimizer state, a JSON state) like the trainer writes."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    for name, size in CHECKPOINT_FILES.items():
        data = os.urandom(size) if size else json.dumps({"epoch": 1, "step": 40, "val_mAP": 0.31}).encode()
        (folder / name).write_bytes(data)
        files[name] = data
    return files


def _upload_checkpoint(storage: Storage, local: Path, rel_dir: str) -> None:
    """Uploads every file of ``local`` under ``rel_dir``, then publishes the manifest last (as the stages do)."""
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.write_bytes(f"{rel_dir}/{path.relative_to(local).as_posix()}", path.read_bytes())
    storage.publish(rel_dir, {"stage": "checkpoint", "epoch": 1})


def s3_outage(
    endpoint_url: str,
    bucket: str,
    outage_s: float,
    op: str,
    workdir: Path,
    client: str = "s3fs",
    storage_cfg: StorageConfig | None = None,
) -> dict[str, Any]:
    """One storage operation through an endpoint that is unreachable for ``outage_s`` seconds from just before it.

    The operation runs through a :class:`TcpProxy` in front of ``endpoint_url`` with the project's
    :class:`StorageConfig` (its retry defaults unless ``storage_cfg`` says otherwise); setting up and checking the
    result go to the endpoint directly.

    Args:
        endpoint_url: the real S3-compatible endpoint, ``http://host:port``.
        bucket: an existing bucket on it.
        outage_s: how long the endpoint is cut.
        op: ``"read"`` (read_bytes of an existing object), ``"write"`` (write_bytes) or ``"checkpoint"`` (a folder
            of files uploaded one by one, then published with :meth:`Storage.publish`).
        workdir: local scratch (the checkpoint folder is built here).
        client: ``storage.s3_client`` for the operation: ``"s3fs"`` or ``"pyarrow"`` (pyarrow's client serves
            reads and listings; writes always go through s3fs).
        storage_cfg: settings to start from (endpoint and client are set here); default: ``StorageConfig()``.

    Returns:
        ``op``, ``client``, ``outage_s``, ``retries`` and ``connect_timeout_s`` used, ``survived`` (the operation
        returned and its result checks out), ``seconds`` (the operation's wall time), ``error`` (type and message,
        or None), ``loud`` (a :class:`StorageError`), ``error_names_endpoint`` (the proxy's host:port is in the
        message), ``endpoint_back_before_error`` (the outage had already ended when the error came),
        ``partial_published`` (a later stage could take an incomplete output as complete: a manifest although the
        upload failed, or a manifest listing files that are missing or of another size; for a write, an object that
        is not the whole new value), ``later_stage_sees`` (checkpoint: "complete" or "unfinished"),
        ``connections_forwarded`` and ``connections_reset``.

    Raises:
        ValueError: for an unknown ``op``.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    target = urlparse(endpoint_url)
    if not target.hostname or not target.port:
        raise ValueError(f"endpoint_url {endpoint_url!r} must look like http://host:port")
    base = StorageConfig() if storage_cfg is None else storage_cfg
    prefix = f"faults/outage-{op}-{outage_s:g}s-{uuid.uuid4().hex[:8]}"
    root = f"s3://{bucket}/{prefix}"
    direct = Storage(root, StorageConfig(endpoint_url=endpoint_url, region=base.region))
    payload = os.urandom(256 * 1024)
    checkpoint: dict[str, bytes] = {}
    local = Path(workdir) / f"checkpoint-{uuid.uuid4().hex[:8]}"
    if op == "read":
        direct.write_bytes("object.bin", payload)
    elif op == "checkpoint":
        checkpoint = _make_checkpoint(local)

    figures: dict[str, Any] = {"op": op, "client": client, "outage_s": outage_s}
    error: BaseException | None = None
    result: bytes | None = None
    with TcpProxy(target.hostname, target.port) as proxy:
        cfg = StorageConfig(
            root=root,
            endpoint_url=proxy.url,
            region=base.region,
            retries=base.retries,
            s3_client=client,
            connect_timeout_s=base.connect_timeout_s,
        )
        figures.update(retries=cfg.retries, connect_timeout_s=cfg.connect_timeout_s)
        storage = Storage(root, cfg)
        storage.exists("warm-up")  # the client is built and has talked to the endpoint before the cut
        timer = proxy.outage(outage_s)
        started = time.monotonic()
        try:
            if op == "read":
                result = storage.read_bytes("object.bin")
            elif op == "write":
                storage.write_bytes("object.bin", payload)
            else:
                _upload_checkpoint(storage, local, "checkpoint")
        except Exception as exc:  # the figure is the point: record what the caller would have seen
            error = exc
        figures["seconds"] = round(time.monotonic() - started, 3)
        figures["endpoint_back_before_error"] = error is not None and not timer.is_alive()
        figures["connections_forwarded"] = proxy.accepted
        figures["connections_reset"] = proxy.dropped
        endpoint = f"{proxy.listen_host}:{proxy.port}"

    figures["error"] = None if error is None else _error_text(error)
    figures["loud"] = isinstance(error, StorageError)
    figures["error_names_endpoint"] = error is not None and endpoint in str(error)
    ok = error is None
    partial = False
    if op == "read":
        ok = ok and result == payload
    elif op == "write":
        stored = direct.read_bytes("object.bin") if direct.exists("object.bin") else None
        ok = ok and stored == payload
        partial = stored is not None and stored != payload
    else:
        manifest = direct.manifest("checkpoint")
        figures["later_stage_sees"] = "unfinished" if manifest is None else "complete"
        if manifest is not None:  # complete only if it lists exactly the files, each there whole
            listed = manifest.get("files", {})
            intact = set(listed) == set(checkpoint) and all(
                listed[name] == len(data)
                and direct.exists(f"checkpoint/{name}")
                and direct.read_bytes(f"checkpoint/{name}") == data
                for name, data in checkpoint.items()
            )
            partial = error is not None or not intact
        ok = ok and manifest is not None and not partial
    figures["survived"] = ok
    figures["partial_published"] = partial
    shutil.rmtree(local, ignore_errors=True)
    log.info("S3 outage scenario: %s", figures)
    return figures


def s3_outage_matrix(
    endpoint_url: str,
    bucket: str,
    cases: Sequence[tuple[str, float]],
    workdir: Path,
    client: str = "s3fs",
    max_parallel: int = 8,
) -> list[dict[str, Any]]:
    """Runs :func:`s3_outage` for each ``(op, outage_s)`` at once (each case has its own proxy and prefix).

    Returns:
        The figures of each case, in the order of ``cases``.
    """
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(cases)))) as pool:
        futures = [pool.submit(s3_outage, endpoint_url, bucket, s, op, workdir, client) for op, s in cases]
        return [f.result() for f in futures]


# ---------------------------------------------------------------------------------------------------- security


def scan_for_secrets(paths: Iterable[Path], secrets: Sequence[str]) -> list[str]:
    """Every regular file under ``paths`` (files or folders, walked without following links) holding a secret.

    Args:
        paths: files and folders to scan; missing ones are skipped.
        secrets: literal strings to look for (bytes-wise, as UTF-8).

    Returns:
        Sorted paths (as strings) of the files that contain at least one of ``secrets``.
    """
    needles = [s.encode() for s in secrets if s]
    if not needles:
        return []
    found: set[str] = set()
    for root in paths:
        root = Path(root)
        if root.is_symlink() or not root.exists():
            continue
        files = [root] if root.is_file() else [Path(d) / f for d, _, names in os.walk(root) for f in names]
        for path in files:
            try:
                if path.is_symlink() or not path.is_file():  # sockets, fifos, links
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if any(n in data for n in needles):
                found.add(str(path))
    return sorted(found)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ray_cli() -> list[str]:
    beside = Path(sys.executable).parent / "ray"
    return [str(beside)] if beside.exists() else ["ray"]


def _base_env() -> dict[str, str]:
    """This process's environment without anything that would point a child at another Ray or token."""
    drop = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")
    return {k: v for k, v in os.environ.items() if k not in drop}


@dataclass
class TokenHead:
    """A running token-auth head started by :func:`token_head`.

    Attributes:
        address: the dashboard URL (``ray job submit --address``, the Jobs REST API).
        pid: the ``ray start --head --block`` process, leader of the head's process group.
        temp_dir: Ray's ``--temp-dir`` (session logs of the head and of every job).
        token_path: the token file (0600) the head and its authorised clients use.
        home: the HOME of the head and of its clients (so ``~/.ray`` is never the user's).
        log_path: the head's stdout and stderr.
        env: the head's environment; with the token path, what an authorised client uses.
    """

    address: str
    pid: int
    temp_dir: Path
    token_path: Path
    home: Path
    log_path: Path
    env: dict[str, str]

    def token(self) -> str:
        return self.token_path.read_text().strip()


def _http(url: str, token: str | None = None, timeout: float = 10.0) -> tuple[int, str]:
    """(HTTP status, body) of a GET, with a bearer token when given; connection errors are status 0."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, urllib.error.URLError) as exc:
        return 0, str(exc)


def _stop_group(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """SIGTERM to the head (``ray start --block`` stops what it started), then SIGKILL to what is left of its process
    group. The head is reaped here: a zombie leader would keep the group looking alive."""
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            break
        time.sleep(0.3)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
        log.warning("killed what was left of the head's process group %d after %.0f s", proc.pid, timeout_s)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.error("the head (pid %d) survived SIGKILL", proc.pid)


@contextmanager
def token_head(
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    num_cpus: int = 2,
    timeout_s: float = 120.0,
    keep_temp_dir: bool = False,
) -> Iterator[TokenHead]:
    """A ``ray start --head --block`` with ``RAY_AUTH_MODE=token`` on free loopback ports, its own token, temp dir
    and HOME, in a process group of its own; stopped by pid / process group on exit (never ``ray stop``).

    Args:
        workdir: where the token, the HOME and the head's log go.
        extra_env: more environment for the head (and so for every job it runs).
        num_cpus: CPUs the head advertises.
        timeout_s: how long to wait until the Jobs API answers.
        keep_temp_dir: leave Ray's temp dir (session logs) in place after the stop, for the caller to scan and
            remove; otherwise it is removed.

    Yields:
        The running head.
    """
    from trcgl_dev.local_cluster import ensure_token

    workdir = Path(workdir)
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    token = ensure_token(workdir / "auth_token")
    temp_dir = Path(tempfile.mkdtemp(prefix="trcgl-fh-", dir="/tmp"))  # Unix socket paths must stay short
    dash = _free_port()
    env = {
        **_base_env(),
        "HOME": str(home),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_DISABLE_USAGE_STATS": "1",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM stops it at once
        **(extra_env or {}),
    }
    cmd = [
        *_ray_cli(), "start", "--head", "--block", f"--port={_free_port()}", f"--num-cpus={num_cpus}",
        "--num-gpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        "--disable-usage-stats", f"--temp-dir={temp_dir}",
        # every port free, not Ray's defaults, which another Ray on this host may hold
        f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",
    ]  # fmt: skip
    log_path = workdir / "head.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    head = TokenHead(f"http://127.0.0.1:{dash}", proc.pid, temp_dir, token, home, log_path, env)
    try:
        deadline = time.monotonic() + timeout_s
        while _http(f"{head.address}/api/jobs/", head.token())[0] != 200:
            if proc.poll() is not None:
                raise RuntimeError(f"the token head exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the token head did not answer within {timeout_s:.0f} s")
            time.sleep(0.5)
        log.info("token head up at %s (pid %d)", head.address, proc.pid)
        yield head
    finally:
        stopping = time.monotonic()
        _stop_group(proc)
        log.info("token head stopped in %.1f s", time.monotonic() - stopping)
        if not keep_temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _group_environ_holds(pgid: int, secret: str) -> bool | None:
    """Whether a live process of process group ``pgid`` has ``secret`` in its environment (None: no /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid and secret.encode() in (entry / "environ").read_bytes():
                return True
        except OSError:
            continue
    return False


def _submit(
    head: TokenHead, env: dict[str, str], entrypoint: list[str], extra: Sequence[str] = (), timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    cmd = [*_ray_cli(), "job", "submit", "--address", head.address, *extra, "--", *entrypoint]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)


def _jobs(head: TokenHead) -> list[dict[str, Any]]:
    status, body = _http(f"{head.address}/api/jobs/", head.token())
    if status != 200:
        raise RuntimeError(f"GET /api/jobs/ with the token gave {status}: {body[:300]}")
    return json.loads(body)


def token_auth_refusal(head: TokenHead) -> dict[str, Any]:
    """Calls the head's Jobs API without its token and with a wrong one, over HTTP and with ``ray job submit``.

    Returns:
        ``http_no_token``, ``http_wrong_token``, ``http_with_token`` (status codes of ``GET /api/jobs/``);
        ``submit_no_token`` and ``submit_wrong_token`` (``refused``: the CLI failed, ``says_why``: its output names
        401/403/unauthorized/token, ``returncode``, ``message``: the last output line); ``jobs_created`` (jobs the
        head lists afterwards: none may have slipped in); ``seconds``.
    """
    started = time.monotonic()
    figures: dict[str, Any] = {
        "http_no_token": _http(f"{head.address}/api/jobs/")[0],
        "http_wrong_token": _http(f"{head.address}/api/jobs/", "0" * 64)[0],
        "http_with_token": _http(f"{head.address}/api/jobs/", head.token())[0],
    }
    unaware = {k: v for k, v in head.env.items() if not k.startswith("RAY_AUTH")}  # a client that knows no token
    wrong = {**unaware, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": pysecrets.token_hex(32)}
    for name, env in (("submit_no_token", unaware), ("submit_wrong_token", wrong)):
        done = _submit(head, env, ["python", "-c", "print('should never run')"], ["--no-wait"], timeout_s=120)
        text = (done.stdout + done.stderr).strip()
        figures[name] = {
            "refused": done.returncode != 0,
            "says_why": any(w in text.lower() for w in ("401", "403", "unauthorized", "token")),
            "returncode": done.returncode,
            "message": text.splitlines()[-1][:300] if text else "",
        }
    figures["jobs_created"] = len(_jobs(head))
    figures["seconds"] = round(time.monotonic() - started, 3)
    log.info("token auth refusal: %s", figures)
    return figures


def run_prepare_job(
    head: TokenHead, endpoint_url: str, bucket: str, evidence: Path, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """Submits ``python -m jobs.prepare --config tiny`` (storage on ``s3://bucket/trcgl``) to the head, the way the
    cluster README does (``--working-dir . --runtime-env cluster/runtime_env.yaml``), and saves what a reader of the
    run can reach into ``evidence``: the job's logs, ``GET /api/jobs/``, and every object the job wrote.

    Returns:
        ``succeeded``, ``seconds``, ``job_id``, ``objects`` (how many were downloaded), ``saved_configs`` (their
        config.yaml keys) and ``log_tail`` (the end of the submit output when it failed).
    """
    import boto3

    evidence.mkdir(parents=True, exist_ok=True)
    root = f"s3://{bucket}/trcgl"
    job_id = f"faults-prepare-{uuid.uuid4().hex[:8]}"
    entry = [
        "python", "-m", "jobs.prepare", "--config", "tiny", "--set", f"storage.root={root}",
        f"storage.endpoint_url={endpoint_url}", *overrides,
    ]  # fmt: skip
    extra = ["--submission-id", job_id, "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml"]
    started = time.monotonic()
    for _ in range(15):  # the head's job agent starts a little after its dashboard answers
        done = _submit(head, head.env, entry, extra)
        if "No available agent to submit job" not in done.stdout + done.stderr:
            break
        time.sleep(2)
    seconds = time.monotonic() - started
    (evidence / "submit-output.log").write_text(done.stdout + done.stderr)
    logs = subprocess.run(
        [*_ray_cli(), "job", "logs", "--address", head.address, job_id],
        env=head.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    (evidence / "job-logs.log").write_text(logs.stdout + logs.stderr)
    (evidence / "api-jobs.json").write_text(json.dumps(_jobs(head), indent=2))
    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    for key in keys:
        dest = evidence / "s3" / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(dest))
    figures = {
        "succeeded": done.returncode == 0,
        "seconds": round(seconds, 3),
        "job_id": job_id,
        "objects": len(keys),
        "saved_configs": sorted(k for k in keys if k.endswith("config.yaml")),
        "log_tail": "" if done.returncode == 0 else (done.stdout + done.stderr)[-3000:],
    }
    log.info("prepare job on the token head: %s", {k: v for k, v in figures.items() if k != "log_tail"})
    return figures


def security(
    endpoint_url: str, bucket: str, workdir: Path, secret: str | None = None, job_overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """The security scenario: token refusal, then a real job run with a fake AWS secret in the nodes' environment,
    then a scan of everything the run left for that secret.

    The head is started with ``AWS_SECRET_ACCESS_KEY=<secret>`` (as an instance's environment would hold it) and the
    job gets it only from there, never from the runtime_env. Scanned: the repo's ``cluster/*.yaml`` and presets, the
    job's logs, ``GET /api/jobs/`` (runtime_env env vars are readable there), every object the job wrote (its saved
    config.yaml files included), the head's own log, its HOME and Ray's whole temp dir (session logs of the head and
    the job's workers). A control file holding the secret must be found, so an empty result means something.

    Args:
        endpoint_url: the S3-compatible endpoint the job writes to.
        bucket: an existing, empty bucket on it.
        workdir: scratch for the head and the evidence.
        secret: the fake secret; default: a fresh random one.
        job_overrides: more ``--set`` overrides for the job (e.g. a smaller ``synth.rows``).

    Returns:
        ``token_auth`` (:func:`token_auth_refusal`), ``job`` (:func:`run_prepare_job`), ``secret_in_node_env``
        (the head's processes do hold the secret: the job had it), ``scanned_files``, ``secret_found_in`` (paths;
        must be empty), ``control_found`` and ``seconds``.
    """
    started = time.monotonic()
    workdir = Path(workdir)
    secret = secret or f"trcgl-fake-secret-{pysecrets.token_hex(16)}"
    evidence = workdir / "evidence"
    with token_head(workdir, {"AWS_SECRET_ACCESS_KEY": secret}, keep_temp_dir=True) as head:
        try:
            refusal = token_auth_refusal(head)
            job = run_prepare_job(head, endpoint_url, bucket, evidence, job_overrides)
            in_node_env = _group_environ_holds(head.pid, secret)  # the job did have it, from the node
        except BaseException:
            shutil.rmtree(head.temp_dir, ignore_errors=True)
            raise
    try:
        control = workdir / "control.txt"
        control.write_text(f"aws_secret_access_key = {secret}\n")
        targets = [
            *sorted(CLUSTER_DIR.glob("*.yaml")), *sorted((REPO / "jobs" / "configs").glob("*.yaml")),
            evidence, head.log_path, head.home, head.temp_dir,
        ]  # fmt: skip
        scanned = sum(
            1 if t.is_file() else sum(len(files) for _, _, files in os.walk(t)) for t in targets if t.exists()
        )
        found = scan_for_secrets(targets, [secret])
        control_found = scan_for_secrets([control], [secret]) == [str(control)]
    finally:
        shutil.rmtree(head.temp_dir, ignore_errors=True)
    figures = {
        "token_auth": refusal,
        "job": job,
        "secret_in_node_env": in_node_env,
        "scanned_files": scanned,
        "secret_found_in": [p.replace(str(head.temp_dir), "<ray temp dir>") for p in found],
        "control_found": control_found,
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info("security scenario: %s", {k: v for k, v in figures.items() if k != "job"})
    return figures


_RAY_START = re.compile(r"\bray start\b")
_TOKEN_START = re.compile(r"\bRAY_AUTH_MODE=token\s+ray start\b")


def _strings(node: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{where}[{i}]")


def cluster_start_commands_without_token(cluster_dir: Path = CLUSTER_DIR) -> dict[str, Any]:
    """Every ``ray start`` in any YAML document under ``cluster_dir`` must run with ``RAY_AUTH_MODE=token``.

    ``ray start`` is unauthenticated unless the variable is set (RELIABILITY_NOTES.md). This is the catch-all over
    every file and key, including files added later; ``tests/test_cluster_files.py`` checks each known file's auth
    set-up in depth (the mounted token of aws.yaml, the Secret-backed token of every rayjob.yaml container).

    Returns:
        ``files``, ``ray_start_commands`` (how many were found) and ``without_token`` (``file:path`` of each one
        that starts Ray without token auth; must be empty).
    """
    files = sorted(cluster_dir.glob("*.yaml"))
    found, bad = 0, []
    for path in files:
        with open(path) as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d is not None]
        for i, doc in enumerate(docs):
            for where, text in _strings(doc, f"doc{i}"):
                for line in re.split(r"[;&|\n]+", text):
                    if _RAY_START.search(line) and not line.lstrip().startswith("#"):
                        found += 1
                        if not _TOKEN_START.search(line):
                            bad.append(f"{path.name}:{where}")
    return {"files": len(files), "ray_start_commands": found, "without_token": bad}


# ---------------------------------------------------------------------------------------------------- bad configs


def _case(name: str, expect: Sequence[str], fn: Any, key: str | None = None) -> dict[str, Any]:
    """Runs ``fn``; records the error it raised, whether the message names every string in ``expect`` and, when
    the case is about one config key, whether it names ``key``."""
    started = time.monotonic()
    error: BaseException | None = None
    try:
        fn()
    except Exception as exc:  # the figure is the point
        error = exc
    seconds = round(time.monotonic() - started, 3)
    message = "" if error is None else str(error)
    missing = [e for e in expect if e not in message]
    return {
        "case": name,
        "error_type": None if error is None else type(error).__name__,
        "message": message[:_MAX_ERROR_CHARS],
        "names_problem": error is not None and not missing,
        "not_named": missing,
        "names_key": None if key is None else key in message,
        "seconds": seconds,
    }


def _job_cli(module: str, overrides: Sequence[str], root: Path | None = None) -> None:
    """Runs ``python -m jobs.<module> --config tiny --set ...`` and raises its outcome as the case's error.

    The message says the exit code, whether Ray was started (the job log says so before any work), how many files
    the job left under ``root`` (when given) and the job's last output line (the error it printed).
    """
    done = subprocess.run(
        [sys.executable, "-m", f"jobs.{module}", "--config", "tiny", "--set", *overrides],
        cwd=REPO, env=_base_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = (done.stdout + done.stderr).strip()
    started_ray = "starting a local Ray" in text or "connecting to Ray" in text
    left = "" if root is None else f"files left: {sum(len(f) for _, _, f in os.walk(root))}; "
    last = text.splitlines()[-1] if text else ""
    raise RuntimeError(f"exit code {done.returncode}; Ray started: {started_ray}; {left}{last}")


def bad_configs(endpoint_url: str | None = None) -> list[dict[str, Any]]:
    """Feeds each bad setting to the real entry point that meets it first and records the error.

    Cases: an unknown key (override, YAML file, and the job CLI, which must exit with code 2 before Ray starts), a
    value of the wrong type, a label set that does not exist, a storage root that cannot be written (a local path
    under a file; a missing bucket on ``endpoint_url`` when given), GPUs the Ray cluster does not have (the sweep
    job on its own local, CPU-only Ray, asked for 64 GPUs per worker: it must stop before writing anything) and GPUs
    no autoscaler node type can hold.

    Returns:
        For each case: ``case``, ``error_type`` (None: nothing was raised), ``message``, ``names_problem`` (the
        message names the bad key and/or value), ``not_named`` (what it should have named but did not),
        ``names_key`` (for a case about one config key: whether the message names it) and ``seconds``.
    """
    from trcgl.config import load_config
    from trcgl.ray_runtime import check_gpus_feasible

    scratch = Path(tempfile.mkdtemp(prefix="trcgl-badcfg-"))
    cases: list[dict[str, Any]] = []
    try:
        bad_yaml = scratch / "typo.yaml"
        bad_yaml.write_text("train:\n  epochz: 3\n")
        blocker = scratch / "a-file"
        blocker.write_text("not a folder")
        unwritable = str(blocker / "runs")
        cases.append(
            _case("unknown key (override)", ["data.imag_size"], lambda: load_config("tiny", ["data.imag_size=64"]))
        )
        cases.append(
            _case("unknown key (YAML file)", ["train.epochz", "typo.yaml"], lambda: load_config(str(bad_yaml)))
        )
        cases.append(
            _case(
                "unknown key (job CLI)",
                ["exit code 2", "Ray started: False", "data.imag_size"],
                lambda: _job_cli("prepare", ["data.imag_size=64"]),
            )
        )
        cases.append(_case("wrong type", ["train.epochs", "many"], lambda: load_config("tiny", ["train.epochs=many"])))
        cases.append(
            _case(
                "unknown label set",
                ["cxr-lt-99"],
                lambda: load_config("tiny", ["data.label_set=cxr-lt-99"]),
                key="data.label_set",
            )
        )
        cases.append(_case("unwritable local root", [unwritable, "not writable"], Storage(unwritable).check_writable))
        if endpoint_url:
            missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/trcgl"
            where = urlparse(endpoint_url).netloc
            cases.append(
                _case(
                    "missing bucket",
                    [missing, "not writable", where],
                    Storage(missing, StorageConfig(endpoint_url=endpoint_url)).check_writable,
                )
            )
        gpu_root = scratch / "gpu-root"
        cases.append(
            _case(  # the sweep job checks GPUs right after the storage probe: on this CPU-only Ray it must stop there
                "GPUs the cluster lacks (job CLI)",
                ["exit code 2", "files left: 0", "train.gpus_per_worker", "64"],  # a configuration error
                lambda: _job_cli(
                    "sweep", [f"storage.root={gpu_root}", "train.use_gpu=true", "train.gpus_per_worker=64"], gpu_root
                ),
            )
        )
        template = CLUSTER_DIR / "local-autoscaling.yaml"
        cases.append(
            _case(
                "GPUs no autoscaler node type holds",
                ["generate.num_gpus", "4"],
                lambda: check_gpus_feasible(4.0, "generate.num_gpus", template),
            )
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for case in cases:
        log.info("bad config %s", case)
    return cases
