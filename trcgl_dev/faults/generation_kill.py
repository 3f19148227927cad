"""The generation kill scenario: tail-class generation killed after K of N images, then rerun twice.

One tiny diffusion model (given, or trained here for 1 epoch) serves every run through ``generate.model``. The
reference is an uninterrupted run with 1 actor and the tiny preset's 4 rows per part and batch size 4; the faulted
run (2 actors, otherwise the same; ``python -m jobs.generate`` in its own process group, a driver on the current Ray:
see :func:`trcgl_dev.faults.driver_kill.job_env`) is SIGKILLed once its first Parquet parts exist and before it
published its manifest, then rerun twice: the same command, then the same configuration in this process. Both sample
the same images together (one call per part of 4), and every planned image carries its own seed
(:mod:`trcgl.diffusion.plan`), so neither the kill nor the number of actors may change a single byte: images are
compared byte for byte by image id.

A second uninterrupted run (2 actors, 8 rows per part, batch size 3) cuts the images into other sampling calls: a part
is sampled in batches cut inside it (``Generator.write_part``), so it makes calls of 3, 3 and 2 images where the
reference makes calls of 4, and most images are sampled beside other images, at another place in the batch. (Runs
whose batch size is at least their rows per part all make one call per part and could not differ here.) That
comparison allows a tolerance, not byte identity: float32 matrix products on the CPU round differently with the batch
size, which moves a pixel by about 1e-5, one step of the stored 16 bits, while an image sampled with another image's
noise or prompt, or with anything computed over the batch, differs by far more than :data:`BATCH_TOLERANCE_STEPS`.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from trcgl.config import load_config
from trcgl_dev.faults import Figures
from trcgl_dev.faults.driver_kill import kill_when, run_job

log = logging.getLogger(__name__)

RUN = "gen-fault"
# the other-batches run: 8 rows per part sampled 3 at a time (calls of 3, 3, 2) against the reference's one call per
# part of 4 (tiny: generate.rows_per_file=4, generate.batch_size=4)
OTHER_ROWS_PER_PART, OTHER_BATCH = 8, 3
REF_BATCH = 4  # generate.batch_size of the reference and the faulted run
# largest difference of one pixel, in steps of the stored uint16 (1/65535), allowed between the reference and the
# other-batches run: batch-size rounding moves pixels by about one step
BATCH_TOLERANCE_STEPS = 16


def _sampling_calls(folder: Path, batch_size: int) -> list[int]:
    """Images per sampling call of the run that wrote ``folder`` with ``batch_size``, part after part.

    The generator runs in Ray actors and counts no calls, so they are recomputed: each stored part's row count cut
    as ``Generator.write_part`` cuts it (``range(0, rows, batch_size)``).
    """
    calls = []
    for part in sorted(folder.glob("part-*.parquet")):
        rows = pq.read_metadata(part).num_rows
        calls += [min(batch_size, rows - start) for start in range(0, rows, batch_size)]
    return calls


def _max_step_difference(a: dict[str, list[bytes]], b: dict[str, list[bytes]]) -> int | None:
    """Largest difference of one pixel between the first stored copies of the same image ids in ``a`` and ``b``, in
    steps of the stored little-endian uint16 (``trcgl.data.images.encode_prepared``); None when the ids differ or an
    image's size does."""
    if set(a) != set(b) or any(len(a[i][0]) != len(b[i][0]) for i in a):
        return None
    steps = [np.abs(np.frombuffer(a[i][0], "<u2").astype(np.int32) - np.frombuffer(b[i][0], "<u2")).max() for i in a]
    return int(max(steps, default=0))


def _images(folder: Path) -> dict[str, list[bytes]]:
    """image id -> every stored copy of its encoded bytes (more than one copy would be a duplicate)."""
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
        planned: images the uninterrupted reference run (1 actor, batch 4, 4 rows per part) wrote (N).
        killed_after_images: images stored when the job was killed (K).
        reruns_rc: exit codes of the first rerun (the same command) and the second (in this process; 1: it raised).
        images: images stored after both reruns.
        duplicates: stored copies beyond the first of any image id.
        missing: planned image ids not stored.
        identical_to_uninterrupted: the stored images are those of the uninterrupted reference run, byte for byte.
        sampling_calls: images per sampling call of the reference and of the other-batches run (2 actors, 8 rows
            per part, batch 3), part after part (:func:`_sampling_calls`): e.g. [4, 4, 4, 4] and [3, 3, 2, 3, 3, 2].
        split_differently: those two runs made different numbers of sampling calls, so they cut the images into
            different batches and comparing them can tell a batch-dependent result.
        max_step_difference: the largest difference of one pixel between those two runs, in steps of the stored
            uint16 (None: they hold different image ids).
        close_actors_batch: both runs hold the same image ids and ``max_step_difference`` is at most
            :data:`BATCH_TOLERANCE_STEPS`.
        identical_actors_batch: the two runs are byte-identical (a figure: batch-size rounding may differ by a step).
        differing_actors_batch: up to 5 image ids whose bytes differ between those two runs.
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
    sampling_calls: list[list[int]]
    split_differently: bool
    max_step_difference: int | None
    close_actors_batch: bool
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
    reference = [f"train.run={RUN}-a", "generate.actors_max=1", f"generate.batch_size={REF_BATCH}"]
    run_generate(load_config("tiny", [*base, *reference]))
    other_batches = [f"generate.rows_per_file={OTHER_ROWS_PER_PART}", f"generate.batch_size={OTHER_BATCH}"]
    run_generate(load_config("tiny", [*base, f"train.run={RUN}-b", "generate.actors_max=2", *other_batches]))
    ref = _images(root / "runs" / f"{RUN}-a" / "synthetic")
    other = _images(root / "runs" / f"{RUN}-b" / "synthetic")
    calls = [
        _sampling_calls(root / "runs" / f"{RUN}-a" / "synthetic", REF_BATCH),
        _sampling_calls(root / "runs" / f"{RUN}-b" / "synthetic", OTHER_BATCH),
    ]
    max_steps = _max_step_difference(ref, other)

    out = root / "runs" / f"{RUN}-k" / "synthetic"
    faulted = [*base, f"train.run={RUN}-k", "generate.actors_max=2", f"generate.batch_size={REF_BATCH}"]
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
        sampling_calls=calls,
        split_differently=len(calls[0]) != len(calls[1]),
        max_step_difference=max_steps,
        close_actors_batch=max_steps is not None and max_steps <= BATCH_TOLERANCE_STEPS,
        identical_actors_batch=set(other) == set(ref) and all(other[i][0] == ref[i][0] for i in ref),
        differing_actors_batch=sorted(i for i in ref if i in other and other[i][0] != ref[i][0])[:5],
        second_rerun_wrote=rewritten,
        rerun_log=(first.stderr[-1500:] + second_log)[-2000:] if first.returncode or second_rc else "",
        seconds=round(time.perf_counter() - t0, 1),
    )
    log.info("generation kill: %s", figures)
    return figures
