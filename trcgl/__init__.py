"""trcgl: TRCGL-Net for long-tailed multi-label chest X-ray classification, as batch jobs on Ray."""

__version__ = "0.1.0"
