"""Classifier checkpoints: one folder with the weights and everything needed to rebuild and use the model.

Layout of a checkpoint folder (a Ray Train checkpoint, or ``{root}/runs/{run}/classifier/best/``)::

    model.pt      state dict of the bare model (no DDP prefix)
    meta.json     resolved config, dataset info (classes, groups, train counts, co-occurrence), epoch, val metrics,
                  and the per-class decision thresholds chosen on the epoch's val predictions
                  (``thresholds``: :func:`trcgl.train.thresholds.threshold_record`; absent in older checkpoints)
    adjacency.npy the label-graph adjacency the GCN used (K, K), when the GCN is on
    state.pt      optimiser, scheduler step, epoch, history, best score (training checkpoints only; for resuming)
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trcgl.config import Config, StorageConfig, config_hash, from_dict, to_dict
from trcgl.data.dataset import DatasetInfo
from trcgl.models import build_adjacency, build_model
from trcgl.storage import Storage, filesystem_for

log = logging.getLogger(__name__)

MODEL_FILE, META_FILE, STATE_FILE, ADJ_FILE = "model.pt", "meta.json", "state.pt", "adjacency.npy"


def bare(model: nn.Module) -> nn.Module:
    """The model without a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def model_signature(cfg: Config, dataset: str) -> str:
    """What must match to load weights into a model: the model section and the dataset."""
    return config_hash({"model": to_dict(cfg.model), "dataset": dataset})


def checkpoint_files(
    model: nn.Module,
    cfg: Config,
    info: DatasetInfo,
    epoch: int,
    metrics: dict[str, Any],
    state: dict | None = None,
    thresholds: dict[str, Any] | None = None,
) -> dict[str, bytes]:
    """Serialises a checkpoint as {file name: bytes} (written to a local folder or to storage by the caller).

    Args:
        thresholds: the decision thresholds chosen on val (:func:`trcgl.train.thresholds.threshold_record`), stored
            in ``meta.json``; None: none stored.
    """
    files: dict[str, bytes] = {}
    buf = io.BytesIO()
    torch.save(bare(model).state_dict(), buf)
    files[MODEL_FILE] = buf.getvalue()
    meta = {
        "config": to_dict(cfg),
        "dataset": info.to_dict(),
        "epoch": epoch,
        "metrics": metrics,
        "signature": model_signature(cfg, info.name),
    }
    if thresholds is not None:
        meta["thresholds"] = thresholds
    files[META_FILE] = json.dumps(meta, indent=1, default=float).encode()
    if cfg.model.gcn:
        buf = io.BytesIO()
        adj = build_adjacency(info.cooccurrence, cfg.model.gcn_tau, cfg.model.gcn_p, cfg.model.gcn_adjacency).numpy()
        np.save(buf, adj)
        files[ADJ_FILE] = buf.getvalue()
    if state is not None:
        buf = io.BytesIO()
        torch.save(state, buf)
        files[STATE_FILE] = buf.getvalue()
    return files


def write_local(folder: str | Path, files: dict[str, bytes]) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def write_storage(storage: Storage, rel_dir: str, files: dict[str, bytes]) -> None:
    """Writes a checkpoint folder to storage, meta.json last (its presence marks a complete folder)."""
    for name in sorted(files, key=lambda n: n == META_FILE):
        storage.write_bytes(posixpath.join(rel_dir, name), files[name])


def read_files(
    uri: str, storage_cfg: StorageConfig | None = None, names: tuple[str, ...] = (META_FILE, MODEL_FILE)
) -> dict:
    """Reads files of a checkpoint folder given as a local path or s3:// URI."""
    fs, path = filesystem_for(uri, storage_cfg or StorageConfig())
    out = {}
    for name in names:
        try:
            with fs.open_input_stream(posixpath.join(path, name), compression=None) as fh:
                out[name] = fh.read()
        except (FileNotFoundError, OSError) as exc:
            raise FileNotFoundError(f"checkpoint {uri!r} has no {name} ({exc})") from exc
    return out


def load_model(uri: str, storage_cfg: StorageConfig | None = None) -> tuple[nn.Module, dict]:
    """Rebuilds a model from a checkpoint folder (local or s3://); returns (model in eval mode, meta)."""
    files = read_files(uri, storage_cfg)
    meta = json.loads(files[META_FILE])
    cfg = from_dict(meta["config"], f"checkpoint {uri}")
    info = DatasetInfo.from_dict(meta["dataset"])
    model = build_model(cfg.model, info.num_classes, info.cooccurrence)
    model.load_state_dict(torch.load(io.BytesIO(files[MODEL_FILE]), map_location="cpu", weights_only=True))
    model.eval()
    return model, meta


def load_training_state(folder: str | Path) -> tuple[dict, dict, dict]:
    """(model state dict, training state, meta) from a local training-checkpoint folder."""
    folder = Path(folder)
    model_state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    meta = json.loads((folder / META_FILE).read_text())
    return model_state, state, meta
