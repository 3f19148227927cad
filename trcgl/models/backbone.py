"""The timm backbone as a spatial feature extractor: (B, 1, H, W) in [0, 1] → (B, C, h, w).

Any timm model works: it is built with ``in_chans=1, num_classes=0, global_pool=""`` (never downloading weights)
and its output is brought to NCHW, whatever timm returns (NCHW maps, NHWC maps as in Swin, or ViT token sequences).
Weights come only from a local path or an s3:// URI that the config names.
"""

from __future__ import annotations

import io
import logging
import math

import timm
import torch
from timm.models import adapt_input_conv
from torch import Tensor, nn

from trcgl.config import StorageConfig
from trcgl.storage import filesystem_for

log = logging.getLogger(__name__)


def read_uri_bytes(uri: str) -> bytes:
    """The bytes of a local file or an s3:// object (endpoint and credentials as in :mod:`trcgl.storage`)."""
    fs, path = filesystem_for(uri, StorageConfig())
    with fs.open_input_stream(path, compression=None) as fh:
        return fh.read()


def load_state_dict(model: nn.Module, uri: str) -> None:
    """Loads backbone weights from a local path or s3:// URI into ``model`` (non-strict, but loud).

    The file holds a state dict, or a dict with one under ``"state_dict"`` or ``"model"``. RGB stem convolutions
    (3 input channels) are adapted to our 1 channel as timm does (summing over colours). Keys of a shape the model
    does not have are dropped; missing, unexpected and dropped keys are counted in the log.

    Args:
        model: the timm model (built with ``in_chans=1, num_classes=0``).
        uri: local path or s3:// URI of a file ``torch.load`` reads.
    """
    state = torch.load(io.BytesIO(read_uri_bytes(uri)), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    own = model.state_dict()
    kept, dropped = {}, []
    for name, value in state.items():
        target = own.get(name)
        if target is None or value.shape == target.shape:
            kept[name] = value
        elif value.ndim == 4 and target.ndim == 4 and value.shape[0] == target.shape[0] and target.shape[1] == 1:
            kept[name] = adapt_input_conv(1, value)  # (O, 3, kh, kw) → (O, 1, kh, kw)
        else:
            dropped.append(name)
    result = model.load_state_dict(kept, strict=False)
    log.info(
        "backbone weights from %s: %d tensors loaded, %d missing, %d unexpected, %d dropped (shape mismatch)",
        uri,
        len(kept) - len(result.unexpected_keys),
        len(result.missing_keys),
        len(result.unexpected_keys),
        len(dropped),
    )
    if result.missing_keys:
        log.warning("backbone keys not in %s (left at init): %s", uri, result.missing_keys[:10])
    if dropped:
        log.warning("backbone keys dropped for shape mismatch: %s", dropped[:10])


class Backbone(nn.Module):
    """A timm trunk returning a spatial feature map.

    The input is normalised inside: ``(x - mean) / std`` with the backbone's ``pretrained_cfg`` mean and std
    averaged over the RGB channels (ImageNet models: 0.449 / 0.226), so callers feed raw [0, 1] images.

    Args:
        name: timm model name.
        pretrained: local path or s3:// URI of backbone weights; None keeps the random init.
        output_stride: stride of the feature map; below the backbone's own 32, timm dilates the last stage(s)
            instead of striding them (same weights, more cells: 64 px gives 4x4 at 16 instead of 2x2 at 32).

    Attributes:
        num_features: C, the channel count of the feature map.
    """

    def __init__(self, name: str, pretrained: str | None = None, output_stride: int = 32) -> None:
        super().__init__()
        kwargs = {} if output_stride == 32 else {"output_stride": output_stride}  # not every timm model takes it
        try:
            self.body = timm.create_model(name, pretrained=False, in_chans=1, num_classes=0, global_pool="", **kwargs)
        except (TypeError, AssertionError, ValueError) as exc:
            if not kwargs:
                raise
            raise ValueError(
                f"config key 'model.output_stride' = {output_stride}: timm model {name!r} cannot be built with it "
                f"({type(exc).__name__}: {exc}); use 32 or a backbone that supports dilation (e.g. the resnets)"
            ) from exc
        if pretrained:
            load_state_dict(self.body, pretrained)
        self.num_features: int = self.body.num_features
        data_cfg = self.body.pretrained_cfg
        mean = sum(data_cfg.get("mean", (0.5,))) / len(data_cfg.get("mean", (0.5,)))
        std = sum(data_cfg.get("std", (0.5,))) / len(data_cfg.get("std", (0.5,)))
        self.register_buffer("mean", torch.tensor(mean).view(1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, H, W) in [0, 1] → feature map (B, C, h, w)."""
        out = self.body((x - self.mean) / self.std)
        if out.ndim == 4:
            if getattr(self.body, "output_fmt", "NCHW") == "NHWC":
                out = out.permute(0, 3, 1, 2)  # (B, h, w, C) → (B, C, h, w)
            return out.contiguous()
        if out.ndim == 3:  # ViT-style tokens (B, prefix + h*w, C)
            tokens = out[:, getattr(self.body, "num_prefix_tokens", 0) :]  # (B, h*w, C)
            h, w = self._token_grid(x, tokens.shape[1])
            return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)  # (B, C, h, w)
        raise ValueError(f"backbone {type(self.body).__name__} returned a {tuple(out.shape)} tensor, not a feature map")

    def _token_grid(self, x: Tensor, n_tokens: int) -> tuple[int, int]:
        """(h, w) of the patch grid behind ``n_tokens`` tokens for input ``x``."""
        patch = getattr(getattr(self.body, "patch_embed", None), "patch_size", None)
        if patch is not None:
            h, w = x.shape[-2] // patch[0], x.shape[-1] // patch[1]
            if h * w == n_tokens:
                return h, w
        side = math.isqrt(n_tokens)
        if side * side != n_tokens:
            raise ValueError(f"cannot lay {n_tokens} backbone tokens out on a grid for input {tuple(x.shape)}")
        return side, side
