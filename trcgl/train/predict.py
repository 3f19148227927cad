"""Batch inference without Ray: a callable class that Ray Data runs on an actor pool, or a test calls directly."""

from __future__ import annotations

import logging

import numpy as np
import torch

from trcgl.config import StorageConfig
from trcgl.train.checkpoint import load_model
from trcgl.train.data import decode_batch

log = logging.getLogger(__name__)


class Predictor:
    """Scores batches of prepared rows with a classifier checkpoint.

    Args:
        checkpoint: checkpoint folder (local path or s3://).
        storage: endpoint settings as a plain dict (for s3:// checkpoints).
        device: "cpu", "cuda" or "auto" (cuda when available).
    """

    def __init__(self, checkpoint: str, storage: dict | None = None, device: str = "auto") -> None:
        self.model, self.meta = load_model(checkpoint, StorageConfig(**(storage or {})))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model.to(self.device)

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Scores one batch.

        Args:
            batch: columns ``image_id`` (B,), ``image`` (B,) bytes, ``labels`` (B, K).

        Returns:
            ``image_id`` (B,), ``scores`` (B, K) sigmoid probabilities, ``labels`` (B, K).
        """
        x, y = decode_batch(batch["image"], batch["labels"])  # (B, 1, S, S), (B, K)
        scores = torch.sigmoid(self.model(x.to(self.device))).float().cpu().numpy()  # (B, K)
        return {"image_id": np.asarray(batch["image_id"]), "scores": scores, "labels": y.numpy().astype(np.uint8)}
