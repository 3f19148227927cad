"""TRCGL-Net and its peers as configurations of one model (see :mod:`trcgl.models.trcgl_net`)."""

from trcgl.models.gcn import build_adjacency
from trcgl.models.trcgl_net import TRCGLNet, build_model

__all__ = ["TRCGLNet", "build_adjacency", "build_model"]
