"""``python -m jobs.benchmark generate``: generation routes and the actor pool.

The same untrained models (the preset's diffusion architecture: throughput does not depend on the weights), the same
tail-class plan (cxr-lt-30 prompts, per-image seeds), sampling steps and batch size, one CPU thread per generator:

(a) the route the presets use: the generator class, in a plain loop in this process, at ``data.image_size`` in edit
    mode (``generate.mode=edit``, the preset's strength and region, real-format donor images read from a prepared
    Parquet part), each row with its empty-prompt control (``generate.controls``);
(c) the route before it, rebuilt here (the generator class now refuses it): the same architecture at 32 px, sampling
    from noise, each image upsampled to ``data.image_size`` (PIL bilinear) and no control;
(b) the Ray Data actor-pool job (``ray_generate.generate_parts``) on route (a), with 1 actor, then with 2 actors.

Model loading and Parquet writes are inside every timing, as they are in the job; one part of (a) and of (c) runs
untimed first, so neither timing carries the process's first-call costs. Printed: images/s, a/c (the new
route's cost in throughput), b/a with 1 actor (target >= 0.9) and the scaling from 1 to 2 actors (ideal 2.0 on 2 free
cores); for (a) and (c) also images per CPU-second of this process, which other load on the machine does not
change. ``--no-pool`` skips (b) (no Ray).
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from trcgl.config import Config, load_config
from trcgl.data.images import encode_prepared, resize_square
from trcgl.data.labelsets import load_file
from trcgl.diffusion.model import TextToXray
from trcgl.diffusion.plan import PLAN_COLUMNS, derived_seed, generate_in_process, output_schema, part_payloads
from trcgl.diffusion.prompts import build_prompt, prompt_vocabulary
from trcgl.diffusion.ray_generate import generate_parts
from trcgl.storage import Storage

log = logging.getLogger(__name__)

OLD_SIZE = 32  # the generator's side before generation moved to data.image_size


@dataclass
class GenerateBenchResult:
    images: int
    steps: int
    batch: int
    size: int
    strength: float
    loop: float  # (a) images/s
    old: float  # (c) images/s
    loop_cpu: float  # (a) images per CPU-second of this process (robust to other load on the machine)
    old_cpu: float  # (c) the same
    pool1: float | None  # (b) images/s, None when skipped
    pool2: float | None

    def lines(self) -> list[str]:
        head = f"generate  {self.images} images, {self.steps} steps, batch {self.batch}, 1 thread each"
        new = f"{self.size}px edit at strength {self.strength} + control"
        out = [
            f"{head}: (a) {new}, in-process loop {self.loop:.2f} images/s ({self.loop_cpu:.2f} per CPU-s)",
            f"{head}: (c) {OLD_SIZE}px sampling upsampled to {self.size}px, no control, in-process loop "
            f"{self.old:.2f} images/s ({self.old_cpu:.2f} per CPU-s)",
            f"generate  new route / old route (a/c): {self.loop / self.old:.2f} wall, "
            f"{self.loop_cpu / self.old_cpu:.2f} CPU time",
        ]
        if self.pool1 is not None and self.pool2 is not None:
            out += [
                f"{head}: (b) {new}, Ray Data actor pool, 1 actor {self.pool1:.2f} images/s",
                f"{head}: (b) {new}, Ray Data actor pool, 2 actors {self.pool2:.2f} images/s",
                f"generate  ratio b/a with 1 actor: {self.pool1 / self.loop:.2f}  (target >= 0.9)",
                f"generate  scaling 1 -> 2 actors: {self.pool2 / self.pool1:.2f}x  (ideal 2.0)",
            ]
        return out


def make_plan(images: int, rows_per_file: int, donor_file: str, donors: int) -> pd.DataFrame:
    """A tail-class-like plan without a dataset: cxr-lt-30 prompts, derived seeds, donors from one Parquet part."""
    classes = load_file("cxr-lt-30").classes
    k = len(classes)
    rows = []
    for i in range(images):
        c = classes[1 + i % (k - 1)]
        labels = [0] * k
        labels[classes.index(c)] = 1
        rows.append(
            {
                "image_id": f"bench-{i:05d}",
                "target_class": c,
                "labels": labels,
                "prompt": build_prompt([c], ["loc left"], "PA"),
                "seed": derived_seed("bench", i),
                "localizations": ["loc left"],
                "donor_id": f"donor-{i % donors:05d}",
                "donor_file": donor_file,
            }
        )
    plan = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    plan["part"] = [i // rows_per_file for i in range(images)]
    return plan


def write_donors(path: Path, n: int, size: int) -> None:
    """A prepared-format Parquet part of n smooth random images (image_id, image) to edit."""
    rng = np.random.default_rng(0)
    low = rng.random((n, 8, 8), dtype=np.float32)
    images = [encode_prepared(resize_square(x, size)) for x in low]
    pq.write_table(pa.table({"image_id": [f"donor-{i:05d}" for i in range(n)], "image": images}), path)


def old_route(cfg: Config, model_dir: str, plan: pd.DataFrame, out_dir: str, num_classes: int) -> None:
    """The generator's loop before generation moved to ``data.image_size``: sample at the model's side, upsample
    each image to ``data.image_size``, write one Parquet part per plan part (no controls)."""
    storage = Storage(cfg.storage.root, cfg.storage)
    model = TextToXray.from_pretrained(model_dir).eval()
    size, bs = cfg.data.image_size, cfg.generate.batch_size
    for p, rows in plan.groupby("part", sort=True):
        images: list[bytes] = []
        for start in range(0, len(rows), bs):
            chunk = rows.iloc[start : start + bs]
            pixels = model.sample(list(chunk["prompt"]), [int(s) for s in chunk["seed"]])  # (b, 32, 32)
            images += [encode_prepared(resize_square(x, size)) for x in pixels]
        n = len(rows)
        table = pa.Table.from_pydict(
            {
                "image_id": list(rows["image_id"]),
                "image": images,
                "labels": list(rows["labels"]),
                "target_class": list(rows["target_class"]),
                "prompt": list(rows["prompt"]),
                "seed": [int(s) for s in rows["seed"]],
                "source": ["synthetic"] * n,
                "generator": [model.checkpoint_id()] * n,
                "mode": ["sample"] * n,
                "donor_id": [None] * n,
                "control_image": [None] * n,
            },
            schema=output_schema(num_classes),
        )
        storage.write_parquet(posixpath.join(out_dir, f"part-{int(p):05d}.parquet"), table)


def run(
    images: int = 32, steps: int = 10, batch: int = 8, preset: str = "demo", pool: bool = True
) -> GenerateBenchResult:
    """Measures (a), (c) and, with ``pool``, (b); starts (and stops) a local Ray with 2 CPUs unless one is running."""
    work = Path(tempfile.mkdtemp(prefix="trcgl-bench-generate-"))
    overrides = [
        f"storage.root={work}",
        f"diffusion.sample_steps={steps}",
        f"generate.batch_size={batch}",
        "generate.cpus_per_actor=1",
        "generate.rows_per_file=4",
        "generate.mode=edit",
    ]
    base = load_config(preset, overrides)
    old_cfg = load_config(preset, [*overrides, f"diffusion.image_size={OLD_SIZE}", "generate.mode=sample"])
    classes = load_file("cxr-lt-30").classes
    vocabulary = prompt_vocabulary(classes, ["loc left"])
    for cfg, name in ((base, "model"), (old_cfg, "model-old")):
        TextToXray.build(cfg.diffusion, vocabulary).save_pretrained(str(work / name))
    donors = work / "donors.parquet"
    write_donors(donors, min(images, 16), base.data.image_size)
    plan = make_plan(images, base.generate.rows_per_file, str(donors), min(images, 16))
    torch.set_num_threads(1)
    first = plan[plan["part"] == 0]  # warm-up, untimed: one part of each route (first-call costs of the process)
    generate_in_process(base, str(work / "model"), first, "warm-new", len(classes))
    old_route(old_cfg, str(work / "model-old"), first, "warm-old", len(classes))
    rates: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for route in ("new", "old"):  # (a) then (c)
        t0, c0 = time.perf_counter(), time.process_time()
        if route == "new":
            generate_in_process(base, str(work / "model"), plan, "out-loop", len(classes))
        else:
            old_route(old_cfg, str(work / "model-old"), plan, "out-old", len(classes))
        rates[route] = images / (time.perf_counter() - t0)
        cpu[route] = images / (time.process_time() - c0)
        log.info("%s route: %.2f images/s, %.2f per CPU-s", route, rates[route], cpu[route])
    pools: list[float | None] = [None, None]
    if pool:
        started = not ray.is_initialized()
        if started:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            for i, actors in enumerate((1, 2)):
                sizes = [f"generate.actors_min={actors}", f"generate.actors_max={actors}"]
                cfg = load_config(preset, [*overrides, *sizes])
                t0 = time.perf_counter()
                generate_parts(cfg, part_payloads(plan), str(work / "model"), f"out-pool{actors}", len(classes))
                pools[i] = images / (time.perf_counter() - t0)
                log.info("(b) %d actor(s): %.2f images/s", actors, pools[i])
        finally:
            if started:
                ray.shutdown()
    return GenerateBenchResult(
        images,
        steps,
        batch,
        base.data.image_size,
        base.generate.strength,
        rates["new"],
        rates["old"],
        cpu["new"],
        cpu["old"],
        *pools,
    )
