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


def is_sum_of_distinct(target: int, values: list[int], k: int) -> bool:
    """Whether ``target`` is the sum of exactly ``k`` entries of ``values`` at distinct positions.

    k = 0 and 1 are a comparison and a set look-up, k = 2 one pass with a set (a two-sum); larger k fix one entry
    at a time down to the two-sum, so the cost grows as ``len(values) ** (k - 1)``: fine for the remainders of a
    few Train workers, which is all the fault suite needs.
    """
    if k < 0 or k > len(values):
        return False
    if k == 0:
        return target == 0
    if k == 1:
        return target in set(values)
    if k == 2:
        seen: set[int] = set()
        for v in values:
            if target - v in seen:
                return True
            seen.add(v)
        return False
    return any(is_sum_of_distinct(target - values[i], values[i + 1 :], k - 1) for i in range(len(values) - k + 1))


def epoch_fed_each_row_once(train_images: int, train_id_checksum: int, ids: list[str], workers: int) -> bool:
    """Whether one epoch's totals (``train_images`` and ``train_id_checksum`` summed over the workers, see
    :class:`trcgl.train.ray_common.EpochRows`) are those of every one of ``ids`` fed once, less what Ray Train's
    equal split leaves out.

    Ray Train splits a dataset into equal shards (DDP needs the same number of batches on every worker), which
    leaves out ``r = len(ids) % workers`` rows per epoch, different ones each epoch. So the count must be exactly
    ``len(ids) - r``, and the checksum must fall short of the full one by exactly the :func:`id_checksum` of ``r``
    of the rows: 0 when ``r`` is 0, else the CRC-32 sum of ``r`` entries of ``ids`` at distinct positions (for the
    classifier, ``r`` distinct train ids; for diffusion, whose ``ids`` repeat rows by group weight, a row may be
    left out as often as it is repeated). A row fed twice in place of two left out (count right with ``r`` = 1) or
    the right count of the wrong rows leaves a shortfall no such choice of rows gives, but for a CRC coincidence.

    Args:
        train_images: rows the epoch fed, summed over the workers.
        train_id_checksum: :func:`~trcgl.train.ray_common.id_checksum` of those rows' ids, summed over the workers.
        ids: the ids one epoch should feed (:func:`train_ids`).
        workers: Ray Train workers.
    """
    from trcgl.train.ray_common import id_checksum

    dropped = len(ids) % workers
    if train_images != len(ids) - dropped:
        return False
    shortfall = id_checksum(ids) - int(train_id_checksum)
    return is_sum_of_distinct(shortfall, [id_checksum([i]) for i in ids], dropped)


def epochs_saw_each_row_once(history: list[dict[str, Any]], ids: list[str], workers: int) -> bool:
    """Whether every epoch in ``history`` fed each of ``ids`` once over all workers, less the equal split's
    remainder (:func:`epoch_fed_each_row_once` on each epoch's ``train_images`` and ``train_id_checksum``).

    An empty history, or an epoch without those figures, is False: nothing (checkable) was trained.
    """
    return bool(history) and all(
        "train_images" in h
        and "train_id_checksum" in h
        and epoch_fed_each_row_once(int(h["train_images"]), int(h["train_id_checksum"]), ids, workers)
        for h in history
    )


def rows_trained(history: list[dict[str, Any]]) -> int:
    """Rows fed to training summed over the epochs of ``history`` (each epoch's ``train_images``; 0 when empty)."""
    return sum(int(h.get("train_images", 0)) for h in history)
