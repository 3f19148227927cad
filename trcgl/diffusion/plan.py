"""The generation plan and the generator class, without Ray.

A plan is a table with one row per image to make: the class it is for, the label set and prompt it is made with, its
seed, its output id and, in edit mode, the real image it is edited from. For each tail (and, with
``generate.aug_ratio_medium``, medium) class with n real train positives, ``round(ratio x n)`` images (at most
``generate.per_class_max``) are planned.

``generate.mode``:

* ``sample``: image i of class k is drawn from noise with the label set, localizations and projection of a real train
  row positive for k (chosen by a seed derived from the row identity), so synthetic rows keep real co-occurrence
  instead of carrying the single tail label.
* ``edit``: image i of class k is a real train row NEGATIVE for k (the donor) edited towards its own label set plus k
  (``normal`` dropped), restricted with ``generate.region`` to the side and level of the localizations of a real
  positive of k (:mod:`trcgl.diffusion.regions`); the prompt names the new label set, those localizations and the
  donor's projection. The finding lands on many real anatomies and label combinations, which duplication cannot do.

Every choice derives from (``generate.seed``, class, index): nothing depends on worker, batch or order, so a rerun,
another actor count or another batch size plans the same rows. Rows are cut into files of ``generate.rows_per_file``;
file j is ``part-{j:05d}.parquet`` and a file that exists is skipped on a rerun. With ``generate.controls`` each row
also carries a control image: the same seed, donor, strength and mask with the empty prompt, so the generator's own
texture can be measured apart from the finding.
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
from trcgl.data.images import decode_prepared, encode_prepared
from trcgl.diffusion.prompts import EMPTY_PROMPT, build_prompt
from trcgl.diffusion.regions import region_mask
from trcgl.storage import Storage
from trcgl.train.devices import amp_enabled

log = logging.getLogger(__name__)


NORMAL = "normal"  # the label-set class an edit that adds a finding removes
PLAN_COLUMNS = ["image_id", "target_class", "labels", "prompt", "seed", "localizations", "donor_id", "donor_file"]


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
    """The generation plan (module docstring: the two modes).

    Args:
        info: dataset classes, groups, train counts.
        train_rows: real train rows with ``image_id``, ``labels`` (K multi-hot), ``localizations`` and
            ``projection``; edit mode also needs ``file`` (the prepared Parquet part holding the row), as
            :func:`read_train_rows` gives them.
        cfg: mode, ratios, caps, seed, rows per file.

    Returns:
        Columns image_id, target_class, labels (K list), prompt, seed, localizations (the list the prompt and the
        region use), donor_id (the real train row the labels come from: the positive copied in sample mode, the
        negative edited in edit mode), donor_file (edit mode: the prepared part holding the donor's image; else
        None), part; ordered by (class index, index).
    """
    labels = np.asarray(train_rows["labels"].tolist(), dtype=np.uint8).reshape(len(train_rows), info.num_classes)
    normal = info.classes.index(NORMAL) if NORMAL in info.classes else None
    edit = cfg.mode == "edit"
    rows = []
    for k, n in sorted(class_counts(info, cfg).items()):
        name = info.classes[k]
        positives = np.flatnonzero(labels[:, k] == 1)
        negatives = np.flatnonzero(labels[:, k] == 0)  # known negatives: a row unknown for k is never edited
        if edit and not len(negatives):
            log.warning("class %r: no train row is negative for it, nothing to edit", name)
            continue
        slug = name.replace(" ", "-")
        for i in range(n):
            donor_file = None
            if edit:  # the image of a negative, the labels plus k, the localizations of a positive
                donor = int(negatives[derived_seed(cfg.seed, "donor", name, i) % len(negatives)])
                positive = int(positives[derived_seed(cfg.seed, "region", name, i) % len(positives)])
                row_labels = labels[donor].copy()
                row_labels[k] = 1
                if normal is not None:
                    row_labels[normal] = 0
                donor_file = str(train_rows["file"].iat[donor])
            else:  # everything from a positive
                donor = positive = int(positives[derived_seed(cfg.seed, "donor", name, i) % len(positives)])
                row_labels = labels[positive]
            localizations = [str(v) for v in train_rows["localizations"].iat[positive]]
            classes = [c for c, v in zip(info.classes, row_labels, strict=True) if v == 1]  # not UNKNOWN (255)
            rows.append(
                {
                    "image_id": f"syn-{slug}-{i:05d}",
                    "target_class": name,
                    "labels": row_labels.tolist(),
                    "prompt": build_prompt(classes, localizations, str(train_rows["projection"].iat[donor])),
                    "seed": derived_seed(cfg.seed, "image", name, i),
                    "localizations": localizations,
                    "donor_id": str(train_rows["image_id"].iat[donor]),
                    "donor_file": donor_file,
                }
            )
    plan = pd.DataFrame(rows, columns=PLAN_COLUMNS)
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
            ("mode", pa.string()),  # generate.mode: "sample" or "edit"
            ("donor_id", pa.string()),  # the real train row the labels come from (edit: the image edited too)
            # the same path with the empty prompt (same seed, donor, strength and mask): the generator's own texture;
            # null with generate.controls off
            ("control_image", pa.binary()),
        ]
    )


class Generator:
    """Samples or edits plan parts and writes each as one Parquet file (Ray Data runs it on an actor pool; tests call
    it).

    Args:
        cfg: the whole config as a plain dict.
        model_uri: diffusion model folder (local or s3://).
        out_dir: output folder relative to the storage root.
        num_classes: K.

    Raises:
        ValueError: the model's output side is not ``data.image_size`` (synthetic rows are never resized).
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
        if self.model.cfg.image_size != self.cfg.data.image_size:
            raise ValueError(
                f"the diffusion model at {model_uri} makes {self.model.cfg.image_size} px images but "
                f"'data.image_size' is {self.cfg.data.image_size}: synthetic rows are never resized; train one with "
                f"diffusion.image_size={self.cfg.data.image_size}"
            )
        self.generator_id = self.model.checkpoint_id()
        self.amp = amp_enabled(self.cfg.diffusion.amp, self.device)  # bf16 sampling on CUDA only

    def _donor_images(self, rows: pd.DataFrame) -> np.ndarray:
        """(n, S, S) float32 in [0, 1]: each row's donor image, read once per prepared part it lies in."""
        found: dict[str, bytes] = {}
        for file, ids in rows.groupby("donor_file", sort=True)["donor_id"]:
            wanted = sorted(set(ids))
            table = pq.read_table(
                self.storage.pyarrow_fs.open_input_file(file),
                columns=["image_id", "image"],
                filters=[("image_id", "in", wanted)],
            )
            found.update(zip(table["image_id"].to_pylist(), table["image"].to_pylist(), strict=True))
            missing = set(wanted) - set(found)
            if missing:
                raise FileNotFoundError(f"donor images {sorted(missing)[:3]} are not in {file}")
        images = np.stack([decode_prepared(found[i]) for i in rows["donor_id"]])  # (n, S, S)
        size = self.cfg.data.image_size
        if images.shape[1:] != (size, size):
            raise ValueError(f"donor images are {images.shape[1]} px but 'data.image_size' is {size}")
        return images

    def _make(
        self, prompts: list[str], seeds: list[int], donors: np.ndarray | None, masks: np.ndarray | None
    ) -> np.ndarray:
        """(b, S, S) in [0, 1]: sampled from noise, or edited from the donors (b, S, S) within masks (b, S, S)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            if donors is None:
                return self.model.sample(prompts, seeds)
            return self.model.edit(donors, prompts, seeds, self.cfg.generate.strength, masks)

    def write_part(self, part: int, rows: pd.DataFrame) -> tuple[int, bool]:
        """Samples or edits one part, with its control images, and writes it unless it exists; returns (rows,
        skipped)."""
        rel = posixpath.join(self.out_dir, part_name(part))
        if self.storage.exists(rel):
            return len(rows), True
        g, size = self.cfg.generate, self.cfg.data.image_size
        edit = g.mode == "edit"
        donors = self._donor_images(rows) if edit else None  # (n, S, S)
        masks = None
        if edit and g.region:
            masks = np.stack([region_mask(list(locs), size) for locs in rows["localizations"]])  # (n, S, S)
        images: list[bytes] = []
        controls: list[bytes | None] = []
        for start in range(0, len(rows), g.batch_size):
            cut = slice(start, start + g.batch_size)
            prompts, seeds = list(rows["prompt"].iloc[cut]), [int(s) for s in rows["seed"].iloc[cut]]
            chunk_donors = None if donors is None else donors[cut]
            chunk_masks = None if masks is None else masks[cut]
            pixels = self._make(prompts, seeds, chunk_donors, chunk_masks)  # (b, S, S)
            if pixels.shape[1:] != (size, size):
                raise ValueError(f"the generator made {pixels.shape[1]} px images, 'data.image_size' is {size}")
            images += [encode_prepared(p) for p in pixels]
            if g.controls:
                empty = self._make([EMPTY_PROMPT] * len(prompts), seeds, chunk_donors, chunk_masks)  # (b, S, S)
                controls += [encode_prepared(p) for p in empty]
            else:
                controls += [None] * len(prompts)
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
                "mode": [g.mode] * len(rows),
                "donor_id": [None if v is None else str(v) for v in rows["donor_id"]],
                "control_image": controls,
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
            n, skipped = self.write_part(int(spec["part"]), pd.DataFrame(spec["rows"], columns=PLAN_COLUMNS))
            out.append({"part": spec["part"], "rows": n, "skipped": skipped, "seconds": time.perf_counter() - t0})
        return pd.DataFrame(out)


def part_payloads(plan: pd.DataFrame) -> list[str]:
    """One JSON payload per part (what travels to an actor)."""
    return [
        json.dumps({"part": int(p), "rows": plan.loc[plan["part"] == p, PLAN_COLUMNS].to_dict(orient="records")})
        for p in sorted(plan["part"].unique())
    ]


def read_train_rows(storage: Storage, info: DatasetInfo) -> pd.DataFrame:
    """Real train rows' ids, labels, localizations, projection and the prepared part (``file``) holding each (no
    images)."""
    tables = []
    for p in info.parts:
        t = pq.read_table(
            storage.pyarrow_fs.open_input_file(p),
            columns=["split", "labels", "localizations", "projection", "image_id"],
        )
        t = t.filter(pc.equal(t["split"], "train"))
        tables.append(t.append_column("file", pa.array([p] * t.num_rows, pa.string())))
    return pa.concat_tables(tables).to_pandas().sort_values("image_id").reset_index(drop=True)


def generate_in_process(cfg: Config, model_uri: str, plan: pd.DataFrame, out_dir: str, num_classes: int) -> int:
    """The same work without Ray (tests, the benchmark's baseline); returns rows written."""

    gen = Generator(to_dict(cfg), model_uri, out_dir, num_classes)
    written = 0
    for p in sorted(plan["part"].unique()):
        n, skipped = gen.write_part(int(p), plan[plan["part"] == p].reset_index(drop=True))
        written += 0 if skipped else n
    return written
