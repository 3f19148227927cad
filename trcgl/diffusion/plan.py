"""The generation plan and the generator class, without Ray.

A plan is a table with one row per image to make: the class it is for, the label set and prompt it is made with, its
seed and its output id. For each tail (and, with ``generate.aug_ratio_medium``, medium) class with n real train
positives, ``round(ratio x n)`` images (at most ``generate.per_class_max``) are planned. Image i of class k copies the
label set and localizations of a real train row positive for k (chosen by a seed derived from the row identity), so
synthetic rows keep real co-occurrence instead of carrying the single tail label.

Every choice derives from (``generate.seed``, class, index): nothing depends on worker, batch or order, so a rerun,
another actor count or another batch size plans the same rows. Rows are cut into files of ``generate.rows_per_file``;
file j is ``part-{j:05d}.parquet`` and a file that exists is skipped on a rerun.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from trcgl.config import Config, GenerateConfig, StorageConfig, from_dict, to_dict
from trcgl.data.dataset import DatasetInfo
from trcgl.data.images import encode_prepared, resize_square
from trcgl.diffusion.prompts import build_prompt
from trcgl.storage import Storage
from trcgl.train.devices import amp_enabled

log = logging.getLogger(__name__)


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from any identifying parts (stable across processes and Python versions)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def class_counts(info: DatasetInfo, cfg: GenerateConfig) -> dict[int, int]:
    """Images to make per class index (only classes with a positive ratio and train positives)."""
    ratios = {"tail": cfg.aug_ratio_tail, "medium": cfg.aug_ratio_medium, "head": 0.0}
    out = {}
    for k, (group, n) in enumerate(zip(info.groups, info.train_counts, strict=True)):
        want = min(cfg.per_class_max, int(round(ratios[group] * int(n))))
        if want > 0 and n > 0:
            out[k] = want
    return out


def make_plan(info: DatasetInfo, train_rows: pd.DataFrame, cfg: GenerateConfig) -> pd.DataFrame:
    """The generation plan.

    Args:
        info: dataset classes, groups, train counts.
        train_rows: real train rows with ``labels`` (K multi-hot), ``localizations`` and ``projection``.
        cfg: ratios, caps, seed, rows per file.

    Returns:
        Columns image_id, target_class, labels (K list), prompt, seed, part; ordered by (class index, index).
    """
    labels = np.asarray(train_rows["labels"].tolist(), dtype=np.uint8).reshape(len(train_rows), info.num_classes)
    rows = []
    for k, n in sorted(class_counts(info, cfg).items()):
        donors = np.flatnonzero(labels[:, k] == 1)
        slug = info.classes[k].replace(" ", "-")
        for i in range(n):
            donor = int(donors[derived_seed(cfg.seed, "donor", info.classes[k], i) % len(donors)])
            row_labels = labels[donor]
            classes = [c for c, v in zip(info.classes, row_labels, strict=True) if v]
            rows.append(
                {
                    "image_id": f"syn-{slug}-{i:05d}",
                    "target_class": info.classes[k],
                    "labels": row_labels.tolist(),
                    "prompt": build_prompt(
                        classes, list(train_rows["localizations"].iat[donor]), str(train_rows["projection"].iat[donor])
                    ),
                    "seed": derived_seed(cfg.seed, "image", info.classes[k], i),
                }
            )
    plan = pd.DataFrame(rows, columns=["image_id", "target_class", "labels", "prompt", "seed"])
    plan["part"] = np.arange(len(plan)) // cfg.rows_per_file
    return plan


def part_name(part: int) -> str:
    return f"part-{part:05d}.parquet"


def output_schema(num_classes: int) -> pa.Schema:
    """Synthetic rows: the prepared-dataset columns the classifier reads, plus provenance."""
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("image", pa.binary()),
            ("labels", pa.list_(pa.uint8(), num_classes)),
            ("target_class", pa.string()),
            ("prompt", pa.string()),
            ("seed", pa.int64()),
            ("source", pa.string()),
            ("generator", pa.string()),
        ]
    )


class Generator:
    """Samples plan parts and writes each as one Parquet file (Ray Data runs it on an actor pool; tests call it).

    Args:
        cfg: the whole config as a plain dict.
        model_uri: diffusion model folder (local or s3://).
        out_dir: output folder relative to the storage root.
        num_classes: K.
    """

    def __init__(self, cfg: dict, model_uri: str, out_dir: str, num_classes: int) -> None:
        # lazy: diffusers and transformers, needed only in the generation actors, not in planning or row reads
        from trcgl.diffusion.model import TextToXray

        self.cfg = from_dict(cfg, "generator")
        self.storage = Storage(self.cfg.storage.root, self.cfg.storage)
        self.out_dir, self.num_classes = out_dir, num_classes
        want_gpu = self.cfg.generate.num_gpus > 0
        if want_gpu and not torch.cuda.is_available():
            log.warning(
                "generate.num_gpus=%s but CUDA is not available on this node: sampling on the CPU",
                self.cfg.generate.num_gpus,
            )
        self.device = torch.device("cuda" if want_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(self.cfg.generate.cpus_per_actor)))
        self.model = TextToXray.from_pretrained(model_uri, StorageConfig(**cfg["storage"])).to(self.device).eval()
        self.generator_id = self.model.checkpoint_id()
        self.amp = amp_enabled(self.cfg.diffusion.amp, self.device)  # bf16 sampling on CUDA only

    def write_part(self, part: int, rows: pd.DataFrame) -> tuple[int, bool]:
        """Samples and writes one part unless it exists; returns (rows, skipped)."""
        rel = posixpath.join(self.out_dir, part_name(part))
        if self.storage.exists(rel):
            return len(rows), True
        size, bs = self.cfg.data.image_size, self.cfg.generate.batch_size
        images: list[bytes] = []
        for start in range(0, len(rows), bs):
            chunk = rows.iloc[start : start + bs]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                pixels = self.model.sample(list(chunk["prompt"]), [int(s) for s in chunk["seed"]])  # (b, S, S)
            images += [encode_prepared(resize_square(np.asarray(p, dtype=np.float32), size)) for p in pixels]
        table = pa.Table.from_pydict(
            {
                "image_id": list(rows["image_id"]),
                "image": images,
                "labels": [list(map(int, v)) for v in rows["labels"]],
                "target_class": list(rows["target_class"]),
                "prompt": list(rows["prompt"]),
                "seed": [int(s) for s in rows["seed"]],
                "source": ["synthetic"] * len(rows),
                "generator": [self.generator_id] * len(rows),
            },
            schema=output_schema(self.num_classes),
        )
        self.storage.write_parquet(rel, table)  # one object: the part is whole or absent
        return len(rows), False

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        """Ray Data batch: one row per part, column ``payload`` (JSON of the part's plan rows)."""
        out = []
        for payload in batch["payload"]:
            spec = json.loads(payload)
            t0 = time.perf_counter()
            n, skipped = self.write_part(int(spec["part"]), pd.DataFrame(spec["rows"]))
            out.append({"part": spec["part"], "rows": n, "skipped": skipped, "seconds": time.perf_counter() - t0})
        return pd.DataFrame(out)


def part_payloads(plan: pd.DataFrame) -> list[str]:
    """One JSON payload per part (what travels to an actor)."""
    cols = ["image_id", "target_class", "labels", "prompt", "seed"]
    return [
        json.dumps({"part": int(p), "rows": plan.loc[plan["part"] == p, cols].to_dict(orient="records")})
        for p in sorted(plan["part"].unique())
    ]


def read_train_rows(storage: Storage, info: DatasetInfo) -> pd.DataFrame:
    """Real train rows' labels, localizations and projection (no images)."""
    tables = []
    for p in info.parts:
        t = pq.read_table(
            storage.pyarrow_fs.open_input_file(p),
            columns=["split", "labels", "localizations", "projection", "image_id"],
        )
        tables.append(t.filter(pc.equal(t["split"], "train")))
    return pa.concat_tables(tables).to_pandas().sort_values("image_id").reset_index(drop=True)


def generate_in_process(cfg: Config, model_uri: str, plan: pd.DataFrame, out_dir: str, num_classes: int) -> int:
    """The same work without Ray (tests, the benchmark's baseline); returns rows written."""

    gen = Generator(to_dict(cfg), model_uri, out_dir, num_classes)
    written = 0
    for p in sorted(plan["part"].unique()):
        n, skipped = gen.write_part(int(p), plan[plan["part"] == p].reset_index(drop=True))
        written += 0 if skipped else n
    return written
