"""``python -m jobs.benchmark cache``: Ray Train epochs with the data streamed from storage vs held in memory.

The same training job twice on the tiny PadChest-Synth (rendered and prepared first, under ``--workdir``), on one
local Ray with 2 CPUs: first with ``train.cache_mb=0`` (every epoch executes the dataset's read and filter tasks
again, as Ray Train does with a lazy dataset), then with the default ``train.cache_mb`` (the driver reads the splits
once and holds them in the object store). Classifier, then diffusion training. Each run has its own run name, so
neither resumes the other.

Printed per stage and mode: the train loop's seconds per epoch (from ``history.json``; the first epoch also warms
up), their mean after the first, and the whole run's seconds (``run_training`` / ``run_train_diffusion``, evaluation
included); then held / streamed for both (below 1.0: holding is faster).
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


@dataclass
class CacheRun:
    stage: str  # classifier | diffusion
    mode: str  # streamed | held
    epoch_seconds: list[float]
    run_seconds: float

    @property
    def steady(self) -> float:
        """Mean seconds per epoch after the first (the first when there is only one)."""
        rest = self.epoch_seconds[1:] or self.epoch_seconds
        return sum(rest) / len(rest)


@dataclass
class CacheBenchResult:
    rows: dict[str, int]
    runs: list[CacheRun] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"cache  tiny PadChest-Synth: {self.rows.get('train', 0)} train / {self.rows.get('val', 0)} val rows"]
        for r in self.runs:
            epochs = " ".join(f"{s:.1f}" for s in r.epoch_seconds)
            out.append(f"cache  {r.stage:<10} {r.mode:<8}: epochs {epochs} s (after the first: {r.steady:.1f} s); "
                       f"run {r.run_seconds:.1f} s")  # fmt: skip
        by = {(r.stage, r.mode): r for r in self.runs}
        for stage in dict.fromkeys(r.stage for r in self.runs):
            held, streamed = by.get((stage, "held")), by.get((stage, "streamed"))
            if held and streamed:
                out.append(f"cache  {stage:<10} held/streamed: epoch {held.steady / streamed.steady:.2f}, "
                           f"run {held.run_seconds / streamed.run_seconds:.2f}")  # fmt: skip
        return out


def _history(root: Path, run: str, stage: str) -> list[float]:
    history = json.loads((root / "runs" / run / stage / "history.json").read_text())
    return [float(h["epoch_seconds"]) for h in history]


def run(workdir: str | None = None, epochs: int = 3, stages: tuple[str, ...] = ("classifier", "diffusion")):
    """Renders and prepares the tiny dataset, then times each stage streamed and held (see the module docstring)."""
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
        ray.init(num_cpus=2, log_to_driver=False, **local_dashboard())
    try:
        dataset = prepare_tiny(root)
        result = CacheBenchResult(rows=load_dataset_info(Storage(str(root)), dataset).split_sizes)
        tag = time.strftime("%H%M%S")
        for stage in stages:
            for mode, cache in (("streamed", "train.cache_mb=0"), ("held", None)):
                name = f"cache-{stage}-{mode}-{tag}"
                overrides = [f"storage.root={root}", f"train.dataset={dataset}", f"train.run={name}",
                             "train.bootstrap=10", f"train.epochs={epochs}", f"diffusion.epochs={epochs}"]  # fmt: skip
                cfg = load_config("tiny", overrides + ([cache] if cache else []))
                t0 = time.perf_counter()
                (run_training if stage == "classifier" else run_train_diffusion)(cfg)
                seconds = time.perf_counter() - t0
                result.runs.append(CacheRun(stage, mode, _history(root, name, stage), seconds))
                log.info("%s %s: %.1f s", stage, mode, seconds)
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
