"""PadChest-Synth: synthetic chest X-rays rendered from real PadChest metadata rows.

Anatomy from real lung masks (torchxrayvision's v7labs masks), each cxr-lt-30 finding drawn as its own
visual pattern (see :mod:`trcgl.data.synth.findings` for the table of signatures), placed by the row's
Localizations and seeded by (dataset seed, ImageID). Pure numpy/scipy/Pillow.
"""

from trcgl.data.synth.findings import CLASS_NAMES, FINDING_RENDERERS, parse_localizations
from trcgl.data.synth.render import render_image
from trcgl.data.synth.sheet import make_contact_sheet

__all__ = ["CLASS_NAMES", "FINDING_RENDERERS", "make_contact_sheet", "parse_localizations", "render_image"]
