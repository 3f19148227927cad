"""An autoscaling Ray cluster on this machine (Ray's fake multi-node provider, cluster/local-autoscaling.yaml).

    python -m jobs.cluster_local up [--state-dir DIR] [--idle-timeout-minutes M]
    python -m jobs.cluster_local status [--state-dir DIR]
    python -m jobs.cluster_local down [--state-dir DIR]

``up`` starts the head (0 CPUs, 0 GPUs: it runs only drivers) on free ports with token auth and prints the
RAY_ADDRESS and dashboard URL; the autoscaler then adds GPU nodes (fake GPUs: code falls back to CPU) and a CPU
ingest node as work asks for them and removes them after the idle timeout. Run any job against it:

    eval "$(python -m jobs.cluster_local env)"     # RAY_ADDRESS, RAY_AUTH_MODE=token, token path, config path
    python -m jobs.generate --config tiny --set generate.num_gpus=1 generate.actors_max=2 ray.autoscaling=true

``down`` stops only this cluster's processes (its process group and every process carrying its marker, fake
nodes and their workers included), never other Ray instances on the host (no ``ray stop``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

from jobs._cli import setup_logging

DEFAULT_STATE_DIR = Path(tempfile.gettempdir()) / "trcgl-local-cluster"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down", "status", "env"])
    p.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="cluster.json, resolved config, logs")
    p.add_argument("--template", default=None, help="cluster config template (default cluster/local-autoscaling.yaml)")
    p.add_argument("--idle-timeout-minutes", type=float, default=None, help="override the template's idle timeout")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    from trcgl_dev import local_cluster as rcl

    if args.command != "up" and not rcl.state_file(args.state_dir).exists():
        sys.stderr.write(f"no cluster recorded in {args.state_dir} (start one with `up`)\n")
        return 1
    if args.command == "up":
        cluster = rcl.up(args.state_dir, args.template or rcl.TEMPLATE, args.idle_timeout_minutes)
        sys.stdout.write(
            f"RAY_ADDRESS={cluster.gcs_address}\n"
            f"dashboard: {cluster.dashboard_url}  (ray job submit --address {cluster.dashboard_url})\n"
            f"state: {rcl.state_file(cluster.state_dir)}\n"
            f'environment for jobs: eval "$(python -m jobs.cluster_local env --state-dir {cluster.state_dir})"\n'
        )
    elif args.command == "env":
        cluster = rcl.read_state(args.state_dir)
        for key, value in cluster.env().items():
            sys.stdout.write(f"export {key}={shlex.quote(value)}\n")
    elif args.command == "status":
        sys.stdout.write(rcl.status_text(args.state_dir) + "\n")
    else:
        killed = rcl.down(args.state_dir)
        left = rcl.leftover_processes(args.state_dir)
        sys.stdout.write(f"stopped{f' (SIGKILL: {killed})' if killed else ''}\n")
        if left:
            sys.stdout.write("left running:\n" + "\n".join(left) + "\n")
            return 1
        rcl.remove_state(args.state_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
