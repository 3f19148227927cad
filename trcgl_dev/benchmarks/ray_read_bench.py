"""``python -m jobs.benchmark read``: one split of a prepared dataset read through Ray Data's first Parquet datasource
(V1, what :func:`trcgl.ray_parquet.read_parts` builds) vs its DataSourceV2 pipeline (Ray 2.60's default).

The tiny PadChest-Synth is rendered and prepared first (under ``--workdir``). Then, twice, a fresh local Ray with 2
CPUs reads the train split (read, filter on the split column, materialize in the object store: what a training job
holds) ``--repeats`` times per datasource, alternating them; the first time V1 reads first, the second time V2. A
fresh Ray's first read also starts what the datasource needs (worker processes, V2's footer-reader actors), so it is
reported apart from the later reads, for each datasource from the Ray on which it read first.

Printed: seconds of the first read on a fresh Ray and the mean of the later reads, per datasource, then V1 / V2 of
each (below 1.0: V1 is faster).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MODES = ("v1", "v2")


@dataclass
class ReadBenchResult:
    """Seconds of each timed read.

    Attributes:
        rows: rows of the split read.
        parts: Parquet files of the dataset.
        first: datasource -> seconds of its read as the first on a fresh Ray.
        later: datasource -> seconds of its other reads.
    """

    rows: int
    parts: int
    first: dict[str, float] = field(default_factory=dict)
    later: dict[str, list[float]] = field(default_factory=dict)

    def mean_later(self, mode: str) -> float:
        values = self.later.get(mode, [])
        return sum(values) / len(values) if values else float("nan")

    def lines(self) -> list[str]:
        out = [f"read  tiny PadChest-Synth train split: {self.rows} rows from {self.parts} Parquet files"]
        for mode in MODES:
            later = " ".join(f"{s:.2f}" for s in self.later.get(mode, []))
            out.append(f"read  {mode}: first read on a fresh Ray {self.first.get(mode, float('nan')):.2f} s; "
                       f"later reads {later} s (mean {self.mean_later(mode):.2f} s)")  # fmt: skip
        v1, v2 = self.first.get("v1"), self.first.get("v2")
        if v1 and v2:
            out.append(f"read  v1/v2 first read on a fresh Ray: {v1 / v2:.2f}")
        if self.later.get("v1") and self.later.get("v2"):
            out.append(f"read  v1/v2 later reads: {self.mean_later('v1') / self.mean_later('v2'):.2f}")
        return out


def timed_read(parts: list[str], fs: object, mode: str) -> tuple[float, int]:
    """Seconds to read, filter and materialize the train split through datasource ``mode``; and its row count."""
    from trcgl.data.dataset import COLUMNS
    from trcgl.ray_parquet import read_parts

    t0 = time.perf_counter()
    ds = read_parts(parts, fs, [*COLUMNS, "split"], v2=mode == "v2").filter(expr="split == 'train'").materialize()
    return time.perf_counter() - t0, ds.count()


def run(workdir: str | None = None, repeats: int = 3) -> ReadBenchResult:
    """Prepares the tiny dataset, then times the reads (see the module docstring)."""
    import ray

    from trcgl.data.dataset import load_dataset_info
    from trcgl.storage import Storage
    from trcgl_dev.benchmarks.ray_faults_bench import prepare_tiny

    if repeats < 2:
        raise ValueError(f"--repeats must be at least 2 (a first read and a later one), got {repeats}")
    if ray.is_initialized():
        raise RuntimeError("the read benchmark starts its own local Ray twice: run it without one")
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="trcgl-bench-read-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            dataset = prepare_tiny(root)
        finally:
            ray.shutdown()
        storage = Storage(str(root))
        info = load_dataset_info(storage, dataset)
        result = ReadBenchResult(rows=info.split_sizes["train"], parts=len(info.parts))
        for order in (MODES, MODES[::-1]):
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
            try:
                for i in range(repeats):
                    for mode in order:
                        seconds, rows = timed_read(info.parts, storage.pyarrow_fs, mode)
                        if rows != result.rows:
                            raise RuntimeError(f"{mode} read {rows} train rows, the dataset has {result.rows}")
                        if i == 0 and mode == order[0]:
                            result.first[mode] = seconds
                        else:
                            result.later.setdefault(mode, []).append(seconds)
                        log.info("%s read %d: %.2f s", mode, i, seconds)
            finally:
                ray.shutdown()
        return result
    finally:
        if not workdir:
            shutil.rmtree(root, ignore_errors=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``read`` subcommand's options."""
    p.add_argument("--workdir", default=None, help="keep the dataset here (default: a temp dir, removed)")
    p.add_argument("--repeats", type=int, default=3, help="reads per datasource on each of the two fresh Rays")
