"""``python -m jobs.benchmark scale``: render + prepare of PadChest-Synth at growing row counts, and what it costs.

For each size (a row count, or ``full``: ``synth.rows=all``, every usable frontal and lateral metadata row) the demo
preset renders PadChest-Synth and prepares it, as ``jobs.prepare`` does (``run_synthesize`` then ``run_prepare``),
into a fresh storage root under ``--workdir``, on a fresh local Ray with 2 CPUs. Recorded per size: wall seconds and
images/s of each stage, and the peak resident memory of the whole process tree (this driver, Ray's GCS, raylet and
workers), sampled every 0.5 s, both absolute and above the tree's idle level just before the stages (the
``prepare`` benchmark's sampler). RSS counts the object store's shared pages in every process that maps them, so
the figure errs high. Ratios against the smallest size say how the cost grows: time per row (1.0: linear time) and
peak memory above idle (1.0: flat memory).

Then one classifier epoch (the demo model, ``train.epochs=1``) on the largest dataset streamed from its Parquet parts
(``train.cache_mb=0``: too big to hold) and on the smallest held in the object store (the default), as images/s of
the train loop (``history.json``), and their ratio.
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

from trcgl_dev.benchmarks.ray_prepare_bench import TreeMemorySampler

log = logging.getLogger(__name__)

FULL = "full"  # --sizes word for every row (synth.rows=all)
TARGET_SECONDS = 3600.0  # issue 19: render + prepare of every row within 60 minutes on 2 cores
TARGET_PEAK_MB = 4096.0  # and at most 4 GB for the whole process tree


@dataclass
class ScaleRun:
    """Render + prepare at one size.

    Attributes:
        size: the ``--sizes`` word (a row count or ``full``).
        rows: images rendered (the subset's rows; the tail floor can add a few).
        prepared: rows the prepared dataset holds (frontal projections of ``data.projections``).
        render_s, prepare_s: wall seconds of each stage.
        peak_mb: peak RSS of the process tree during the stages.
        idle_mb: the tree's RSS just before them.
    """

    size: str
    rows: int
    prepared: int
    render_s: float
    prepare_s: float
    peak_mb: float
    idle_mb: float

    @property
    def seconds(self) -> float:
        return self.render_s + self.prepare_s

    @property
    def above_idle_mb(self) -> float:
        return self.peak_mb - self.idle_mb


@dataclass
class EpochRun:
    """One classifier epoch: ``mode`` is ``streamed`` (train.cache_mb=0) or ``held``."""

    size: str
    mode: str
    train_rows: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.train_rows / self.seconds


@dataclass
class ScaleBenchResult:
    runs: list[ScaleRun]
    epochs: list[EpochRun] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        for r in self.runs:
            out.append(
                f"scale  rows={r.size}: {r.rows} rendered in {r.render_s:.1f} s ({r.rows / r.render_s:.1f} images/s), "
                f"{r.prepared} prepared in {r.prepare_s:.1f} s ({r.prepared / r.prepare_s:.1f} images/s), "
                f"total {r.seconds:.1f} s; peak memory {r.peak_mb:.0f} MB ({r.above_idle_mb:.0f} MB above idle)"
            )
        base = self.runs[0]
        for r in self.runs[1:]:
            per_row = (r.seconds / r.rows) / (base.seconds / base.rows)
            out.append(
                f"scale  rows={r.size} vs {base.size}: {r.rows / base.rows:.1f}x rows, time per row {per_row:.2f}x "
                f"(1.0: linear), peak memory above idle {r.above_idle_mb / max(base.above_idle_mb, 1.0):.2f}x "
                "(1.0: flat)"
            )
        for r in self.runs:
            if r.size == FULL:
                ok = r.seconds <= TARGET_SECONDS and r.peak_mb <= TARGET_PEAK_MB
                out.append(
                    f"scale  full set: {r.seconds / 60:.1f} min (target <= {TARGET_SECONDS / 60:.0f}), peak "
                    f"{r.peak_mb:.0f} MB (target <= {TARGET_PEAK_MB:.0f}): {'met' if ok else 'NOT met'}"
                )
        for e in self.epochs:
            out.append(
                f"scale  classifier epoch, {e.mode} from rows={e.size}: {e.train_rows} train rows in {e.seconds:.1f} s "
                f"({e.images_per_s:.1f} images/s)"
            )
        modes = {e.mode: e for e in self.epochs}
        if {"streamed", "held"} <= set(modes):
            ratio = modes["streamed"].images_per_s / modes["held"].images_per_s
            out.append(f"scale  classifier epoch images/s streamed/held: {ratio:.2f}x")
        return out


def _config(root: Path, size: str, render_size: int, image_size: int, extra: tuple[str, ...] = (), preset="demo"):
    from trcgl.config import load_config

    rows = "all" if size == FULL else str(int(size))
    return load_config(
        preset,
        [
            f"storage.root={root}",
            f"synth.rows={rows}",
            f"synth.size={render_size}",
            f"data.image_size={image_size}",
            "ray.num_cpus=2",
            *extra,
        ],
    )


def measure_size(root: Path, size: str, render_size: int, image_size: int, preset: str) -> tuple[ScaleRun, str]:
    """Renders and prepares one size into ``root`` on a fresh local Ray (or the running one, in tests); returns the
    run and the dataset name."""
    import ray

    from trcgl.data.ray_prepare import run_prepare
    from trcgl.data.ray_synth import run_synthesize

    cfg = _config(root, size, render_size, image_size, preset=preset)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        time.sleep(2.0)  # let Ray's own processes settle
        idle = TreeMemorySampler.tree_rss()
        with TreeMemorySampler(interval_s=0.5) as mem:
            t0 = time.perf_counter()
            synth = run_synthesize(cfg)
            t1 = time.perf_counter()
            report = run_prepare(cfg)
            t2 = time.perf_counter()
    finally:
        if started:
            ray.shutdown()
    run = ScaleRun(size, int(synth["rows"]), int(report["rows_written"]), t1 - t0, t2 - t1, mem.peak / 2**20,
                   idle / 2**20)  # fmt: skip
    log.info("scale %s: %s", size, run)
    return run, report["dataset"]


def measure_epoch(
    root: Path, size: str, dataset: str, mode: str, render_size: int, image_size: int, preset: str
) -> EpochRun:
    """One classifier epoch of the demo model on ``dataset``, streamed (train.cache_mb=0) or held (the default)."""
    import ray

    from trcgl.data.dataset import load_dataset_info
    from trcgl.storage import Storage
    from trcgl.train.ray_train import run_training

    run = f"scale-epoch-{mode}-{time.strftime('%H%M%S')}"
    extra = [f"train.dataset={dataset}", f"train.run={run}", "train.epochs=1", "train.bootstrap=10"]
    if mode == "streamed":
        extra.append("train.cache_mb=0")
    cfg = _config(root, size, render_size, image_size, tuple(extra), preset)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_training(cfg)
    finally:
        if started:
            ray.shutdown()
    history = json.loads((root / "runs" / run / "classifier" / "history.json").read_text())
    train_rows = int(load_dataset_info(Storage(str(root)), dataset).split_sizes["train"])
    return EpochRun(size, mode, train_rows, float(history[0]["epoch_seconds"]))


def run(argv: list[str]) -> ScaleBenchResult:
    """Parses the ``scale`` options, measures every size (smallest first) and the two epochs."""
    args = parser().parse_args(argv)
    sizes = sorted(args.sizes, key=lambda s: float("inf") if s == FULL else int(s))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="trcgl-bench-scale-"))
    runs, datasets = [], []
    try:
        for size in sizes:
            root = work / f"rows-{size}"
            shutil.rmtree(root, ignore_errors=True)  # a fresh storage root: nothing rendered or prepared yet
            scale_run, dataset = measure_size(root, size, args.render_size, args.size, args.preset)
            runs.append(scale_run)
            datasets.append(dataset)
        result = ScaleBenchResult(runs)
        if not args.no_epoch:
            for i, mode in ((len(sizes) - 1, "streamed"), (0, "held")):
                root = work / f"rows-{sizes[i]}"
                sized = (args.render_size, args.size, args.preset)
                result.epochs.append(measure_epoch(root, sizes[i], datasets[i], mode, *sized))
        return result
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def _size(text: str) -> str:
    if text != FULL and not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"a size is a positive row count or {FULL!r}, got {text!r}")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.benchmark scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--sizes", nargs="+", default=["2000", "20000", FULL], type=_size,
                   help="row counts, or 'full' for every usable metadata row (synth.rows=all)")  # fmt: skip
    p.add_argument("--workdir", default=None, help="keep each size's storage root here (default: a temp dir, removed)")
    p.add_argument("--render-size", type=int, default=256, help="synth.size: side of the rendered PNGs")
    p.add_argument("--size", type=int, default=64, help="data.image_size: side of the prepared images")
    p.add_argument("--no-epoch", action="store_true", help="skip the two classifier epochs")
    p.add_argument("--preset", default="demo", help="config preset (tests: tiny)")
    return p
