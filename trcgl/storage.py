"""Storage roots, the artifact layout, atomic writes and manifests: the one place that knows about filesystems.

A root is a local path (``./runs``, ``/abs/path``) or ``s3://bucket/prefix`` on AWS or any S3-compatible endpoint
(``storage.endpoint_url`` or ``$AWS_ENDPOINT_URL``). :class:`Storage` hands the same root to pyarrow (and so to Ray
Data, Train and Tune as ``filesystem=`` / ``storage_filesystem=``) and to fsspec. Credentials come only from the
environment or the cloud's role (the AWS SDK's usual chain), never from config files.

Layout::

    {root}/sources/{name}/          PadChest-format raw data we rendered (PadChest-Synth): CSV, images/, sheets
    {root}/datasets/{dataset}/      part-*.parquet, _labels.json, _cooccurrence.parquet, _prepare_report.json
    {root}/runs/{run}/...           per-run stages

Writes are atomic: local files are written under a temporary name and renamed; an S3 object appears only when its
upload completes. A stage publishes its outputs by writing ``_manifest.json`` last; readers trust only outputs a
manifest lists.

A folder of Parquet parts (``part-*.parquet``: a dataset, ``synthetic/``, ``oracle/``, a predict output) is a Parquet
dataset as it stands: every other file or folder in it (reports, plans, configs, grids, the manifest) is a sidecar
whose name starts with ``_`` (:func:`sidecar`), which pyarrow's dataset discovery skips, and so ``pd.read_parquet``,
Ray Data and Spark. Folders written before that rule kept some sidecars without the underscore:
:meth:`Storage.sidecar_rel` finds either, and :meth:`Storage.drop_legacy_sidecars` removes the old names from a
folder being rewritten.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs
import s3fs

from trcgl.config import StorageConfig
from trcgl.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
SIDECAR_PREFIX = "_"  # pyarrow's default ignore_prefixes are "." and "_": a sidecar is never read as a part


def sidecar(name: str) -> str:
    """The name a sidecar file or folder takes in a folder of Parquet parts: ``name`` with a leading underscore.

    >>> sidecar("labels.json")
    '_labels.json'
    """
    return name if name.startswith(SIDECAR_PREFIX) else SIDECAR_PREFIX + name


@dataclass(frozen=True)
class Location:
    """A parsed storage URI.

    Attributes:
        scheme: "file" or "s3".
        path: absolute local path, or "bucket/key" for S3 (what pyarrow wants).
    """

    scheme: str
    path: str

    @property
    def uri(self) -> str:
        return f"s3://{self.path}" if self.scheme == "s3" else self.path


def parse_uri(uri: str) -> Location:
    """Parses a local path or ``s3://bucket/prefix`` into a :class:`Location`.

    Raises:
        ConfigError: for other schemes or an s3 URI without a bucket.
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        local = parsed.path if parsed.scheme == "file" else uri
        return Location("file", os.path.abspath(os.path.expanduser(local)))
    if parsed.scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise ConfigError(f"storage URI {uri!r} has no bucket (expected s3://bucket/prefix)")
        return Location("s3", f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/"))
    raise ConfigError(f"storage URI {uri!r}: unsupported scheme {parsed.scheme!r}; use a local path or s3://")


def endpoint_for(cfg: StorageConfig) -> str | None:
    """The S3 endpoint URL: the config's, else ``$AWS_ENDPOINT_URL``, else None (AWS)."""
    return cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None


def pyarrow_s3(cfg: StorageConfig) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem with explicit retries and timeouts; credentials from the environment."""
    kwargs: dict[str, Any] = {
        "region": cfg.region,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=cfg.retries),
        "connect_timeout": cfg.connect_timeout_s,
        "request_timeout": max(30.0, cfg.connect_timeout_s),
    }
    endpoint = endpoint_for(cfg)
    if endpoint:
        parsed = urlparse(endpoint)
        if not parsed.scheme or not parsed.netloc:
            raise ConfigError(f"storage endpoint {endpoint!r} must look like http://host:port")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    return pafs.S3FileSystem(**kwargs)


BOTOCORE_ATTEMPTS = 2  # botocore's own tries per s3fs attempt: one quick, jittered retry of a 5xx or a dropped call


def retry_connection_errors() -> None:
    """Makes s3fs retry botocore's connection errors (endpoint refused, connect timeout) like its other transient ones.

    s3fs retries a request on its fixed schedule only for the errors in ``s3fs.core.S3_RETRYABLE_ERRORS``, which does
    not hold ``botocore.exceptions.ConnectionError``: without this an unreachable endpoint gets botocore's retries
    only. Idempotent; process-wide (s3fs keeps the list in a module global).
    """
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if not any(issubclass(BotoConnectionError, e) for e in s3fs.core.S3_RETRYABLE_ERRORS):
        s3fs.core.add_retryable_error(BotoConnectionError)


class RetryingS3FileSystem(s3fs.S3FileSystem):
    """s3fs with ``retries`` attempts per request and connection errors among the retried ones.

    s3fs sleeps ``min(0.1 * 1.7**i, 15)`` s after failed attempt ``i``: a fixed schedule, unlike botocore's jittered
    backoff, so the outage a request rides out is known. With 10 attempts the last one starts 16.8 s after the first
    plus botocore's jitter (under 1 s per attempt): 17 to 26 s; the error is raised one more backoff (11.9 s) later.
    It pickles as this class with its arguments, so a Ray worker that unpickles it registers the retryable errors too.

    Args:
        retries: attempts per request (``storage.retries``).
        **kwargs: passed to :class:`s3fs.S3FileSystem`.
    """

    def __init__(self, *args: Any, retries: int = 5, **kwargs: Any) -> None:
        retry_connection_errors()
        super().__init__(*args, **kwargs)
        self.retries = retries


def s3fs_filesystem(cfg: StorageConfig) -> Any:
    """An s3fs filesystem with explicit retries and timeouts, listing cache off.

    Each request is tried ``cfg.retries`` times on s3fs's fixed backoff (see :class:`RetryingS3FileSystem`); botocore
    itself makes at most :data:`BOTOCORE_ATTEMPTS` tries per attempt. Stacking botocore's own ``cfg.retries`` attempts
    instead (full-jitter backoff up to 20 s each) made the time before an error anything from 0 to about 110 s: an
    8 s outage was not surely survived, nor a 30 s one surely reported.
    """
    client_kwargs: dict[str, Any] = {"region_name": cfg.region}
    if endpoint_for(cfg):
        client_kwargs["endpoint_url"] = endpoint_for(cfg)
    return RetryingS3FileSystem(
        client_kwargs=client_kwargs,
        config_kwargs={
            "retries": {"total_max_attempts": BOTOCORE_ATTEMPTS, "mode": "standard"},
            "connect_timeout": cfg.connect_timeout_s,
        },
        use_listings_cache=False,
        retries=cfg.retries,
    )


def s3_filesystem(cfg: StorageConfig) -> pafs.FileSystem:
    """The pyarrow view of S3 that every stage uses (``storage.s3_client``).

    ``s3fs`` (default) wraps botocore for pyarrow; it writes small objects with one PutObject and works with every
    S3-compatible server we tried. ``pyarrow`` is pyarrow's native client, faster for large reads, but its multipart
    upload completion fails against moto's server (pyarrow 26: "error embedded in a 200 OK response"), which breaks Ray
    Train's storage check there.
    """
    if cfg.s3_client == "pyarrow":
        return pyarrow_s3(cfg)
    return pafs.PyFileSystem(pafs.FSSpecHandler(s3fs_filesystem(cfg)))


def filesystem_for(uri: str, cfg: StorageConfig) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path on it) for any local path or s3:// URI."""
    loc = parse_uri(uri)
    if loc.scheme == "s3":
        return s3_filesystem(cfg), loc.path
    return pafs.LocalFileSystem(), loc.path


class Storage:
    """A storage root with pyarrow and fsspec views and atomic, manifest-published writes.

    All ``rel`` arguments are POSIX paths relative to the root. Picklable: it travels to Ray workers as its root and
    config and rebuilds its filesystems there.

    Args:
        root: local path or s3:// URI.
        cfg: storage settings (endpoint, region, retries).
    """

    def __init__(self, root: str, cfg: StorageConfig | None = None) -> None:
        self.cfg = cfg or StorageConfig()
        self.location = parse_uri(root)
        self.root = self.location.uri

    def __reduce__(self) -> tuple[Any, ...]:
        return (Storage, (self.root, self.cfg))

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    @property
    def is_s3(self) -> bool:
        return self.location.scheme == "s3"

    @property
    def endpoint(self) -> str:
        """Human-readable endpoint for error messages."""
        return (endpoint_for(self.cfg) or "AWS S3") if self.is_s3 else "local filesystem"

    @cached_property
    def pyarrow_fs(self) -> pafs.FileSystem:
        """The pyarrow filesystem (pass as ``filesystem=`` to Ray Data, ``storage_filesystem=`` to Train/Tune)."""
        return s3_filesystem(self.cfg) if self.is_s3 else pafs.LocalFileSystem()

    @cached_property
    def fsspec_fs(self) -> Any:
        """An fsspec filesystem for the same root (s3fs with listing cache off, or the local one)."""
        if not self.is_s3:
            import fsspec

            return fsspec.filesystem("file")
        return s3fs_filesystem(self.cfg)

    # ------------------------------------------------------------------------------------------------ paths

    def path(self, *parts: str) -> str:
        """Path on :attr:`pyarrow_fs` (no scheme) of ``root/parts...``."""
        return posixpath.join(self.location.path, *parts) if parts else self.location.path

    def uri(self, *parts: str) -> str:
        """Full URI (``s3://...`` or absolute local path) of ``root/parts...``."""
        p = self.path(*parts)
        return f"s3://{p}" if self.is_s3 else p

    def _wrap(self, op: str, rel: str, exc: Exception) -> StorageError:
        return StorageError(f"{op} {self.uri(rel)!r} failed on {self.endpoint}: {exc}")

    # ------------------------------------------------------------------------------------------------ reads

    def exists(self, rel: str) -> bool:
        try:
            return self.pyarrow_fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound
        except Exception as exc:  # OSError from pyarrow, botocore's own types through s3fs
            raise self._wrap("stat", rel, exc) from exc

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.pyarrow_fs.open_input_stream(self.path(rel), compression=None) as fh:
                return fh.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            if "not found" in str(exc).lower() or "no such file" in str(exc).lower():
                raise FileNotFoundError(self.uri(rel)) from exc
            raise self._wrap("read", rel, exc) from exc
        except Exception as exc:  # botocore raises its own types (an unreachable endpoint: EndpointConnectionError)
            raise self._wrap("read", rel, exc) from exc

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def list_files(self, rel: str) -> list[str]:
        """Relative paths of files under ``rel`` (recursive, sorted); empty when it does not exist."""
        selector = pafs.FileSelector(self.path(rel), recursive=True, allow_not_found=True)
        try:
            infos = self.pyarrow_fs.get_file_info(selector)
        except Exception as exc:
            raise self._wrap("list", rel, exc) from exc
        base = self.location.path.rstrip("/") + "/"
        return sorted(i.path[len(base) :] for i in infos if i.type == pafs.FileType.File)

    # ------------------------------------------------------------------------------------------------ writes

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Writes ``data`` atomically: readers see the old object or the whole new one, never a part."""
        path = self.path(rel)
        try:
            if self.is_s3:
                # One PutObject (s3fs uses a single request below 50 MiB): the object appears whole or not at all.
                # pyarrow's output stream always uses multipart uploads, which some S3-compatible servers reject.
                self.fsspec_fs.pipe_file(path, data)
                return
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        except Exception as exc:  # botocore raises its own types
            raise self._wrap("write", rel, exc) from exc

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())

    def write_parquet(self, rel: str, table: Any) -> None:
        """Writes a pyarrow Table as one Parquet file, atomically."""
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(rel, buf.getvalue())

    def delete(self, rel: str) -> None:
        try:
            info = self.pyarrow_fs.get_file_info(self.path(rel))
            if info.type == pafs.FileType.Directory:
                self.pyarrow_fs.delete_dir(self.path(rel))
            elif info.type == pafs.FileType.File:
                self.pyarrow_fs.delete_file(self.path(rel))
        except Exception as exc:
            raise self._wrap("delete", rel, exc) from exc

    def check_writable(self) -> None:
        """Fails fast, naming the root, when it cannot be written."""
        probe = f".write-probe-{uuid.uuid4().hex[:8]}"
        try:
            self.write_bytes(probe, b"ok")
            self.delete(probe)
        except (StorageError, OSError) as exc:
            raise StorageError(f"storage root {self.root!r} is not writable ({self.endpoint}): {exc}") from exc

    # ------------------------------------------------------------------------------------------------ manifests

    def publish(self, rel_dir: str, meta: dict[str, Any]) -> dict[str, Any]:
        """Publishes a stage's outputs: lists every file under ``rel_dir`` with its size in ``_manifest.json``.

        Call it last, after every output is written; :meth:`manifest` returns None until then.
        """
        files = {}
        selector = pafs.FileSelector(self.path(rel_dir), recursive=True, allow_not_found=True)
        base = self.path(rel_dir).rstrip("/") + "/"
        try:
            infos = self.pyarrow_fs.get_file_info(selector)
        except Exception as exc:
            raise self._wrap("list", rel_dir, exc) from exc
        for info in infos:
            name = info.path[len(base) :]
            if info.type == pafs.FileType.File and name != MANIFEST and ".tmp-" not in name:
                files[name] = info.size
        manifest = {**meta, "files": dict(sorted(files.items()))}
        self.write_json(posixpath.join(rel_dir, MANIFEST), manifest)
        return manifest

    def manifest(self, rel_dir: str) -> dict[str, Any] | None:
        """The published manifest of ``rel_dir``, or None when the stage has not finished."""
        try:
            return self.read_json(posixpath.join(rel_dir, MANIFEST))
        except FileNotFoundError:
            return None

    def iter_manifest_files(self, rel_dir: str, suffix: str = "") -> Iterator[str]:
        """Relative paths (under the root) of the files a manifest lists, optionally filtered by suffix."""
        manifest = self.manifest(rel_dir)
        if manifest is None:
            raise FileNotFoundError(
                f"{self.uri(rel_dir)!r} has no {MANIFEST}: the stage that writes it has not finished"
            )
        for name in manifest["files"]:
            if name.endswith(suffix):
                yield posixpath.join(rel_dir, name)

    # ------------------------------------------------------------------------------------------------ sidecars

    def sidecar_rel(self, rel_dir: str, name: str) -> str:
        """The path of sidecar ``name`` (a file or folder) of ``rel_dir``: ``_name`` (:func:`sidecar`), or ``name``
        in a folder written before sidecars took the underscore.

        One stat when the folder is in the current layout, two in an old one. When neither exists it returns the
        current name, so that the read that follows fails naming the path a current writer would have made.
        """
        current = posixpath.join(rel_dir, sidecar(name))
        if self.exists(current):
            return current
        legacy = posixpath.join(rel_dir, name.removeprefix(SIDECAR_PREFIX))
        if self.exists(legacy):
            log.debug("%s: sidecar %s in the layout before the underscore", self.uri(rel_dir), legacy)
            return legacy
        return current

    def drop_legacy_sidecars(self, rel_dir: str, names: Iterable[str]) -> None:
        """Deletes the pre-underscore copies (``name``, not ``_name``) of sidecars in a folder a stage is finishing.

        A stage killed under the old code and resumed under this one left them there; published beside the parts
        they would make ``pd.read_parquet(folder)`` fail (JSON) or read their rows as data (Parquet). Call it
        before :meth:`publish`, so the manifest lists only the current names.
        """
        for name in names:
            legacy = posixpath.join(rel_dir, name.removeprefix(SIDECAR_PREFIX))
            if self.exists(legacy):
                log.info(
                    "removing %s: the old name of %s, from before sidecars took the underscore",
                    self.uri(legacy),
                    sidecar(name),
                )
                self.delete(legacy)


# ---------------------------------------------------------------------------------------------------- layout


def source_dir(name: str) -> str:
    """Raw data in PadChest's own format that we produced (PadChest-Synth renders)."""
    return f"sources/{name}"


# Sidecars of a prepared dataset; until the underscore rule (see the module docstring) they had the names without it.
LABELS, COOCCURRENCE = sidecar("labels.json"), sidecar("cooccurrence.parquet")
PREPARE_REPORT, DATASET_CONFIG = sidecar("prepare_report.json"), sidecar("config.yaml")
# Sidecars of a generate output (runs/{run}/synthetic/); likewise.
GENERATE_PLAN, GENERATE_REPORT = sidecar("plan.parquet"), sidecar("generate_report.json")
REALISM, FIDELITY, GRIDS = sidecar("realism.json"), sidecar("fidelity.parquet"), sidecar("grids")


def dataset_dir(name: str) -> str:
    """A prepared dataset: Parquet shards ``part-*.parquet`` and the sidecars ``_labels.json``,
    ``_cooccurrence.parquet``, ``_prepare_report.json``, ``_config.yaml``, ``_shards/``, ``_manifest.json``."""
    return f"datasets/{name}"


def run_dir(run: str, stage: str | None = None) -> str:
    """A run's folder, or one stage's subfolder (diffusion, synthetic, classifier, sweep)."""
    return f"runs/{run}/{stage}" if stage else f"runs/{run}"


def slugify(text: str, sep: str = "-") -> str:
    """A path- and anchor-safe name: lower case, each run of characters other than ``[a-z0-9]`` as one ``sep``.

    >>> slugify("+ SE + CA + GCN (full - diffusion)", "_")
    'se_ca_gcn_full_diffusion'
    """
    return re.sub(r"[^a-z0-9]+", sep, text.lower()).strip(sep)
