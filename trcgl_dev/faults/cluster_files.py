"""The cluster-file check: every ``ray start`` in any YAML document under ``cluster/`` runs with token auth.

``ray start`` serves its GCS, dashboard and Jobs API without authentication unless ``RAY_AUTH_MODE=token`` is set in
its environment, and anyone who reaches an unauthenticated Jobs API can run code on the cluster. This is the
catch-all over every file and key, files added later included; ``tests/test_cluster_files.py`` checks each known
file's auth set-up in depth (the mounted token of aws.yaml, the Secret-backed token of every rayjob.yaml container).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trcgl_dev.faults import Figures

CLUSTER_DIR = Path(__file__).resolve().parents[2] / "cluster"
_RAY_START = re.compile(r"\bray start\b")
_TOKEN_START = re.compile(r"\bRAY_AUTH_MODE=token\s+ray start\b")


@dataclass
class ClusterStartCheck(Figures):
    """What :func:`cluster_start_commands_without_token` found.

    Attributes:
        files: YAML files read.
        ray_start_commands: ``ray start`` commands found in them (commented-out ones aside).
        without_token: ``file:path.to[key]`` of each one that starts Ray without token auth; must be empty.
    """

    files: int
    ray_start_commands: int
    without_token: list[str]


def _strings(node: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string in a parsed YAML document, with its path (``doc0.key[1].key``)."""
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{where}[{i}]")


def cluster_start_commands_without_token(cluster_dir: Path = CLUSTER_DIR) -> ClusterStartCheck:
    """Finds every ``ray start`` in the YAML documents of ``cluster_dir``; a command counts as token-authenticated
    when ``RAY_AUTH_MODE=token`` directly precedes it in the same shell command (split at ``;``, ``&``, ``|`` and
    newlines)."""
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
    return ClusterStartCheck(files=len(files), ray_start_commands=found, without_token=bad)
