"""``python -m jobs.benchmark prepare``: our Ray Data prepare against torchxrayvision's PC_Dataset + DataLoader.

Both read the same PadChest-Synth PNGs (rendered once, flat layout, because PC_Dataset always reads
``imgpath/ImageID``) and produce antialiased resized images of the same size: ours as Parquet shards, theirs as
tensors from a ``torch.utils.data.DataLoader(num_workers=2)``. Figures are ratios measured in the same run, since the
machine is shared and absolute times drift.

Memory: peak resident memory of the whole process tree (driver + Ray's processes + workers), sampled every 0.1 s,
minus the tree's idle level just before the job, at 1x and ``scale``x the rows. The ``scale``x rows reuse the same
pixels under new ImageIDs (hard links), so rendering time does not grow.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import ray

from trcgl.config import Config, load_config
from trcgl.data.ray_prepare import run_prepare
from trcgl.data.ray_synth import run_synthesize
from trcgl.data.synth.source import CSV_FILE, source_name
from trcgl.storage import Storage, source_dir

log = logging.getLogger(__name__)


@dataclass
class PrepareBenchResult:
    rows: int
    ours_images_per_s: float
    baseline_images_per_s: float
    baseline_images: int
    peak_mb_1x: float
    peak_mb_nx: float
    scale: int

    @property
    def speed_ratio(self) -> float:
        return self.ours_images_per_s / self.baseline_images_per_s

    @property
    def memory_growth(self) -> float:
        return self.peak_mb_nx / self.peak_mb_1x

    def lines(self) -> list[str]:
        return [
            f"prepare  rows={self.rows}  ours (Ray Data, 2 CPUs): {self.ours_images_per_s:.1f} images/s",
            f"prepare  baseline (PC_Dataset + DataLoader num_workers=2, {self.baseline_images} images): "
            f"{self.baseline_images_per_s:.1f} images/s",
            f"prepare  speed ratio ours/baseline: {self.speed_ratio:.2f}x  (target >= 1.0)",
            f"prepare  peak memory above idle: {self.peak_mb_1x:.0f} MB at 1x, {self.peak_mb_nx:.0f} MB at "
            f"{self.scale}x rows -> growth {self.memory_growth:.2f}x  (target < 1.5x)",
        ]


class TreeMemorySampler:
    """Samples the resident memory of this process and all its descendants (Ray's included) in a thread."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def tree_rss() -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.tree_rss())
            time.sleep(self.interval_s)

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def render_source(cfg: Config) -> tuple[Path, Path]:
    """Renders (or reuses) the flat PadChest-Synth source; returns (csv path, images dir)."""
    run_synthesize(cfg)
    storage = Storage(cfg.storage.root, cfg.storage)
    base = source_dir(source_name(cfg))
    return Path(storage.uri(base, CSV_FILE)), Path(storage.uri(base, "images"))


def scaled_copy(csv: Path, images: Path, scale: int, out: Path) -> tuple[Path, Path]:
    """``scale`` copies of every row under new ImageIDs and PatientIDs, images hard-linked (same pixels)."""
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    (out / "images").mkdir(parents=True, exist_ok=True)
    copies = []
    for k in range(scale):
        part = df.copy()
        part["ImageID"] = f"x{k}_" + part["ImageID"]
        part["PatientID"] = f"x{k}_" + part["PatientID"]
        for old, new in zip(df["ImageID"], part["ImageID"], strict=True):
            target = out / "images" / new
            if not target.exists():
                os.link(images / old, target)
        copies.append(part)
    scaled_csv = out / "scaled.csv.gz"
    pd.concat(copies).to_csv(scaled_csv, index=False)
    return scaled_csv, out / "images"


def time_ours(cfg: Config, csv: Path, images: Path, root: Path, size: int) -> tuple[float, int, float]:
    """Runs our prepare in a fresh local Ray; returns (seconds, rows written, peak MB above idle)."""
    prep = load_config(
        None,
        [
            f"storage.root={root}",
            "data.source=padchest",
            f"data.metadata={csv}",
            f"data.images={images}",
            "data.layout=flat",
            f"data.image_size={size}",
            "data.projections=[PA, AP, AP_horizontal, L]",
            f"ray.num_cpus={cfg.ray.num_cpus or 2}",
        ],
    )
    ray.init(address="local", num_cpus=prep.ray.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        time.sleep(2.0)  # let Ray's own processes settle
        idle = TreeMemorySampler.tree_rss()
        with TreeMemorySampler() as mem:
            t0 = time.perf_counter()
            report = run_prepare(prep)
            seconds = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return seconds, int(report["rows_written"]), (mem.peak - idle) / 2**20


def time_baseline(csv: Path, images: Path, size: int, workers: int = 2) -> tuple[float, int]:
    """torchxrayvision's PC_Dataset through a DataLoader; returns (seconds, images). Import time excluded."""
    import torch
    import torchvision
    import torchxrayvision as xrv

    transform = torchvision.transforms.Compose([xrv.datasets.XRayCenterCrop(), xrv.datasets.XRayResizer(size)])
    ds = xrv.datasets.PC_Dataset(
        imgpath=str(images),
        csvpath=str(csv),
        views=["PA", "AP", "AP Supine", "L"],
        transform=transform,
        unique_patients=False,
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=workers)
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        n += batch["img"].shape[0]
    return time.perf_counter() - t0, n


def run(
    rows: int = 2000, render_size: int = 512, size: int = 224, scale: int = 10, workdir: str | None = None
) -> PrepareBenchResult:
    """Runs the whole prepare benchmark and returns its figures."""
    work = Path(workdir or tempfile.mkdtemp(prefix="trcgl-bench-prepare-"))
    cfg = load_config(
        "demo",
        [
            f"storage.root={work / 'root'}",
            f"synth.rows={rows}",
            f"synth.size={render_size}",
            "synth.layout=flat",
            "synth.tail_floor=5",
            "ray.num_cpus=2",
        ],
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        csv, images = render_source(cfg)
    finally:
        ray.shutdown()
    log.info("benchmark: baseline PC_Dataset + DataLoader")
    base_s, base_n = time_baseline(csv, images, size)
    log.info("benchmark: ours at 1x")
    ours_s, ours_n, peak1 = time_ours(cfg, csv, images, work / "out1", size)
    log.info("benchmark: ours at %dx rows", scale)
    big_csv, big_images = scaled_copy(csv, images, scale, work / "scaled")
    _, big_n, peak_n = time_ours(cfg, big_csv, big_images, work / "outN", size)
    if big_n != scale * ours_n:
        raise RuntimeError(f"scaled prepare wrote {big_n} rows, expected {scale * ours_n}")
    if workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return PrepareBenchResult(
        rows=ours_n,
        ours_images_per_s=ours_n / ours_s,
        baseline_images_per_s=base_n / base_s,
        baseline_images=base_n,
        peak_mb_1x=peak1,
        peak_mb_nx=peak_n,
        scale=scale,
    )
