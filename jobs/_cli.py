"""What every job entrypoint shares: arguments, logging, config loading, Ray start-up and the final summary."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from trcgl.config import Config, ConfigError, absolute_local_paths, load_config

log = logging.getLogger("jobs")


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every job has."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    main_fn: Callable[[Config, argparse.Namespace], dict[str, Any]], description: str, argv: list[str] | None
) -> int:
    """Parses arguments, loads the config, starts Ray, runs ``main_fn`` and prints its summary as JSON.

    Returns:
        The process exit code: 0 on success, 2 on a configuration error, 1 on any other failure.
    """
    args = parser(description).parse_args(argv)
    setup_logging(args.log_level)
    try:
        cfg = load(args)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
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
