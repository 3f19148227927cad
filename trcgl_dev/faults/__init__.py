"""Fault-injection scenarios run against real components, each returning the figures it measured as a small
dataclass (fields documented on the class).

One module per concern: :mod:`.ray_worker_kill` (a Ray Train worker killed mid-epoch), :mod:`.driver_kill` (the
classifier job's and the sweep's driver killed, then rerun), :mod:`.generation_kill` (generation killed part-way),
:mod:`.bad_inputs` (corrupt images and malformed metadata in prepare), :mod:`.storage_outage` (S3 unreachable during
a storage operation), :mod:`.security` (token auth and a scan for a secret), :mod:`.cluster_files` (token auth on
every ``ray start`` of the cluster files), :mod:`.bad_config` (bad settings at the real entry points). Helpers:
:mod:`.proxy` (the switchable TCP proxy), :mod:`.inputs` (bad input files), :mod:`.run_files` (what a training run
leaves in storage).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

FIGURES_ENV = "TRCGL_FAULT_FIGURES"


class Figures:
    """Base of the scenarios' result dataclasses: :meth:`to_dict` gives the fields as plain values."""

    def to_dict(self) -> dict[str, Any]:
        """The fields (nested result dataclasses included) as a dict, ready for JSON."""
        return dataclasses.asdict(self)


def plain(figures: Any) -> Any:
    """``figures`` with every dataclass in it (also inside lists, tuples and dicts) turned into a dict."""
    if dataclasses.is_dataclass(figures) and not isinstance(figures, type):
        return dataclasses.asdict(figures)
    if isinstance(figures, (list, tuple)):
        return [plain(f) for f in figures]
    if isinstance(figures, dict):
        return {k: plain(v) for k, v in figures.items()}
    return figures


def record_figures(name: str, figures: Any) -> Any:
    """Appends ``{"test": name, "figures": figures}`` as one JSON line to the file named by ``$TRCGL_FAULT_FIGURES``.

    Nothing is written when the variable is unset. Result dataclasses are written as their fields (:func:`plain`);
    values JSON cannot hold are written as their ``str``.

    Returns:
        ``figures`` unchanged, so a test can record and assert on one value.
    """
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"test": name, "figures": plain(figures)}, default=str) + "\n")
    return figures
