"""The generation kill scenario: tail-class generation killed after K of N images, then rerun twice.

One tiny diffusion model (given, or trained here for 1 epoch) serves every run through ``generate.model``. The
reference is an uninterrupted run with 1 actor and batch size 4; a second uninterrupted run uses 2 actors and batch
size 16; the faulted run (``python -m jobs.generate`` in its own process group, a driver on the current Ray: see
:func:`trcgl_dev.faults.driver_kill.job_env`) is SIGKILLed once its first Parquet parts exist and before it published
its manifest, then rerun twice: the same command, then the same configuration in this process. Images are compared
byte for byte by image id: every planned image carries its own seed (:mod:`trcgl.diffusion.plan`), so neither the
kill nor the number of actors or the batch size may change a single byte.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from trcgl.config import load_config
from trcgl_dev.faults import Figures
from trcgl_dev.faults.driver_kill import kill_when, run_job

log = logging.getLogger(__name__)

RUN = "gen-fault"


def _images(folder: Path) -> dict[str, list[bytes]]:
    """image id -> every stored copy of its PNG bytes (more than one copy would be a duplicate)."""
    out: dict[str, list[bytes]] = {}
    for part in sorted(folder.glob("part-*.parquet")):
        table = pq.read_table(part, columns=["image_id", "image"])
        for image_id, image in zip(table["image_id"].to_pylist(), table["image"].to_pylist(), strict=True):
            out.setdefault(image_id, []).append(image)
    return out


@dataclass
class GenerationKillResult(Figures):
    """What :func:`generation_kill` measured.

    Attributes:
        planned: images the uninterrupted 1-actor batch-4 run wrote (N).
        killed_after_images: images stored when the job was killed (K).
        reruns_rc: exit codes of the first rerun (the same command) and the second (in this process; 1: it raised).
        images: images stored after both reruns.
        duplicates: stored copies beyond the first of any image id.
        missing: planned image ids not stored.
        identical_to_uninterrupted: the stored images are those of the uninterrupted run, byte for byte.
        identical_actors_batch: the 2-actor batch-16 run equals the 1-actor batch-4 run, byte for byte.
        differing_actors_batch: up to 5 image ids that differ between those two runs.
        second_rerun_wrote: Parquet parts the second rerun (re)wrote (0: it found everything done).
        rerun_log: the failing reruns' output when one failed, else "".
        seconds: wall time of the whole scenario.
    """

    planned: int
    killed_after_images: int
    reruns_rc: list[int]
    images: int
    duplicates: int
    missing: int
    identical_to_uninterrupted: bool
    identical_actors_batch: bool
    differing_actors_batch: list[str]
    second_rerun_wrote: int
    rerun_log: str
    seconds: float


def generation_kill(
    root: Path, dataset: str, workdir: Path, per_class_max: int = 6, model: str | None = None
) -> GenerationKillResult:
    """Runs the generation kill: the model (unless ``model`` names a trained one), the uninterrupted runs and the
    second rerun on the current Ray; the killed run and the first rerun as ``python -m jobs.generate`` in
    subprocesses.

    Args:
        root: the storage root holding the prepared dataset.
        dataset: the prepared dataset's name.
        workdir: scratch for the killed job's log.
        per_class_max: ``generate.per_class_max`` (sets N).
        model: a trained diffusion model's URI for ``generate.model``; None: one is trained here for 1 epoch.
    """
    from trcgl.diffusion.ray_diffusion import run_train_diffusion
    from trcgl.diffusion.ray_generate import run_generate

    t0 = time.perf_counter()
    base = [f"storage.root={root}", f"train.dataset={dataset}", f"generate.per_class_max={per_class_max}"]
    if model is None:
        model = run_train_diffusion(load_config("tiny", [*base, f"train.run={RUN}-model", "diffusion.epochs=1"]))
        model = model["model"]
    base.append(f"generate.model={model}")
    run_generate(load_config("tiny", [*base, f"train.run={RUN}-a", "generate.actors_max=1", "generate.batch_size=4"]))
    run_generate(load_config("tiny", [*base, f"train.run={RUN}-b", "generate.actors_max=2", "generate.batch_size=16"]))
    ref = _images(root / "runs" / f"{RUN}-a" / "synthetic")
    other = _images(root / "runs" / f"{RUN}-b" / "synthetic")

    out = root / "runs" / f"{RUN}-k" / "synthetic"
    faulted = [*base, f"train.run={RUN}-k", "generate.actors_max=2", "generate.batch_size=4"]
    cmd = [sys.executable, "-m", "jobs.generate", "--config", "tiny", "--set", *faulted]
    kill_when(
        cmd,
        lambda: bool(list(out.glob("part-*.parquet"))) and not (out / "_manifest.json").exists(),
        workdir / "generate-killed.log",
        poll_s=0.05,
    )
    killed_after = sum(len(v) for v in _images(out).values())
    first = run_job(cmd)
    parts_after_first = {p.name: p.stat().st_mtime for p in out.glob("part-*.parquet")}
    # the same configuration again, here: what matters now is what storage holds, not the process
    try:
        second_rc, second_log = 0, ""
        run_generate(load_config("tiny", faulted))
    except Exception as exc:  # a figure, not a crash of the benchmark
        second_rc, second_log = 1, f"{type(exc).__name__}: {exc}"
    rewritten = sum(p.stat().st_mtime != parts_after_first.get(p.name) for p in out.glob("part-*.parquet"))
    got = _images(out)
    figures = GenerationKillResult(
        planned=len(ref),
        killed_after_images=killed_after,
        reruns_rc=[first.returncode, second_rc],
        images=sum(len(v) for v in got.values()),
        duplicates=sum(len(v) - 1 for v in got.values()),
        missing=len(set(ref) - set(got)),
        identical_to_uninterrupted=set(got) == set(ref) and all(got[i][0] == ref[i][0] for i in ref),
        identical_actors_batch=set(other) == set(ref) and all(other[i][0] == ref[i][0] for i in ref),
        differing_actors_batch=sorted(i for i in ref if i in other and other[i][0] != ref[i][0])[:5],
        second_rerun_wrote=rewritten,
        rerun_log=(first.stderr[-1500:] + second_log)[-2000:] if first.returncode or second_rc else "",
        seconds=round(time.perf_counter() - t0, 1),
    )
    log.info("generation kill: %s", figures)
    return figures
