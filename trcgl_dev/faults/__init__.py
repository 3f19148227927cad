"""Fault-injection scenarios run against real components, each returning the figures it measured."""

from __future__ import annotations

import json
import os
from typing import Any

FIGURES_ENV = "TRCGL_FAULT_FIGURES"


def record_figures(name: str, figures: Any) -> Any:
    """Appends ``{"test": name, "figures": figures}`` as one JSON line to the file named by ``$TRCGL_FAULT_FIGURES``
    (when set; what README's Reliability table is filled from); returns ``figures`` unchanged."""
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"test": name, "figures": figures}, default=str) + "\n")
    return figures
