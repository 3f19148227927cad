"""Read results back from a storage root (local folder or s3://bucket/prefix) without starting Ray.

URI is a storage root (``./runs``, ``s3://bucket/prefix``) or a run inside one (``s3://bucket/prefix/runs/demo``;
everything after the last ``/runs/`` is the run name, nested runs included: ``.../runs/demo/final``).

  root only          the runs table: kind, dataset, test mAP / mAUC / tail mAP, whether a report exists
                     (sweep trials hidden unless --all)
  a run              its summary (metrics with confidence intervals; a pipeline's stages and result rows) and, when it
                     ran a sweep, the leaderboard (top --top trials by val mAP)
  --compare          test metrics of several runs side by side, "value [lo, hi]"
  --download DEST    copy the run's report/ folder (report.html and pictures) to DEST

Examples:

    python -m jobs.results ./runs
    python -m jobs.results s3://bucket/trcgl --endpoint-url http://minio:9000 --all
    python -m jobs.results s3://bucket/trcgl/runs/demo
    python -m jobs.results s3://bucket/trcgl --run demo/final --format json
    python -m jobs.results s3://bucket/trcgl/runs/demo/final --compare demo/baseline
    python -m jobs.results s3://bucket/trcgl --compare demo/final demo/baseline
    python -m jobs.results s3://bucket/trcgl/runs/demo --download ./demo-report

The S3 endpoint comes from --endpoint-url, else $AWS_ENDPOINT_URL, else AWS; credentials from the environment.
Exit status: 0 on success, 2 when the URI holds no runs or a run is missing, 1 when storage cannot be read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

import pandas as pd

from jobs._cli import setup_logging
from trcgl import results
from trcgl.config import ConfigError, StorageConfig
from trcgl.errors import StorageError
from trcgl.storage import Storage

log = logging.getLogger("jobs.results")

LEADERBOARD_HIDDEN = ("checkpoint",)  # long paths: in --format json only
SECONDS_COLUMNS = ("wall_seconds", "seconds", "train_seconds")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; the module docstring is its description."""
    p = argparse.ArgumentParser(
        prog="python -m jobs.results", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("uri", help="storage root (./runs, s3://bucket/prefix) or run URI (s3://bucket/prefix/runs/demo)")
    p.add_argument("--run", dest="runs", action="extend", nargs="+", default=[], metavar="RUN", help="run(s) to show")
    p.add_argument(
        "--compare", action="extend", nargs="+", default=[], metavar="RUN", help="compare these runs (and URI's run)"
    )
    p.add_argument("--download", metavar="DEST", help="copy the run's report/ folder to this local folder")
    p.add_argument("--all", action="store_true", help="also list sweep trials")
    p.add_argument("--top", type=int, default=10, help="leaderboard rows to show (default 10)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--region", default=None, help="S3 region (default us-east-1)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING")
    return p


# ---------------------------------------------------------------------------------------------------- formatting


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-safe records (NaN as null, numpy scalars as Python ones)."""
    return json.loads(frame.to_json(orient="records"))


def _table(frame: pd.DataFrame, index: bool = False) -> str:
    """A pandas text table: text left-aligned, floats to 4 decimals (seconds to 1), missing values as ``-``."""
    shown = frame.copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            digits = 1 if col in SECONDS_COLUMNS else 4
            shown[col] = shown[col].map(lambda v, d=digits: "-" if pd.isna(v) else f"{v:.{d}f}")
    shown = shown.astype(object).where(shown.notna(), "-")
    shown = shown.map(lambda v: str(v) if isinstance(v, bool) else v)
    formatters = {}
    for col in shown.columns:
        if all(isinstance(v, str) for v in shown[col]) and not all(_numeric_text(v) for v in shown[col]):
            width = max([len(str(col)), *(len(v) for v in shown[col])])
            formatters[col] = lambda v, w=width: str(v).ljust(w)
    text = shown.to_string(index=index, formatters=formatters, justify="left")
    return "\n".join(line.rstrip() for line in text.splitlines())


def _numeric_text(text: str) -> bool:
    head = text.split(" ", 1)[0]
    try:
        float(head)
    except ValueError:
        return head == "-"
    return True


def _leaderboard_view(board: pd.DataFrame, top: int) -> pd.DataFrame:
    cols = [c for c in board.columns if c not in LEADERBOARD_HIDDEN]
    view = board.head(top)[cols].copy()
    view.insert(0, "rank", range(1, len(view) + 1))
    return view


def summary_text(summary: dict[str, Any]) -> str:
    """A run's summary as text: a pipeline's stages and result rows, or a classifier run's facts and test metrics."""
    lines = [f"run:     {summary.get('run', '-')}", f"dataset: {summary.get('dataset', '-')}"]
    if results.is_pipeline_summary(summary):
        lines.insert(1, "kind:    pipeline")
        if summary.get("report"):
            lines.append(f"report:  {summary['report']}")
        stages = summary.get("stages") or {}
        if stages:
            frame = pd.DataFrame(
                [
                    {"stage": name, "seconds": info.get("seconds"), "skipped": bool(info.get("skipped", False))}
                    for name, info in stages.items()
                ]
            )
            lines += ["", "stages:", _table(frame)]
        rows = summary.get("rows") or []
        if rows:
            metrics = [m for m in results.METRICS if any(m in r for r in rows)]
            frame = pd.DataFrame(
                [
                    {
                        "name": r.get("name", "-"),
                        "run": r.get("run", "-"),
                        **{m: results.format_value(r.get(m), (r.get("ci") or {}).get(m)) for m in metrics},
                    }
                    for r in rows
                ]
            )
            lines += ["", "test metrics [confidence interval]:", _table(frame)]
        return "\n".join(lines)
    lines.insert(1, "kind:    classifier")
    train_rows = summary.get("train_rows") or {}
    facts = {
        "epochs run": summary.get("epochs_run"),
        "best val mAP": summary.get("best_val_mAP"),
        "train rows (real)": train_rows.get("real"),
        "train rows (synthetic)": train_rows.get("synthetic"),
        "train seconds": summary.get("train_seconds"),
        "best checkpoint": summary.get("best_checkpoint"),
    }
    for key, value in facts.items():
        if value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.1f}" if "seconds" in key else f"{value:.4f}"
        lines.append(f"{key}: {value}")
    test = summary.get("test") or {}
    ci = test.get("ci") or {}
    metrics = [m for m in results.METRICS if m in test]
    if metrics:
        frame = pd.DataFrame(
            [
                {
                    "metric": m,
                    "value": results.format_value(test[m]),
                    "ci": f"[{ci[m][0]:.3f}, {ci[m][1]:.3f}]" if ci.get(m) else "-",
                }
                for m in metrics
            ]
        )
        lines += ["", "test metrics:", _table(frame)]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- commands


def _show_runs(storage: Storage, args: argparse.Namespace, out: dict[str, Any]) -> int:
    table = results.list_runs(storage, include_trials=args.all)
    if table.empty:
        print(f"error: no runs under {storage.uri(results.RUNS)} ({storage.endpoint})", file=sys.stderr)
        return 2
    if args.format == "json":
        out["runs"] = _records(table)
        return 0
    shown = table if args.all else table.drop(columns=["trial"])
    print(f"runs under {storage.uri(results.RUNS)}:")
    print(_table(shown))
    hidden = table.attrs.get("hidden_trials", 0)
    if hidden:
        print(f"({hidden} sweep trials hidden; --all lists them)")
    return 0


def _show_run(storage: Storage, run: str, args: argparse.Namespace, out: dict[str, Any], many: bool) -> int:
    entry: dict[str, Any] = {"run": run, "uri": storage.uri(results.RUNS, run)}
    try:
        entry["summary"] = results.run_summary(storage, run)
    except results.RunNotFoundError:
        raise
    except FileNotFoundError as exc:
        entry["summary"] = None
        entry["note"] = str(exc)
    board = results.leaderboard(storage, run)
    entry["leaderboard"] = _records(board.head(args.top)) if board is not None else None
    entry["trials"] = len(board) if board is not None else 0
    if args.download:
        dest = args.download
        if many:
            dest = os.path.join(dest, *run.split("/"))
        entry["downloaded"] = results.download_report(storage, run, dest)
    if args.format == "json":
        out.setdefault("results", []).append(entry)
        return 0
    print(f"== {entry['uri']}")
    if entry["summary"] is not None:
        print(summary_text(entry["summary"]))
    else:
        print(f"(no summary: {entry['note']})")
    if board is not None:
        sort = " by val_mAP" if "val_mAP" in board.columns else ""
        print(f"\nsweep leaderboard (top {min(args.top, len(board))} of {len(board)} trials{sort}):")
        print(_table(_leaderboard_view(board, args.top)))
    if entry.get("downloaded") is not None:
        print(f"\ncopied {len(entry['downloaded'])} report files to {os.path.abspath(args.download)}")
    print()
    return 0


def _show_compare(storage: Storage, runs: list[str], args: argparse.Namespace, out: dict[str, Any]) -> int:
    if args.format == "json":
        out["compare"] = {
            run: {m: {"value": v, "ci": ci} for m, (v, ci) in metrics.items()}
            for run, metrics in results.compare_metrics(storage, runs).items()
        }
        return 0
    frame = results.compare(storage, runs)
    print("test metrics [confidence interval]:")
    print(frame.to_string())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns the exit code (0 ok, 2 no runs / missing run / bad arguments, 1 storage error)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    cfg = StorageConfig(endpoint_url=args.endpoint_url, **({"region": args.region} if args.region else {}))
    out: dict[str, Any] = {}
    try:
        storage, uri_run = results.resolve_uri(args.uri, cfg)
        runs = list(dict.fromkeys(([uri_run] if uri_run else []) + [results.check_run_name(r) for r in args.runs]))
        if args.compare:
            to_compare = list(dict.fromkeys(runs + [results.check_run_name(r) for r in args.compare]))
            for run in to_compare:  # every run checked before anything is printed
                results.require_run(storage, run)
            code = _show_compare(storage, to_compare, args, out)
        elif runs:
            for run in runs:
                results.require_run(storage, run)
            code = 0
            for run in runs:
                code = max(code, _show_run(storage, run, args, out, many=len(runs) > 1))
        elif args.download:
            print("error: --download needs a run (a run URI or --run RUN)", file=sys.stderr)
            return 2
        else:
            code = _show_runs(storage, args, out)
    except (FileNotFoundError, ConfigError, ValueError) as exc:  # RunNotFoundError is a FileNotFoundError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StorageError, OSError) as exc:
        print(f"error: cannot read {args.uri}: {exc}", file=sys.stderr)
        return 1
    if args.format == "json" and code == 0:
        sys.stdout.write(json.dumps(out, indent=2, default=str) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
