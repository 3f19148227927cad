"""``python -m jobs.benchmark predict``: jobs.predict on a Ray Data actor pool vs a plain in-process loop.

The same checkpoint (the preset's model architecture with untrained weights: throughput does not depend on the
weights; the cxr-lt-30 classes; thresholds stored as training stores them), the same folder of 16-bit PNGs (12-bit
values with noise, ``--source-size`` px square, as PadChest's are larger than the classifier's input; 64 distinct
images, the rest copies), the same batch size and one torch thread per scorer:

(a) a plain loop in this process: load the model, then per batch read the files, decode and resize them as prepare
    does (:func:`trcgl.data.images.prepared_pixels`), one forward pass, decisions at the thresholds; one Parquet file
    at the end;
(b) ``run_predict`` (the job's library call, listing, record, report and manifest included) with 1 actor, then with
    2 actors, each into a fresh output folder.

Model loading is inside every timing. Untimed first: one batch of (a), so (a) carries no first-call costs of the
process; a local Ray (2 CPUs) is started and one (b) run made on a batch of copies, since the driver's first Ray
Data run imports ray.data and starts Ray Data's own actors. Each timed (b) run starts its scoring actors anew.
Printed: images/s of each, b/a with 1 actor (target >= 0.9) and with 2 actors, the scaling from 1 to 2 actors (ideal
2.0 on 2 free cores), and (b)'s images per second of actor busy time (the parts alone), which shows how much of (b)'s
time is fixed costs: actor start-up (a new process importing torch and the model code), model loading, listing,
report and manifest. The machine's load average is printed with them.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from trcgl.config import load_config
from trcgl.data.dataset import DatasetInfo
from trcgl.data.images import encode_png16, prepared_pixels, resize_square
from trcgl.data.labelsets import load_file
from trcgl.models import build_model
from trcgl.predict.ray_predict import PredictOptions, run_predict
from trcgl.train import checkpoint as ckpt
from trcgl.train.devices import inference_device
from trcgl.train.thresholds import threshold_record

log = logging.getLogger(__name__)


@dataclass
class PredictBenchResult:
    images: int
    source_size: int
    size: int
    backbone: str
    batch: int
    loop: float  # (a) images/s
    pool1: float  # (b) images/s, 1 actor
    pool2: float  # (b) images/s, 2 actors
    busy1: float  # (b) images per second of actor busy time (scoring parts), 1 actor
    busy2: float  # the same, 2 actors (busy time summed over both)
    device: str
    load: list[float]  # the machine's 1-minute load average at the end of (a), (b) 1 actor, (b) 2 actors

    def lines(self) -> list[str]:
        head = (
            f"predict  {self.images} PNGs {self.source_size}px -> {self.size}px {self.backbone}, batch {self.batch}, "
            f"1 thread each, {self.device}"
        )
        return [
            f"{head}: (a) in-process loop {self.loop:.2f} images/s",
            f"{head}: (b) jobs.predict, Ray Data actor pool, 1 actor {self.pool1:.2f} images/s",
            f"{head}: (b) jobs.predict, Ray Data actor pool, 2 actors {self.pool2:.2f} images/s",
            f"predict  (b) per actor-busy second (parts only: no actor start, model load, listing or report): "
            f"{self.busy1:.2f} with 1 actor, {self.busy2:.2f} with 2",
            f"predict  ratio b/a with 1 actor: {self.pool1 / self.loop:.2f}  (target >= 0.9)",
            f"predict  ratio b/a with 2 actors: {self.pool2 / self.loop:.2f}  (ideal 2.0)",
            f"predict  scaling 1 -> 2 actors: {self.pool2 / self.pool1:.2f}x  (ideal 2.0)",
            f"predict  1-minute load average after (a), (b) 1 actor, (b) 2 actors: "
            f"{', '.join(f'{v:.1f}' for v in self.load)} on {os.cpu_count()} cores (other work slows every figure)",
        ]


UNIQUE_IMAGES = 64  # distinct PNGs written; the rest are copies of them (the same bytes to decode, written fast)


def write_images(folder: Path, n: int, side: int) -> list[Path]:
    """n chest-sized 16-bit PNGs with 12-bit values: smooth random fields plus noise, seeded by index (image i is a
    copy of image ``i % UNIQUE_IMAGES``)."""
    folder.mkdir(parents=True, exist_ok=True)
    unique = []
    for i in range(min(n, UNIQUE_IMAGES)):
        rng = np.random.default_rng(i)
        smooth = resize_square(rng.random((8, 8), dtype=np.float32), side)  # (side, side) in [0, 1]
        unique.append(encode_png16(np.clip(smooth * 3500 + rng.normal(0, 60, smooth.shape), 0, 4095).astype(np.uint16)))
    paths = [folder / f"img-{i:05d}.png" for i in range(n)]
    for i, path in enumerate(paths):
        path.write_bytes(unique[i % len(unique)])
    return paths


def write_checkpoint(folder: Path, preset: str, root: Path) -> None:
    """The preset's model on the cxr-lt-30 classes, untrained, with thresholds stored as training stores them."""
    cfg = load_config(preset, [f"storage.root={root}"])
    classes = load_file("cxr-lt-30").classes
    k = len(classes)
    counts = np.arange(k, 0, -1) * 10
    info = DatasetInfo("bench", classes, ["head"] * k, counts, np.diag(counts), cfg.data.image_size, [], {})
    torch.manual_seed(0)
    model = build_model(cfg.model, k, info.cooccurrence)
    rng = np.random.default_rng(0)
    thresholds = threshold_record(rng.random((64, k)), rng.random((64, k)) < 0.2, classes, epoch=0)
    ckpt.write_local(folder, ckpt.checkpoint_files(model, cfg, info, 0, {}, thresholds=thresholds))


def plain_loop(checkpoint: Path, paths: list[Path], batch: int, out: Path, device: torch.device) -> None:
    """(a): what a user would write without the job: read, decode, resize, forward, decide, one Parquet file."""
    model, meta = ckpt.load_model(str(checkpoint))
    model.to(device)
    size, thresholds = int(meta["dataset"]["image_size"]), np.asarray(meta["thresholds"]["values"])
    ids, probs = [], []
    with torch.no_grad():
        for start in range(0, len(paths), batch):
            chunk = paths[start : start + batch]
            x = np.stack([prepared_pixels(p.read_bytes(), size) for p in chunk])[:, None]  # (b, 1, S, S)
            probs.append(torch.sigmoid(model(torch.from_numpy(x).to(device))).float().cpu().numpy())  # (b, K)
            ids += [p.name for p in chunk]
    p = np.concatenate(probs)  # (N, K)
    pq.write_table(pa.table({"image_id": ids, "probs": list(p), "decisions": list(p >= thresholds)}), out)


def run(
    images: int = 512,
    source_size: int = 512,
    preset: str = "demo",
    batch: int = 32,
    rows_per_part: int = 64,
    gpus_per_actor: float = 0.0,
    workdir: str | None = None,
) -> PredictBenchResult:
    """Measures (a) and (b); starts (and stops) a local Ray with 2 CPUs unless one is running."""
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="trcgl-bench-predict-"))
    try:
        paths = write_images(work / "images", images, source_size)
        write_checkpoint(work / "checkpoint", preset, work)
        cfg = load_config(preset, [f"storage.root={work / 'root'}"])
        device = inference_device("cuda" if gpus_per_actor > 0 else "cpu")
        torch.set_num_threads(1)
        plain_loop(work / "checkpoint", paths[:batch], batch, work / "warm.parquet", device)  # untimed warm-up
        t0 = time.perf_counter()
        plain_loop(work / "checkpoint", paths, batch, work / "loop.parquet", device)
        loop = images / (time.perf_counter() - t0)
        load = [os.getloadavg()[0]]
        log.info("(a) in-process loop: %.2f images/s", loop)
        started = not ray.is_initialized()
        if started:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        pools, busy = [], []
        try:
            # untimed: the driver's first Ray Data run imports ray.data and starts Ray Data's own actors (once per
            # driver, like (a)'s first-call costs); every timed run below still starts its scoring actors anew
            warm = write_images(work / "warm-images", min(images, batch), source_size)[0].parent
            run_predict(cfg, PredictOptions(str(work / "checkpoint"), str(warm), out=str(work / "warm"), actors=1))
            for actors in (1, 2):
                opts = PredictOptions(
                    str(work / "checkpoint"),
                    str(work / "images"),
                    out=str(work / f"out-{actors}"),
                    actors=actors,
                    batch_size=batch,
                    rows_per_part=rows_per_part,
                    gpus_per_actor=gpus_per_actor / actors if gpus_per_actor else 0.0,
                    cpus_per_actor=1.0,
                )
                t0 = time.perf_counter()
                report = run_predict(cfg, opts)
                pools.append(images / (time.perf_counter() - t0))
                busy.append(images / max(report["actor_seconds"], 1e-9))
                load.append(os.getloadavg()[0])
                if report["images_scored"] != images:
                    raise RuntimeError(f"{actors} actor(s) scored {report['images_scored']} of {images} images")
                log.info("(b) %d actor(s): %.2f images/s", actors, pools[-1])
        finally:
            if started:
                ray.shutdown()
        size = int(cfg.data.image_size)
        backbone = cfg.model.backbone
        return PredictBenchResult(images, source_size, size, backbone, batch, loop, *pools, *busy, str(device), load)
    finally:
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)
