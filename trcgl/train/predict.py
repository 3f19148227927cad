"""Batch inference without Ray: a callable class that Ray Data runs on an actor pool, or a test calls directly."""

from __future__ import annotations

import logging

import numpy as np
import torch

from trcgl.config import StorageConfig
from trcgl.train.checkpoint import load_model
from trcgl.train.data import decode_batch
from trcgl.train.devices import inference_device, to_device

log = logging.getLogger(__name__)


class Predictor:
    """Scores batches of prepared rows with a classifier checkpoint.

    Args:
        checkpoint: checkpoint folder (local path or s3://).
        storage: endpoint settings as a plain dict (for s3:// checkpoints).
        device: "cpu", "cuda" or "auto" (:func:`trcgl.train.devices.inference_device`).
    """

    def __init__(self, checkpoint: str, storage: dict | None = None, device: str = "auto") -> None:
        self.model, self.meta = load_model(checkpoint, StorageConfig(**(storage or {})))
        self.device = inference_device(device)
        self.model.to(self.device)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, return_attention: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Sigmoid probabilities of a batch of images, on this predictor's device, in fp32.

        Args:
            x: (B, 1, S, S) float32 images in [0, 1] on the host.
            return_attention: also return the class attention maps.

        Returns:
            (probabilities (B, K), attention maps (B, K, h, w) or None).
        """
        x = to_device(x, self.device)
        if not return_attention:
            return torch.sigmoid(self.model(x)).float().cpu().numpy(), None
        logits, maps = self.model(x, return_attention=True)  # (B, K), (B, K, h, w)
        return torch.sigmoid(logits).float().cpu().numpy(), maps.float().cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Scores one batch.

        Args:
            batch: columns ``image_id`` (B,), ``image`` (B,) bytes, ``labels`` (B, K).

        Returns:
            ``image_id`` (B,), ``scores`` (B, K) sigmoid probabilities, ``labels`` (B, K).
        """
        x, y = decode_batch(batch["image"], batch["labels"])  # (B, 1, S, S), (B, K)
        scores, _ = self.probabilities(x)  # (B, K)
        return {"image_id": np.asarray(batch["image_id"]), "scores": scores, "labels": y.numpy().astype(np.uint8)}
