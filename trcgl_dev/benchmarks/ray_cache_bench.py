"""``python -m jobs.benchmark cache``: Ray Train epochs with the data streamed from storage vs held in memory.

The same training job four times per stage on the tiny PadChest-Synth (rendered and prepared first, under
``--workdir``), on one local Ray with 2 CPUs: with ``train.cache_mb=0`` ("streamed": every epoch executes the
dataset's read and filter tasks again, as Ray Train does with a lazy dataset) and with the default ``train.cache_mb``
("held": the driver reads the splits once and holds them in the object store). Classifier, then diffusion training.
Each run has its own run name, so none resumes another.

The modes run in both orders, streamed then held, then held then streamed: on one warm Ray the later run of a pair
starts with what the earlier one left (idle worker processes with torch and the model code imported, the dataset's
files in the OS page cache), so a single fixed order would credit that to the mode that always runs second.

Printed per stage, order and mode: the train loop's seconds per epoch (from ``history.json``; the first epoch also
warms up), their mean after the first, and the whole run's seconds (``run_training`` / ``run_train_diffusion``,
evaluation included); then held / streamed for each order, and the mean of the orders' ratios, in which an order
effect that helps whichever mode runs second cancels to first order (below 1.0: holding is faster).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


ORDERS = (("streamed", "held"), ("held", "streamed"))  # each mode once first, once second


@dataclass
class CacheRun:
    """One timed training run.

    Attributes:
        stage: ``classifier`` or ``diffusion``.
        mode: ``streamed`` (``train.cache_mb=0``) or ``held``.
        epoch_seconds: the train loop's seconds per epoch.
        run_seconds: the whole run, evaluation included.
        first: the mode that ran first in this run's pair (the order it belongs to).
    """

    stage: str
    mode: str
    epoch_seconds: list[float]
    run_seconds: float
    first: str = "streamed"

    @property
    def steady(self) -> float:
        """Mean seconds per epoch after the first (the first when there is only one)."""
        rest = self.epoch_seconds[1:] or self.epoch_seconds
        return sum(rest) / len(rest)


@dataclass
class CacheRatio:
    """held / streamed of one stage: for one order of the pair, or the mean over the orders."""

    stage: str
    order: str  # "streamed first", "held first", or "mean of N orders"
    epoch: float  # ratio of the steady seconds per epoch
    run: float  # ratio of the whole runs' seconds


@dataclass
class CacheBenchResult:
    rows: dict[str, int]
    runs: list[CacheRun] = field(default_factory=list)

    def ratios(self) -> list[CacheRatio]:
        """held / streamed per stage and order (in the order they ran), then per stage the mean of its orders'
        ratios when it ran in more than one order."""
        by = {(r.stage, r.first, r.mode): r for r in self.runs}
        out: list[CacheRatio] = []
        for stage in dict.fromkeys(r.stage for r in self.runs):
            pairs = []
            for first in dict.fromkeys(r.first for r in self.runs if r.stage == stage):
                held, streamed = by.get((stage, first, "held")), by.get((stage, first, "streamed"))
                if held and streamed:
                    pairs.append(CacheRatio(stage, f"{first} first", held.steady / streamed.steady,
                                            held.run_seconds / streamed.run_seconds))  # fmt: skip
            out += pairs
            if len(pairs) > 1:
                out.append(CacheRatio(stage, f"mean of {len(pairs)} orders", sum(p.epoch for p in pairs) / len(pairs),
                                      sum(p.run for p in pairs) / len(pairs)))  # fmt: skip
        return out

    def lines(self) -> list[str]:
        out = [f"cache  tiny PadChest-Synth: {self.rows.get('train', 0)} train / {self.rows.get('val', 0)} val rows"]
        for r in self.runs:
            epochs = " ".join(f"{s:.1f}" for s in r.epoch_seconds)
            out.append(f"cache  {r.stage:<10} {r.mode:<8} ({r.first} first): epochs {epochs} s (after the first: "
                       f"{r.steady:.1f} s); run {r.run_seconds:.1f} s")  # fmt: skip
        for q in self.ratios():
            out.append(f"cache  {q.stage:<10} held/streamed, {q.order}: epoch {q.epoch:.2f}, run {q.run:.2f}")
        return out


def _history(root: Path, run: str, stage: str) -> list[float]:
    history = json.loads((root / "runs" / run / stage / "history.json").read_text())
    return [float(h["epoch_seconds"]) for h in history]


def run(workdir: str | None = None, epochs: int = 3, stages: tuple[str, ...] = ("classifier", "diffusion")):
    """Renders and prepares the tiny dataset, then times each stage streamed and held, in both orders (see the
    module docstring)."""
    import ray

    from trcgl.config import load_config
    from trcgl.data.dataset import load_dataset_info
    from trcgl.diffusion.ray_diffusion import run_train_diffusion
    from trcgl.ray_runtime import local_dashboard
    from trcgl.storage import Storage
    from trcgl.train.ray_train import run_training
    from trcgl_dev.benchmarks.ray_faults_bench import prepare_tiny

    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="trcgl-bench-cache-"))
    root.mkdir(parents=True, exist_ok=True)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, log_to_driver=False, **local_dashboard())
    try:
        dataset = prepare_tiny(root)
        result = CacheBenchResult(rows=load_dataset_info(Storage(str(root)), dataset).split_sizes)
        tag = time.strftime("%H%M%S")
        for stage in stages:
            for order in ORDERS:
                for mode in order:
                    name = f"cache-{stage}-{order[0]}-first-{mode}-{tag}"
                    overrides = [
                        f"storage.root={root}",
                        f"train.dataset={dataset}",
                        f"train.run={name}",
                        "train.bootstrap=10",
                        f"train.epochs={epochs}",
                        f"diffusion.epochs={epochs}",
                    ]
                    if mode == "streamed":
                        overrides.append("train.cache_mb=0")  # held: the preset's default cache_mb
                    cfg = load_config("tiny", overrides)
                    t0 = time.perf_counter()
                    (run_training if stage == "classifier" else run_train_diffusion)(cfg)
                    seconds = time.perf_counter() - t0
                    result.runs.append(CacheRun(stage, mode, _history(root, name, stage), seconds, first=order[0]))
                    log.info("%s %s (%s first): %.1f s", stage, mode, order[0], seconds)
        return result
    finally:
        if started:
            ray.shutdown()
        if not workdir:
            shutil.rmtree(root, ignore_errors=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``cache`` subcommand's options."""
    p.add_argument("--workdir", default=None, help="keep the dataset and runs here (default: a temp dir, removed)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each run")
    p.add_argument("--stages", nargs="+", choices=["classifier", "diffusion"], default=["classifier", "diffusion"])
