"""What every job entrypoint shares: arguments, logging, config loading, Ray start-up and the final summary."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from trcgl.config import Config, ConfigError, absolute_local_paths, load_config

log = logging.getLogger("jobs")


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
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING")
    p.add_argument("--check", action="store_true", help="validate the config for this job and exit (no Ray, no work)")
    return p


def setup_logging(level: str) -> None:
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
) -> int:
    """Parses arguments, loads the config, starts Ray, runs ``main_fn`` and prints its summary as JSON.

    Args:
        main_fn: the job, given the config and the parsed arguments.
        description: the job's docstring (its ``--help``).
        argv: the arguments (None: ``sys.argv``).
        force_stages: what ``--force`` takes (see :func:`parser`); None: the job has no ``--force``.
        check: the job's own checks of a loaded config, beyond the config's (run before any work, and alone with
            ``--check``).

    Returns:
        The process exit code: 0 on success, 2 on a configuration error, 1 on any other failure.
    """
    args = parser(description, force_stages).parse_args(argv)
    setup_logging(args.log_level)
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
    from trcgl.ray_runtime import init_ray

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
    sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
    return 0
