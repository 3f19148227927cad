"""PadChest-Synth: synthetic chest X-rays rendered from real PadChest metadata rows.

Anatomy from real lung masks (torchxrayvision's v7labs masks), each cxr-lt-30 finding drawn as its own
visual pattern (see :mod:`trcgl.data.synth.findings` for the table of signatures), placed by the row's
Localizations and seeded by (dataset seed, ImageID). Pure numpy/scipy/Pillow.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule that defines it. Imported on first use (PEP 562), not with the package: every process that reads
# a dataset imports trcgl.data.synth.source (through trcgl.data.prepare), and the renderers' modules bring scipy,
# which each Ray Train worker would otherwise import for nothing.
_EXPORTS = {
    "CLASS_NAMES": "findings",
    "FINDING_RENDERERS": "findings",
    "parse_localizations": "findings",
    "render_image": "render",
    "make_contact_sheet": "sheet",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
