"""What every job entrypoint shares: arguments, logging, config loading, Ray start-up and the final summary.

The console: while a job runs, log lines (ours and Ray's) at the verbosity of ``-q`` / ``-v``
(``trcgl/ray_console.py``); when it ends, on stdout, its summary as a short text (a table where the job has one, and
the paths of its outputs). The whole summary, a large JSON, is in the file the job wrote it to; ``-v`` prints it
after the text and ``--format json`` prints it alone, for scripts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from trcgl.config import Config, ConfigError, absolute_local_paths, load_config

log = logging.getLogger("jobs")

# Copied from trcgl.ray_console (LEVELS), which imports Ray: `jobs.results` imports this module and needs no Ray
QUIET, NORMAL, VERBOSE = "quiet", "normal", "verbose"


def parser(description: str, force_stages: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """An argument parser with the options every job has, and ``--force`` for jobs whose outputs a rerun reuses.

    Args:
        description: the job's docstring.
        force_stages: None: no ``--force``; empty: ``--force`` recomputes the job's one stage; else ``--force STAGE
            [STAGE ...]`` names the stages to recompute.
    """
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if force_stages is not None and not force_stages:
        p.add_argument(
            "--force",
            action="store_true",
            help="recompute this stage even when its outputs were made from other config values (they are deleted)",
        )
    elif force_stages:
        p.add_argument(
            "--force",
            nargs="+",
            default=[],
            choices=list(force_stages),
            metavar="STAGE",
            help=f"recompute these stages even when their outputs were made from other config values (they are "
            f"deleted): {', '.join(force_stages)}",
        )
    p.add_argument("--config", default="demo", help="preset name in jobs/configs (tiny, demo, ...) or a YAML path")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override, e.g. --set data.image_size=128 (repeatable; several may follow one --set)",
        nargs="+",
    )
    loud = p.add_mutually_exclusive_group()
    loud.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const=VERBOSE,
        default=NORMAL,
        help="print everything Ray prints (Tune's trial tables, Ray Train's and Ray Data's INFO lines) and, at the "
        "end, the whole summary as JSON after the table",
    )
    loud.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const=QUIET,
        help="only warnings and errors, then the summary (default: a line per stage, epoch and trial)",
    )
    p.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="the summary on stdout at the end: a table and output paths (default), or the whole summary as JSON",
    )
    p.add_argument("--log-level", default=None, help="our log lines: DEBUG, INFO, WARNING (default: from -q / -v)")
    p.add_argument("--check", action="store_true", help="validate the config for this job and exit (no Ray, no work)")
    return p


def log_level(args: argparse.Namespace) -> str:
    """``--log-level``, else WARNING with ``--quiet`` and INFO otherwise."""
    return args.log_level or ("WARNING" if args.verbosity == QUIET else "INFO")


def setup_logging(level: str) -> None:
    """Our log lines on stderr at ``level`` (Ray's own loggers are set by ``trcgl.ray_console.configure``)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def load(args: argparse.Namespace) -> Config:
    """The validated config from ``--config`` and ``--set``."""
    overrides = [o for group in args.overrides for o in group]
    return absolute_local_paths(load_config(args.config, overrides))


def run(
    main_fn: Callable[[Config, argparse.Namespace], dict[str, Any]],
    description: str,
    argv: list[str] | None,
    force_stages: Sequence[str] | None = None,
    check: Callable[[Config], None] | None = None,
    text: Callable[[Config, dict[str, Any]], str] | None = None,
) -> int:
    """Parses arguments, loads the config, starts Ray, runs ``main_fn`` and prints its summary (:func:`finish`).

    Args:
        main_fn: the job, given the config and the parsed arguments; returns the job's summary.
        description: the job's docstring (its ``--help``).
        argv: the arguments (None: ``sys.argv``).
        force_stages: what ``--force`` takes (see :func:`parser`); None: the job has no ``--force``.
        check: the job's own checks of a loaded config, beyond the config's (run before any work, and alone with
            ``--check``).
        text: the summary as the console shows it, given the config and the summary (default: :func:`brief`).

    Returns:
        The process exit code: 0 on success, 2 on a configuration error, 1 on any other failure.
    """
    args = parser(description, force_stages).parse_args(argv)
    setup_logging(log_level(args))
    try:
        cfg = load(args)
        if check is not None:
            check(cfg)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    if args.check:
        sys.stdout.write(json.dumps({"config": args.config, "valid": True}) + "\n")
        return 0
    from trcgl import ray_console as console
    from trcgl.ray_runtime import init_ray

    console.configure(args.verbosity)  # before Ray starts: its local workers inherit the level
    started = init_ray(cfg)
    try:
        summary = main_fn(cfg, args)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    finally:
        if started:
            import ray

            ray.shutdown()
    finish(summary, text(cfg, summary) if text else brief(summary), args.verbosity, args.format)
    return 0


def finish(summary: dict[str, Any], shown: str, verbosity: str, fmt: str = "table") -> None:
    """Prints a finished job's summary on stdout: ``shown`` (its text), followed at ``verbose`` by the whole
    summary as JSON; with ``fmt`` ``json``, the JSON alone.

    Args:
        summary: what the job returned.
        shown: the summary as text (a table, the output paths).
        verbosity: ``quiet``, ``normal`` or ``verbose``.
        fmt: ``table`` or ``json`` (``--format``).
    """
    whole = json.dumps(summary, indent=2, default=str) + "\n"
    if fmt == "json":
        sys.stdout.write(whole)
        return
    sys.stdout.write("\n" + shown.strip("\n") + "\n")
    if verbosity == VERBOSE:
        sys.stdout.write("\nsummary (JSON):\n" + whole)


def brief(summary: dict[str, Any], saved: str | None = None, inline: int = 6) -> str:
    """A summary as ``key: value`` lines: plain values, and lists and dicts of at most ``inline`` plain values on
    one line; longer or nested ones are left to the JSON (``saved``, ``-v``, ``--format json``).

    Args:
        summary: what the job returned.
        saved: where the whole summary is (a JSON file), named on the last line.
        inline: the most items a list or dict may have to be shown.
    """
    plain = (str, int, float, bool, type(None))
    width = max((len(k) for k in summary), default=0) + 1
    lines, left = [], []
    for key, value in summary.items():
        if isinstance(value, dict) and len(value) <= inline and all(isinstance(v, plain) for v in value.values()):
            value = ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "-"
        elif isinstance(value, list) and len(value) <= inline and all(isinstance(v, plain) for v in value):
            value = ", ".join(_plain(v) for v in value) or "-"
        elif not isinstance(value, plain):
            left.append(key)
            continue
        lines.append(f"{key + ':':<{width}} {_plain(value)}")
    if saved:
        lines.append(f"{'details:':<{width}} {saved}")
    if left:
        where = "the JSON" if not saved else "the details file"
        lines.append(f"({', '.join(left)}: in {where}; -v or --format json prints it)")
    return "\n".join(lines)


def saved_in(summary: dict[str, Any], name: str, key: str = "output") -> str | None:
    """``name`` in the folder that ``summary[key]`` holds (the file the job wrote its summary to), if it holds one."""
    folder = summary.get(key)
    return f"{str(folder).rstrip('/')}/{name}" if folder else None


def _plain(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
