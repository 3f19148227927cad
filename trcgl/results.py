"""Reading results back from a storage root without Ray: runs, summaries, sweep leaderboards, comparisons, reports.

Everything here reads the deterministic layout the jobs write (see :mod:`trcgl.storage`)::

    {root}/runs/{run}/config.yaml                      marks a run (run names may contain "/": nested runs)
    {root}/runs/{run}/summary.json                     pipeline summary (jobs.pipeline): stages, rows, report
    {root}/runs/{run}/classifier/summary.json          classifier summary: test metrics with confidence intervals
    {root}/runs/{run}/classifier/per_class.parquet     per-class AP / AUROC
    {root}/runs/{run}/sweep/leaderboard.parquet        one row per sweep trial
    {root}/runs/{run}/sweep/trials/{id}/...            the trials themselves (runs, hidden by default)
    {root}/runs/{run}/report/                          report.html and its pictures

Only pyarrow and pandas are used, through :class:`~trcgl.storage.Storage`, so the same calls work on a local folder
and on ``s3://bucket/prefix`` (AWS or any S3-compatible endpoint).
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pandas as pd

from trcgl.config import StorageConfig
from trcgl.metrics import METRICS
from trcgl.storage import Storage

log = logging.getLogger(__name__)

RUNS = "runs"
RUN_MARKER = "config.yaml"
PIPELINE_SUMMARY = "summary.json"
CLASSIFIER_SUMMARY = "classifier/summary.json"
PER_CLASS = "classifier/per_class.parquet"
LEADERBOARD = "sweep/leaderboard.parquet"
REPORT_DIR = "report"
TRIALS = "/sweep/trials/"

# Test metrics in display order; each may carry a confidence interval under "ci".
# Stage folders in the order the pipeline runs them (used to order the "stages" column).
STAGE_ORDER = ("diffusion", "synthetic", "classifier", "sweep", "report")
# A config.yaml found inside one of these folders of a run belongs to that stage, not to a nested run.
_NOT_RUN_DIRS = frozenset({"diffusion", "synthetic", "classifier", "report"})

LIST_COLUMNS = ["run", "kind", "trial", "dataset", "mAP", "mAUC", "tail_mAP", "has_report", "stages"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/]*)(.*)$")


class RunNotFoundError(FileNotFoundError):
    """A run that does not exist under the root; the message names its URI and lists the runs that do."""


# ---------------------------------------------------------------------------------------------------- URIs


def split_run_uri(uri: str) -> tuple[str, str | None]:
    """Splits a root or run URI into (root, run) at the last ``/runs/`` segment.

    ``s3://b/p/runs/demo`` gives ``("s3://b/p", "demo")``, ``s3://b/p/runs/demo/sweep/trials/abc`` gives
    ``("s3://b/p", "demo/sweep/trials/abc")``, ``s3://b/p/runs/`` gives ``("s3://b/p", None)`` and a URI without a
    ``/runs/`` segment (``./runs``, ``s3://b/p``) is a root: ``(uri, None)``. Only the path is searched, never the
    scheme or bucket. This is pure string work; :func:`resolve_uri` also checks what exists.

    Args:
        uri: local path, ``file://`` URI or ``s3://bucket/prefix[/runs/run]``.

    Returns:
        The root URI and the run name (None when the URI names a root).
    """
    match = _SCHEME.match(uri)
    head, path = (match.group(1), match.group(2)) if match else ("", uri)
    relative = not path.startswith("/")
    padded = "/" + path if relative else path
    idx = padded.rfind("/runs/")
    if idx < 0:
        return uri, None
    root_path = padded[:idx]
    if relative:
        root_path = root_path[1:]
    run = padded[idx + len("/runs/") :].strip("/") or None
    root = head + root_path
    if not root_path and not head:
        root = "." if relative else "/"
    return root, run


def check_run_name(run: str) -> str:
    """The run name without surrounding slashes.

    Raises:
        ValueError: for an empty name or one with empty, ``.`` or ``..`` segments (it would leave ``runs/``).
    """
    name = run.strip("/")
    if not name or any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"invalid run name {run!r}")
    return name


def _has_runs(storage: Storage) -> bool:
    return storage.exists(RUNS)


def resolve_uri(uri: str, cfg: StorageConfig | None = None) -> tuple[Storage, str | None]:
    """Opens the root a URI points at and the run it names, checking what exists where the string is ambiguous.

    ``{root}/runs/{run}`` names a run; a root whose own path contains ``/runs/`` (``/data/runs/exp1``) is still
    recognised when it holds a ``runs/`` folder and no such run exists; ``{root}/runs`` (the runs folder itself) opens
    ``{root}``.

    Args:
        uri: root or run URI.
        cfg: storage settings (endpoint, region); defaults to :class:`StorageConfig`'s.

    Returns:
        (storage, run or None). When nothing matches, the plain split of :func:`split_run_uri`; later reads then fail
        with messages that name the URI.
    """
    cfg = cfg or StorageConfig()
    root, run = split_run_uri(uri)
    primary = Storage(root, cfg)
    if run is not None and run_exists(primary, run):
        return primary, check_run_name(run)
    if run is None and _has_runs(primary):
        return primary, None
    alternatives: list[str] = []
    if run is not None:
        alternatives.append(uri)  # a root whose path merely contains /runs/
    stripped = uri.rstrip("/")
    if stripped.endswith("/runs") or stripped == "runs":
        alternatives.append(stripped[: -len("runs")].rstrip("/") or ".")  # the runs folder itself
    for alt in alternatives:
        storage = Storage(alt, cfg)
        if _has_runs(storage):
            log.debug("reading %s as the root %s", uri, storage.root)
            return storage, None
    return primary, (check_run_name(run) if run is not None else None)


# ---------------------------------------------------------------------------------------------------- runs


def is_trial(run: str) -> bool:
    """Whether a run is a sweep trial (its name contains ``/sweep/trials/``)."""
    return TRIALS in f"/{run}/"


def run_exists(storage: Storage, run: str) -> bool:
    """Whether ``runs/{run}`` holds a config.yaml or a summary."""
    base = posixpath.join(RUNS, check_run_name(run))
    return any(storage.exists(posixpath.join(base, rel)) for rel in (RUN_MARKER, PIPELINE_SUMMARY, CLASSIFIER_SUMMARY))


def _runs_and_files(storage: Storage) -> dict[str, list[str]]:
    """Every run under the root with the files that belong to it (paths relative to the run, nested runs' excluded).

    One recursive listing of ``runs/``: a run is a folder with a config.yaml, except a config.yaml inside a run's
    stage folder (classifier/, diffusion/, ...; sweep/ other than sweep/trials/).
    """
    prefix = RUNS + "/"
    rels = [f[len(prefix) :] for f in storage.list_files(RUNS) if f.startswith(prefix)]
    candidates = sorted(
        (r[: -len("/" + RUN_MARKER)] for r in rels if r.endswith("/" + RUN_MARKER)), key=lambda r: r.count("/")
    )
    runs: set[str] = set()
    for cand in candidates:
        parts = cand.split("/")
        inside_stage = False
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) not in runs:
                continue
            rest = parts[i:]
            if rest[0] in _NOT_RUN_DIRS or (rest[0] == "sweep" and (len(rest) < 3 or rest[1] != "trials")):
                inside_stage = True
                break
        if not inside_stage:
            runs.add(cand)
    files: dict[str, list[str]] = {run: [] for run in runs}
    for rel in rels:
        parts = rel.split("/")
        for i in range(len(parts) - 1, 0, -1):
            owner = "/".join(parts[:i])
            if owner in files:
                files[owner].append("/".join(parts[i:]))
                break
    return files


def _kind(files: list[str]) -> str:
    stages = {f.split("/", 1)[0] for f in files if "/" in f}
    if PIPELINE_SUMMARY in files:
        return "pipeline"
    if "sweep" in stages:
        return "sweep"
    if CLASSIFIER_SUMMARY in files:
        return "classifier"
    if "classifier" in stages:
        return "classifier-incomplete"
    if stages & {"diffusion", "synthetic"}:
        return "diffusion-only"
    return "empty"


def _stages(files: list[str]) -> str:
    found = {f.split("/", 1)[0] for f in files if "/" in f}
    ordered = [s for s in STAGE_ORDER if s in found] + sorted(found - set(STAGE_ORDER))
    return ",".join(ordered)


def _read_json_opt(storage: Storage, rel: str) -> Any | None:
    try:
        return storage.read_json(rel)
    except FileNotFoundError:
        return None


def _metrics_from_summary(summary: dict[str, Any]) -> dict[str, tuple[float | None, list[float] | None]]:
    """{metric: (value, [lo, hi] or None)} of a pipeline summary (its "best" row, else its first) or a classifier's."""
    if is_pipeline_summary(summary):
        rows = summary.get("rows") or []
        row = next((r for r in rows if r.get("name") == "best"), rows[0] if rows else {})
    else:
        row = summary.get("test") or {}
    ci = row.get("ci") or {}
    return {m: (row.get(m), ci.get(m)) for m in METRICS if row.get(m) is not None}


def _metrics_from_leaderboard(board: pd.DataFrame) -> dict[str, tuple[float | None, list[float] | None]]:
    """Test metrics of the best trial by val mAP (no intervals: the leaderboard has none)."""
    if board.empty:
        return {}
    best = board.iloc[0]
    out: dict[str, tuple[float | None, list[float] | None]] = {}
    for metric in METRICS:
        for col in (f"test_{metric}", metric):
            if col in board.columns and pd.notna(best[col]):
                out[metric] = (float(best[col]), None)
                break
    return out


def is_pipeline_summary(summary: dict[str, Any]) -> bool:
    """Whether a summary dict is a pipeline summary (stages / rows) rather than a classifier summary (test)."""
    return "rows" in summary or "stages" in summary


def _describe(storage: Storage, run: str, files: list[str]) -> dict[str, Any]:
    base = posixpath.join(RUNS, run)
    summary = None
    for rel in (PIPELINE_SUMMARY, CLASSIFIER_SUMMARY):
        if rel in files:
            summary = _read_json_opt(storage, posixpath.join(base, rel))
            if summary is not None:
                break
    metrics: dict[str, tuple[float | None, list[float] | None]] = {}
    if summary is not None:
        metrics = _metrics_from_summary(summary)
    elif LEADERBOARD in files:
        board = leaderboard(storage, run)
        metrics = _metrics_from_leaderboard(board) if board is not None else {}
    return {
        "run": run,
        "kind": _kind(files),
        "trial": is_trial(run),
        "dataset": (summary or {}).get("dataset"),
        "mAP": metrics.get("mAP", (None, None))[0],
        "mAUC": metrics.get("mAUC", (None, None))[0],
        "tail_mAP": metrics.get("tail_mAP", (None, None))[0],
        "has_report": any(f.startswith(REPORT_DIR + "/") for f in files),
        "stages": _stages(files),
    }


def list_runs(storage: Storage, include_trials: bool = False, max_workers: int = 8) -> pd.DataFrame:
    """The runs under a root, one row each, sorted by name.

    Args:
        storage: the root.
        include_trials: also list sweep trials (runs under ``.../sweep/trials/``).
        max_workers: summaries read in parallel (one or two small GETs per run on S3).

    Returns:
        Columns ``run``, ``kind`` (pipeline, sweep, classifier, classifier-incomplete, diffusion-only, empty),
        ``trial``, ``dataset``, test ``mAP``, ``mAUC`` and ``tail_mAP`` where known (a pipeline's "best" row; a
        sweep without summaries: its best trial by val mAP), ``has_report`` (files under ``report/``) and ``stages``
        (the stage folders present). Empty, with these columns, when the root has no runs. ``attrs["hidden_trials"]``
        counts the trials left out.
    """
    files = _runs_and_files(storage)
    names = sorted(r for r in files if include_trials or not is_trial(r))
    if names:
        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(names)))) as pool:
            rows = list(pool.map(lambda r: _describe(storage, r, files[r]), names))
        table = pd.DataFrame(rows, columns=LIST_COLUMNS)
    else:
        table = pd.DataFrame(columns=LIST_COLUMNS)
    table.attrs["hidden_trials"] = len(files) - len(names)
    return table


def _missing(storage: Storage, run: str) -> RunNotFoundError:
    known = sorted(r for r in _runs_and_files(storage) if not is_trial(r))
    listing = ", ".join(known[:20]) + (f", ... ({len(known) - 20} more)" if len(known) > 20 else "")
    where = f"runs under {storage.uri(RUNS)}: {listing}" if known else f"no runs under {storage.uri(RUNS)}"
    return RunNotFoundError(f"no run {run!r} at {storage.uri(RUNS, run)} ({where})")


def require_run(storage: Storage, run: str) -> str:
    """The checked run name.

    Raises:
        RunNotFoundError: the run does not exist; the message names its URI and lists the runs that do.
    """
    run = check_run_name(run)
    if not run_exists(storage, run):
        raise _missing(storage, run)
    return run


def run_summary(storage: Storage, run: str) -> dict[str, Any]:
    """The summary of a run: its pipeline summary if present, else its classifier summary, exactly as written.

    Raises:
        RunNotFoundError: the run does not exist; the message names its URI and lists the runs that do.
        FileNotFoundError: the run exists but has neither summary yet (stage unfinished, or a sweep/diffusion-only
            run); the message names the URIs looked at.
    """
    run = check_run_name(run)
    base = posixpath.join(RUNS, run)
    for rel in (PIPELINE_SUMMARY, CLASSIFIER_SUMMARY):
        summary = _read_json_opt(storage, posixpath.join(base, rel))
        if summary is not None:
            return summary
    if not storage.exists(posixpath.join(base, RUN_MARKER)):
        raise _missing(storage, run)
    raise FileNotFoundError(
        f"run {run!r} has no summary yet: neither {storage.uri(base, PIPELINE_SUMMARY)} "
        f"nor {storage.uri(base, CLASSIFIER_SUMMARY)} exists"
    )


def _read_parquet_opt(storage: Storage, rel: str) -> pd.DataFrame | None:
    import pyarrow.parquet as pq

    if not storage.exists(rel):
        return None
    return pq.read_table(storage.path(rel), filesystem=storage.pyarrow_fs).to_pandas()


def leaderboard(storage: Storage, run: str) -> pd.DataFrame | None:
    """A run's sweep leaderboard sorted by ``val_mAP`` (best first, missing last), or None when it has no sweep."""
    board = _read_parquet_opt(storage, posixpath.join(RUNS, check_run_name(run), LEADERBOARD))
    if board is None:
        return None
    if "val_mAP" in board.columns:
        board = board.sort_values("val_mAP", ascending=False, na_position="last", kind="stable")
    return board.reset_index(drop=True)


def per_class(storage: Storage, run: str) -> pd.DataFrame | None:
    """A run's per-class AP / AUROC table (``classifier/per_class.parquet``), or None when it has none."""
    return _read_parquet_opt(storage, posixpath.join(RUNS, check_run_name(run), PER_CLASS))


# ---------------------------------------------------------------------------------------------------- comparing


def format_value(value: float | None, ci: Iterable[float] | None = None, digits: int = 3) -> str:
    """``0.412 [0.390, 0.430]``: a metric with its interval; ``-`` when unknown, no brackets without an interval."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.{digits}f}"
    bounds = list(ci) if ci is not None else []
    if len(bounds) == 2 and all(b is not None for b in bounds):
        text += f" [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"
    return text


def run_metrics(storage: Storage, run: str) -> dict[str, tuple[float | None, list[float] | None]]:
    """{metric: (test value, [lo, hi] or None)} of a run.

    From its pipeline summary ("best" row, else the first), else its classifier summary, else the best trial of its
    sweep leaderboard (no intervals).

    Raises:
        RunNotFoundError: the run does not exist.
        FileNotFoundError: the run has no summary and no leaderboard.
    """
    try:
        return _metrics_from_summary(run_summary(storage, run))
    except RunNotFoundError:
        raise
    except FileNotFoundError:
        board = leaderboard(storage, run)
        if board is None:
            raise
        return _metrics_from_leaderboard(board)


def compare_metrics(
    storage: Storage, runs: Iterable[str]
) -> dict[str, dict[str, tuple[float | None, list[float] | None]]]:
    """:func:`run_metrics` of several runs (deduplicated, in order); a run with no metrics yet maps to ``{}``.

    Raises:
        RunNotFoundError: a run does not exist (the first missing one is named).
    """
    names = list(dict.fromkeys(check_run_name(r) for r in runs))
    per_run: dict[str, dict[str, tuple[float | None, list[float] | None]]] = {}
    for run in names:
        try:
            per_run[run] = run_metrics(storage, run)
        except RunNotFoundError:
            raise
        except FileNotFoundError as exc:
            log.warning("%s", exc)
            per_run[run] = {}
    return per_run


def compare(storage: Storage, runs: Iterable[str], digits: int = 3) -> pd.DataFrame:
    """Test metrics of several runs side by side: one row per metric, one column per run.

    Cells read ``0.412 [0.390, 0.430]`` (value and confidence interval) or ``-`` where a run lacks the metric (a run
    with no summary and no leaderboard yet is all ``-``, with a warning); only metrics at least one run has are rows.

    Raises:
        RunNotFoundError: a run does not exist (the first missing one is named).
    """
    per_run = compare_metrics(storage, runs)
    metrics = [m for m in METRICS if any(m in values for values in per_run.values())]
    table = {
        run: [format_value(*values.get(m, (None, None)), digits=digits) for m in metrics]
        for run, values in per_run.items()
    }
    return pd.DataFrame(table, index=pd.Index(metrics, name="metric"), columns=list(per_run))


# ---------------------------------------------------------------------------------------------------- reports


def download_report(storage: Storage, run: str, dest_dir: str | os.PathLike[str]) -> list[str]:
    """Copies every file under ``runs/{run}/report/`` into ``dest_dir``, keeping relative paths.

    Each file is streamed to a temporary name and renamed, so a partial copy never looks complete.

    Returns:
        The local paths written, sorted.

    Raises:
        RunNotFoundError: the run does not exist.
        FileNotFoundError: the run has no report (the message names the URI looked at).
    """
    run = check_run_name(run)
    report_rel = posixpath.join(RUNS, run, REPORT_DIR)
    files = storage.list_files(report_rel)
    if not files:
        if not run_exists(storage, run):
            raise _missing(storage, run)
        raise FileNotFoundError(f"run {run!r} has no report: nothing under {storage.uri(report_rel)}/")
    dest = os.path.abspath(os.fspath(dest_dir))
    written: list[str] = []
    for rel in files:
        sub = rel[len(report_rel) + 1 :]
        target = os.path.abspath(os.path.join(dest, *sub.split("/")))
        if os.path.commonpath([dest, target]) != dest:
            raise ValueError(f"refusing to write {target!r} outside {dest!r}")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with (
                storage.pyarrow_fs.open_input_stream(storage.path(rel), compression=None) as src,
                open(tmp, "wb") as dst,
            ):
                shutil.copyfileobj(src, dst, length=1 << 20)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        written.append(target)
    log.info("copied %d report files from %s to %s", len(written), storage.uri(report_rel), dest)
    return sorted(written)
