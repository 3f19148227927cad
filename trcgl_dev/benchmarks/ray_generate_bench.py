"""``python -m jobs.benchmark generate``: the generation actor pool against a plain in-process loop.

The same model (the demo's diffusion architecture, untrained: throughput does not depend on the weights), the same
plan (tail-class prompts, per-image seeds), sampling steps and batch size, one CPU thread per generator:

(a) a plain loop in this process over the generator class;
(b) the Ray Data actor-pool job (``ray_generate.generate_parts``) with 1 actor, then with 2 actors.

Model loading and Parquet writes are inside every timing, as they are in the job. Printed: images/s, b/a with 1 actor
(target >= 0.9) and the scaling from 1 to 2 actors (ideal 2.0 on 2 free cores).
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import ray
import torch

from trcgl.config import load_config
from trcgl.data.labelsets import load_file
from trcgl.diffusion.model import TextToXray
from trcgl.diffusion.plan import derived_seed, generate_in_process, part_payloads
from trcgl.diffusion.prompts import build_prompt, prompt_vocabulary
from trcgl.diffusion.ray_generate import generate_parts

log = logging.getLogger(__name__)


@dataclass
class GenerateBenchResult:
    images: int
    steps: int
    batch: int
    size: int
    loop: float
    pool1: float
    pool2: float

    def lines(self) -> list[str]:
        head = f"generate  {self.images} images, {self.size}px, {self.steps} steps, batch {self.batch}, 1 thread each"
        return [
            f"{head}: (a) in-process loop {self.loop:.2f} images/s",
            f"{head}: (b) Ray Data actor pool, 1 actor {self.pool1:.2f} images/s",
            f"{head}: (b) Ray Data actor pool, 2 actors {self.pool2:.2f} images/s",
            f"generate  ratio b/a with 1 actor: {self.pool1 / self.loop:.2f}  (target >= 0.9)",
            f"generate  scaling 1 -> 2 actors: {self.pool2 / self.pool1:.2f}x  (ideal 2.0)",
        ]


def make_plan(images: int, rows_per_file: int) -> pd.DataFrame:
    """A tail-class-like plan without a dataset: cxr-lt-30 prompts, derived seeds."""
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
            }
        )
    plan = pd.DataFrame(rows)
    plan["part"] = [i // rows_per_file for i in range(images)]
    return plan


def run(images: int = 32, steps: int = 10, batch: int = 8, preset: str = "demo") -> GenerateBenchResult:
    """Measures (a) and (b); starts (and stops) a local Ray with 2 CPUs unless one is running."""
    work = Path(tempfile.mkdtemp(prefix="trcgl-bench-generate-"))
    overrides = [
        f"storage.root={work}",
        f"diffusion.sample_steps={steps}",
        f"generate.batch_size={batch}",
        "generate.cpus_per_actor=1",
        "generate.rows_per_file=4",
    ]
    base = load_config(preset, overrides)
    classes = load_file("cxr-lt-30").classes
    model = TextToXray.build(base.diffusion, prompt_vocabulary(classes, ["loc left"]))
    model_dir = str(work / "model")
    model.save_pretrained(model_dir)
    plan = make_plan(images, base.generate.rows_per_file)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    generate_in_process(base, model_dir, plan, "out-loop", len(classes))
    loop = images / (time.perf_counter() - t0)
    log.info("(a) %.2f images/s", loop)
    rates = []
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for actors in (1, 2):
            cfg = load_config(preset, [*overrides, f"generate.actors_min={actors}", f"generate.actors_max={actors}"])
            t0 = time.perf_counter()
            generate_parts(cfg, part_payloads(plan), model_dir, f"out-pool{actors}", len(classes))
            rates.append(images / (time.perf_counter() - t0))
            log.info("(b) %d actor(s): %.2f images/s", actors, rates[-1])
    finally:
        if started:
            ray.shutdown()
    return GenerateBenchResult(images, steps, batch, base.diffusion.image_size, loop, rates[0], rates[1])
