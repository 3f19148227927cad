"""trcgl: TRCGL-Net for long-tailed multi-label chest X-ray classification, as batch jobs on Ray."""

import logging as _logging
import os as _os

__version__ = "0.1.0"

# A job run with -q passes its verbosity to the Ray workers it starts through the environment (trcgl/ray_console.py):
# there our INFO lines (one per epoch, per trial) are dropped too. Read here, where every process that runs our code
# passes first.
if _os.environ.get("TRCGL_VERBOSITY") == "quiet":
    _logging.getLogger("trcgl").setLevel(_logging.WARNING)
