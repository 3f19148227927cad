"""Evaluating a classifier checkpoint on a prepared split with Ray Data batch inference on an actor pool."""

from __future__ import annotations

import logging
import math
import posixpath

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from trcgl.config import Config, to_dict
from trcgl.data.dataset import COLUMNS, DatasetInfo, load_dataset_info, read_dataset
from trcgl.metrics import evaluate_scores, per_class_frame
from trcgl.ray_parquet import read_parts
from trcgl.storage import Storage
from trcgl.train.predict import Predictor

log = logging.getLogger(__name__)


ROWS_PER_ACTOR = 512  # a predictor actor loads the model once: not worth it for fewer rows than this


def score_rows(cfg: Config, checkpoint_uri: str, ds: ray.data.Dataset, rows: int | None = None) -> pd.DataFrame:
    """Scores a dataset of prepared-format rows (image_id, image, labels) with a checkpoint on an actor pool.

    Args:
        rows: how many rows ``ds`` holds, when known: the pool then grows to at most one actor per
            ``ROWS_PER_ACTOR`` rows (never past ``train.num_workers``), so a small split loads the model once.

    Returns:
        image_id, scores (K floats), labels (K ints), ordered by image_id.
    """
    actors = max(1, cfg.train.num_workers)
    if rows is not None:
        actors = max(1, min(actors, math.ceil(rows / ROWS_PER_ACTOR)))
    scored = ds.select_columns(COLUMNS).map_batches(
        Predictor,
        fn_constructor_kwargs={"checkpoint": checkpoint_uri, "storage": to_dict(cfg.storage)},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        batch_size=64,
        batch_format="numpy",
        num_gpus=1 if cfg.train.use_gpu else 0,
        num_cpus=cfg.train.cpus_per_worker,
    )
    return scored.to_pandas().sort_values("image_id").reset_index(drop=True)


def predict_local(
    cfg: Config, checkpoint_uri: str, info: DatasetInfo, split: str, batch_size: int = 64
) -> pd.DataFrame:
    """Scores every row of one split in this process (the same :class:`Predictor` the actor pool runs).

    Returns:
        image_id, scores (K floats), labels (K ints), ordered by image_id, as :func:`score_rows`.
    """
    storage = Storage(cfg.storage.root, cfg.storage)
    table = read_dataset(storage, info.name, split, columns=list(COLUMNS))
    predictor = Predictor(checkpoint_uri, to_dict(cfg.storage), device="cpu")
    out: list[pd.DataFrame] = []
    for batch in table.select(list(COLUMNS)).to_batches(max_chunksize=batch_size):
        cols = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in COLUMNS}
        scored = predictor(cols)
        out.append(
            pd.DataFrame(
                {"image_id": scored["image_id"], "scores": list(scored["scores"]), "labels": list(scored["labels"])}
            )
        )
    if not out:
        return pd.DataFrame(columns=["image_id", "scores", "labels"])
    return pd.concat(out).sort_values("image_id").reset_index(drop=True)


def predict_split(cfg: Config, checkpoint_uri: str, info: DatasetInfo, split: str) -> pd.DataFrame:
    """Scores every row of one split of a prepared dataset: on a Ray Data actor pool (see :func:`score_rows`), or,
    for a CPU run and a split of at most ``train.eval_local_rows`` images, here (:func:`predict_local`)."""
    rows = info.split_sizes.get(split)
    if rows is not None and rows <= cfg.train.eval_local_rows and not cfg.train.use_gpu:
        out = predict_local(cfg, checkpoint_uri, info, split)
    else:
        storage = Storage(cfg.storage.root, cfg.storage)
        ds = read_parts(info.parts, storage.pyarrow_fs, [*COLUMNS, "split"])
        out = score_rows(cfg, checkpoint_uri, ds.filter(expr=f"split == '{split}'"), rows=rows)
    if out.empty:
        raise ValueError(f"split {split!r} of dataset {info.name!r} has no rows")
    return out


def evaluate_checkpoint(
    cfg: Config, checkpoint_uri: str, dataset: str, split: str, out_rel: str, history: list[dict] | None = None
) -> dict:
    """Scores a split, computes the paper's metrics with bootstrap intervals, writes files and report pictures.

    Writes under ``out_rel``: ``metrics.json``, ``per_class.parquet``, ``predictions.parquet`` and ``report/``
    (per-class AP against train frequency, head/medium/tail bars, training curves when a history is given, class
    attention maps on test images).
    """
    storage = Storage(cfg.storage.root, cfg.storage)
    info = load_dataset_info(storage, dataset)
    preds = predict_split(cfg, checkpoint_uri, info, split)
    scores = np.stack(preds["scores"].to_numpy()).astype(np.float64)  # (N, K)
    targets = np.stack(preds["labels"].to_numpy()).astype(np.int64)  # (N, K)
    result = evaluate_scores(
        scores, targets, info.classes, info.groups, bootstrap=cfg.train.bootstrap, seed=cfg.train.seed
    )
    result.update({"checkpoint": checkpoint_uri, "dataset": dataset, "split": split})
    table = per_class_frame(result)
    table["train_count"] = [int(info.train_counts[info.classes.index(c)]) for c in table["class"]]
    storage.write_json(posixpath.join(out_rel, "metrics.json"), result)
    storage.write_parquet(
        posixpath.join(out_rel, "per_class.parquet"), pa.Table.from_pandas(table, preserve_index=False)
    )
    pred_table = pa.table(
        {
            "image_id": preds["image_id"].astype(str).tolist(),
            "scores": [list(map(float, s)) for s in scores],
            "labels": [list(map(int, t)) for t in targets],
        }
    )
    storage.write_parquet(posixpath.join(out_rel, "predictions.parquet"), pred_table)
    from trcgl.train import report  # lazy: matplotlib stays out of the Train workers, which import this module

    pictures = report.make_report(cfg, storage, checkpoint_uri, info, result, table, split, history)
    for name, png in pictures.items():
        storage.write_bytes(posixpath.join(out_rel, "report", name), png)
    log.info(
        "%s on %s/%s: mAP %.4f mAUC %.4f tail mAP %s",
        checkpoint_uri,
        dataset,
        split,
        result["mAP"],
        result["mAUC"],
        result["tail_mAP"],
    )
    return result
