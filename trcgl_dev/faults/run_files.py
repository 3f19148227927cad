"""What a training run leaves in storage, read back for the kill scenarios' figures.

A training stage's folder (``<root>/runs/<run>/<stage>``) holds Ray Train's ``checkpoint_manager_snapshot.json``
(the checkpoints Ray Train has registered) and the run's ``history.json`` (one entry per epoch rank 0 reported, with
``start_epoch``: where the attempt that trained it began, and ``train_images`` / ``train_id_checksum``: the rows that
epoch fed, summed over the workers). The scenarios poll these files while the job writes them, so a file caught
mid-write reads as empty rather than failing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def registered_epochs(folder: Path) -> list[int]:
    """Epochs of the checkpoints Ray Train has registered for the stage in ``folder`` (sorted; [] when none yet)."""
    try:
        data = json.loads((folder / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or caught mid-write
        return []
    return sorted(int(r["metrics"]["epoch"]) for r in data.get("checkpoint_results", []))


def read_history(folder: Path) -> list[dict[str, Any]]:
    """The stage's ``history.json`` ([] when not written yet or caught mid-write)."""
    try:
        return json.loads((folder / "history.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def train_ids(root: Path, dataset: str, diffusion_weights: dict[str, float] | None = None) -> list[str]:
    """Image ids of a prepared dataset's train split as one epoch feeds them.

    Args:
        root: the storage root holding the dataset.
        dataset: the prepared dataset's name.
        diffusion_weights: None for the classifier (each train row once); for diffusion training the group weights,
            which repeat rows by group as ``repeat_by_group`` does.
    """
    import pyarrow.compute as pc

    from trcgl.data.dataset import read_dataset
    from trcgl.storage import Storage

    table = read_dataset(Storage(str(root)), dataset)
    train = table.filter(pc.equal(table["split"], "train")).select(["image_id", "labels"])
    if diffusion_weights is None:
        return train["image_id"].to_pylist()
    from trcgl.data.dataset import load_dataset_info
    from trcgl.diffusion.grouping import repeat_by_group

    info = load_dataset_info(Storage(str(root)), dataset)
    return repeat_by_group(train.to_pandas(), info.groups, diffusion_weights)["image_id"].tolist()


def epochs_saw_each_row_once(history: list[dict[str, Any]], ids: list[str], workers: int) -> bool:
    """Whether every epoch in ``history`` saw each of ``ids`` once, over all workers (count and id checksum).

    Ray Train splits a dataset into equal shards (DDP needs the same number of batches on every worker), which
    leaves out ``len(ids) % workers`` rows per epoch, different ones each epoch. So the count must be
    ``len(ids) - len(ids) % workers`` and the checksum the full one less at most that many rows' CRC-32s.
    An empty history is False: nothing was trained.
    """
    from trcgl.train.ray_common import id_checksum

    dropped = len(ids) % workers
    full = id_checksum(ids)
    for h in history:
        if h.get("train_images") != len(ids) - dropped:
            return False
        missing = full - int(h.get("train_id_checksum", -1))
        if not (missing == 0 if dropped == 0 else 0 < missing < dropped * 2**32):
            return False
    return bool(history)
