"""The storage outage scenario: one :class:`~trcgl.storage.Storage` operation while its S3 endpoint is unreachable.

A :class:`~trcgl_dev.faults.proxy.TcpProxy` sits in front of a real S3-compatible endpoint (moto in the tests) and is
cut just before the operation (a read, a write, or a folder upload published with a manifest) for a set time.
The figures say whether the configured retries rode the outage out, how long the operation took, and, when it failed,
whether the failure was loud, named the endpoint and left nothing a later stage would take as complete.

Every operation goes through our own :class:`~trcgl.storage.Storage` code only. The folder upload is a stage's
publish (:meth:`~trcgl.storage.Storage.write_bytes` per file, then :meth:`~trcgl.storage.Storage.publish`) of a
folder shaped like a checkpoint; it is not Ray Train's checkpoint upload (``ray.train.report`` persisting through
``storage_filesystem``), which this scenario does not cut.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from trcgl.config import StorageConfig
from trcgl.errors import StorageError
from trcgl.storage import Storage
from trcgl_dev.faults import Figures
from trcgl_dev.faults.proxy import TcpProxy

log = logging.getLogger(__name__)

OPS = ("read", "write", "folder")
SHORT_OUTAGES = (2.0, 8.0)  # seconds; each for every op, all to be ridden out by the retries
# (op, seconds): beyond what the retries ride out, to fail loudly. Only the folder upload (files, then the manifest:
# the op whose failure could leave a partial publish), because it costs about 35 s.
LONG_OUTAGE = ("folder", 30.0)
OUTAGE_CASES = [(op, s) for s in SHORT_OUTAGES for op in OPS] + [LONG_OUTAGE]  # what the suite and benchmark run
# the uploaded folder's files, shaped like a small checkpoint: name -> random bytes (0: a JSON state)
FOLDER_FILES = {"model.pt": 384 * 1024, "optimizer.pt": 192 * 1024, "state.json": 0}
_MAX_ERROR_CHARS = 600


@dataclass
class OutageResult(Figures):
    """What :func:`s3_outage` measured.

    Attributes:
        op: "read", "write" or "folder".
        client: the ``storage.s3_client`` used ("s3fs" or "pyarrow").
        outage_s: how long the endpoint was cut.
        retries: ``storage.retries`` used.
        connect_timeout_s: ``storage.connect_timeout_s`` used.
        survived: the operation returned and its result checks out (the bytes read or written, or a manifest
            listing exactly the folder's files, each whole).
        seconds: the operation's wall time.
        error: the operation's exception (type and message, shortened), or None.
        loud: the exception was a :class:`~trcgl.errors.StorageError`.
        error_names_endpoint: the proxy's ``host:port`` is in the error message.
        endpoint_back_before_error: the outage had already ended when the error came.
        partial_published: a later stage could take an incomplete output as complete: a manifest although the
            upload failed, or one listing files that are missing or of another size; for a write, an object that is
            not the whole new value.
        later_stage_sees: for a folder upload, "complete" (a manifest exists) or "unfinished"; None for other ops.
        connections_forwarded: connections the proxy accepted.
        connections_reset: connections the cut reset.
    """

    op: str
    client: str
    outage_s: float
    retries: int
    connect_timeout_s: float
    survived: bool
    seconds: float
    error: str | None
    loud: bool
    error_names_endpoint: bool
    endpoint_back_before_error: bool
    partial_published: bool
    later_stage_sees: str | None
    connections_forwarded: int
    connections_reset: int


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def _make_folder(folder: Path) -> dict[str, bytes]:
    """A small local folder shaped like a checkpoint (weights, optimizer state, a JSON state)."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    for name, size in FOLDER_FILES.items():
        data = os.urandom(size) if size else json.dumps({"epoch": 1, "step": 40, "val_mAP": 0.31}).encode()
        (folder / name).write_bytes(data)
        files[name] = data
    return files


def _upload_folder(storage: Storage, local: Path, rel_dir: str) -> None:
    """Uploads every file of ``local`` under ``rel_dir`` through ``storage``, then publishes the manifest last (as
    the stages publish their outputs)."""
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.write_bytes(f"{rel_dir}/{path.relative_to(local).as_posix()}", path.read_bytes())
    storage.publish(rel_dir, {"stage": "faults-folder", "epoch": 1})


def s3_outage(
    endpoint_url: str,
    bucket: str,
    outage_s: float,
    op: str,
    workdir: Path,
    client: str = "s3fs",
    storage_cfg: StorageConfig | None = None,
) -> OutageResult:
    """One storage operation through an endpoint that is unreachable for ``outage_s`` seconds from just before it.

    The operation runs through a :class:`TcpProxy` in front of ``endpoint_url`` with the project's
    :class:`StorageConfig` (its retry defaults unless ``storage_cfg`` says otherwise); setting up and checking the
    result go to the endpoint directly.

    Args:
        endpoint_url: the real S3-compatible endpoint, ``http://host:port``.
        bucket: an existing bucket on it.
        outage_s: how long the endpoint is cut.
        op: ``"read"`` (read_bytes of an existing object), ``"write"`` (write_bytes) or ``"folder"`` (a folder of
            files uploaded one by one, then published with :meth:`Storage.publish`).
        workdir: local scratch (the folder to upload is built here).
        client: ``storage.s3_client`` for the operation: ``"s3fs"`` or ``"pyarrow"`` (pyarrow's client serves
            reads and listings; writes always go through s3fs).
        storage_cfg: settings to start from (endpoint and client are set here); default: ``StorageConfig()``.

    Raises:
        ValueError: for an unknown ``op`` or an ``endpoint_url`` without host and port.
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
    folder: dict[str, bytes] = {}
    local = Path(workdir) / f"folder-{uuid.uuid4().hex[:8]}"
    if op == "read":
        direct.write_bytes("object.bin", payload)
    elif op == "folder":
        folder = _make_folder(local)

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
                _upload_folder(storage, local, "folder")
        except Exception as exc:  # the figure is the point: record what the caller would have seen
            error = exc
        seconds = round(time.monotonic() - started, 3)
        back_before_error = error is not None and not timer.is_alive()
        forwarded, reset = proxy.accepted, proxy.dropped
        endpoint = f"{proxy.listen_host}:{proxy.port}"

    ok = error is None
    partial = False
    later_stage_sees = None
    if op == "read":
        ok = ok and result == payload
    elif op == "write":
        stored = direct.read_bytes("object.bin") if direct.exists("object.bin") else None
        ok = ok and stored == payload
        partial = stored is not None and stored != payload
    else:
        manifest = direct.manifest("folder")
        later_stage_sees = "unfinished" if manifest is None else "complete"
        if manifest is not None:  # complete only if it lists exactly the files, each there whole
            listed = manifest.get("files", {})
            intact = set(listed) == set(folder) and all(
                listed[name] == len(data)
                and direct.exists(f"folder/{name}")
                and direct.read_bytes(f"folder/{name}") == data
                for name, data in folder.items()
            )
            partial = error is not None or not intact
        ok = ok and manifest is not None and not partial
    shutil.rmtree(local, ignore_errors=True)
    figures = OutageResult(
        op=op,
        client=client,
        outage_s=outage_s,
        retries=cfg.retries,
        connect_timeout_s=cfg.connect_timeout_s,
        survived=ok,
        seconds=seconds,
        error=None if error is None else _error_text(error),
        loud=isinstance(error, StorageError),
        error_names_endpoint=error is not None and endpoint in str(error),
        endpoint_back_before_error=back_before_error,
        partial_published=partial,
        later_stage_sees=later_stage_sees,
        connections_forwarded=forwarded,
        connections_reset=reset,
    )
    log.info("S3 outage scenario: %s", figures)
    return figures


def s3_outage_matrix(
    endpoint_url: str,
    bucket: str,
    cases: Sequence[tuple[str, float]],
    workdir: Path,
    client: str = "s3fs",
    max_parallel: int = 8,
) -> list[OutageResult]:
    """Runs :func:`s3_outage` for each ``(op, outage_s)`` at once: each case has its own proxy and prefix, so the
    cases do not disturb one another and the whole matrix takes about as long as its longest outage.

    Returns:
        The result of each case, in the order of ``cases``.
    """
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(cases)))) as pool:
        futures = [pool.submit(s3_outage, endpoint_url, bucket, s, op, workdir, client) for op, s in cases]
        return [f.result() for f in futures]
