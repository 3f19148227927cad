"""The fault suite's fixture: ``record(figures)`` keeps a scenario's figures (trcgl.faults.record_figures)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from trcgl.faults import record_figures


@pytest.fixture()
def record(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    """``record(figures)`` stores the figures under the test's id (when ``$TRCGL_FAULT_FIGURES`` is set)."""
    return lambda figures: record_figures(request.node.nodeid, figures)
