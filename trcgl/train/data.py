"""Training data without Ray: dataset metadata, the synthetic-mixing plan, batch decoding and X-ray augmentation.

Row contract (prepared datasets and synthetic folders alike): ``image_id`` (string), ``image`` (raw uint16 bytes, see
:func:`trcgl.data.images.decode_prepared`), ``labels`` (K multi-hot, the dataset's class order). Synthetic folders
(``{root}/runs/{run}/synthetic/``, written by the generation job) carry ``source = "synthetic"`` and a manifest.

Mixing: for each tail (medium) class with n real train positives, ``train.aug_ratio_tail`` (``_medium``) x n
synthetic rows positive for that class join the training set, chosen with a seeded generator from the synthetic rows
not yet chosen (a row positive for two classes counts for both). Ratio 0 means real data only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from trcgl.config import AugmentConfig, TrainConfig
from trcgl.data.dataset import DatasetInfo
from trcgl.data.images import decode_prepared
from trcgl.storage import Storage

log = logging.getLogger(__name__)


def synthetic_parts(storage: Storage, folders: Sequence[str]) -> list[str]:
    """Manifest-listed Parquet parts of the synthetic folders (relative to the root, or full URIs under it)."""
    parts = []
    for folder in folders:
        rel = folder[len(storage.root) :].lstrip("/") if folder.startswith(storage.root) else folder.strip("/")
        parts += [storage.path(p) for p in storage.iter_manifest_files(rel, ".parquet") if "/part-" in p]
    return parts


def choose_synthetic(
    synthetic_labels: np.ndarray, info: DatasetInfo, train: TrainConfig
) -> tuple[np.ndarray, dict[str, int]]:
    """Which synthetic rows join training.

    Args:
        synthetic_labels: (M, K) labels of every available synthetic row (1, 0 or UNKNOWN).
        info: dataset classes, groups and real train counts.
        train: the per-group augmentation ratios and seed.

    Returns:
        (sorted indices of chosen rows, {class: rows chosen for it}).
    """
    ratios = {"tail": train.aug_ratio_tail, "medium": train.aug_ratio_medium, "head": 0.0}
    rng = np.random.default_rng(train.seed)
    chosen = np.zeros(len(synthetic_labels), dtype=bool)
    per_class: dict[str, int] = {}
    for k in np.argsort(info.train_counts, kind="stable"):  # rarest first
        ratio = ratios[info.groups[k]]
        want = int(round(ratio * info.train_counts[k]))
        if want <= 0:
            continue
        have = int((synthetic_labels[chosen, k] == 1).sum())  # positives only (a label may be UNKNOWN, 255)
        candidates = np.flatnonzero((synthetic_labels[:, k] == 1) & ~chosen)
        take = rng.permutation(candidates)[: max(0, want - have)]
        if have + len(take) < want:
            log.warning(
                "class %r: %d synthetic rows wanted, only %d available", info.classes[k], want, have + len(take)
            )
        chosen[take] = True
        per_class[info.classes[k]] = have + len(take)
    return np.flatnonzero(chosen), per_class


def choose_generated(
    storage: Storage, folders: Sequence[str], info: DatasetInfo, train: TrainConfig
) -> tuple[list[str], list[str], dict[str, int]]:
    """The generated rows (synthetic or oracle: mixed alike) that join training, chosen by :func:`choose_synthetic`.

    Args:
        storage: the storage root.
        folders: published folders of generated rows (:func:`trcgl.records.extra_folders`).
        info: dataset classes, groups and real train counts.
        train: the per-group augmentation ratios and seed.

    Returns:
        (the folders' Parquet parts, sorted image ids of the chosen rows, {class: rows chosen for it}).
    """
    parts = synthetic_parts(storage, folders)
    ids: list[str] = []
    rows: list[list[int]] = []
    for p in parts:
        t = pq.read_table(storage.pyarrow_fs.open_input_file(p), columns=["image_id", "labels"])
        ids += t["image_id"].to_pylist()
        rows += t["labels"].to_pylist()
    labels = np.asarray(rows, dtype=np.uint8).reshape(len(ids), info.num_classes)  # (M, K)
    chosen, per_class = choose_synthetic(labels, info, train)
    return parts, sorted({ids[i] for i in chosen}), per_class


def choose_resampled(
    real_labels: np.ndarray, info: DatasetInfo, train: TrainConfig
) -> tuple[np.ndarray, dict[str, int]]:
    """Extra copies of real train rows: class-balanced re-sampling, the cheap alternative to synthetic images.

    The same per-group ratios as :func:`choose_synthetic` (``ratio x train positives`` extra rows per class, rarest
    class first, rows already added for a rarer class counting for every class they carry), but the extra rows are
    copies of the class's real positives drawn with replacement, seeded by ``train.seed``.

    Args:
        real_labels: (N, K) multi-hot labels of the real train rows.
        info: dataset classes, groups and real train counts.
        train: the per-group ratios and seed.

    Returns:
        ((N,) extra copies per real row, {class: extra rows carrying it}).
    """
    ratios = {"tail": train.aug_ratio_tail, "medium": train.aug_ratio_medium, "head": 0.0}
    rng = np.random.default_rng(train.seed)
    copies = np.zeros(len(real_labels), dtype=np.int64)
    per_class: dict[str, int] = {}
    for k in np.argsort(info.train_counts, kind="stable"):  # rarest first
        want = int(round(ratios[info.groups[k]] * info.train_counts[k]))
        positives = np.flatnonzero(real_labels[:, k] == 1)
        if want <= 0 or len(positives) == 0:
            continue
        have = int(copies[positives].sum())
        if want > have:
            np.add.at(copies, rng.choice(positives, size=want - have, replace=True), 1)
        per_class[info.classes[k]] = int(copies[positives].sum())
    return copies, per_class


def decode_batch(images: Sequence[bytes], labels: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray Data numpy batch columns → tensors.

    Returns:
        (images (B, 1, S, S) float32 in [0, 1], targets (B, K) float32).
    """
    x = np.stack([decode_prepared(b) for b in images])[:, None]  # (B, 1, S, S)
    y = np.stack([np.asarray(v, dtype=np.float32) for v in labels])  # (B, K)
    return torch.from_numpy(x), torch.from_numpy(y)


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Small random affine (rotation, translation, scale) and intensity changes, per image.

    No horizontal flip unless ``cfg.hflip``: laterality matters on chest X-rays (heart on the left, findings placed
    by side).

    Args:
        x: (B, 1, S, S) in [0, 1].
        cfg: augmentation strengths.
        generator: seeded by the caller (seed, epoch, rank), so augmentation is reproducible.

    Returns:
        (B, 1, S, S) in [0, 1].
    """
    b = x.shape[0]

    def uniform(scale: float) -> torch.Tensor:
        return (torch.rand(b, generator=generator) * 2 - 1) * scale  # (B,)

    angle = uniform(math.radians(cfg.rotate_deg))
    scale = 1.0 + uniform(cfg.scale)
    tx, ty = uniform(2 * cfg.translate), uniform(2 * cfg.translate)  # grid units span 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, S, S, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.hflip:
        flip = torch.rand(b, generator=generator) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    contrast = (1.0 + uniform(cfg.contrast))[:, None, None, None]
    brightness = uniform(cfg.brightness)[:, None, None, None]
    return ((out - mean) * contrast + mean + brightness).clamp(0.0, 1.0)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup then cosine decay to 0: the multiplier of the base learning rate at ``step``."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
