"""The generation kill: generation killed after K of N images, rerun twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from trcgl_dev.faults.generation_kill import generation_kill

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def test_killed_generation_ends_with_exactly_the_planned_images_byte_identical(
    tiny_diffusion: dict, tmp_path: Path, record
) -> None:
    root, dataset = tiny_diffusion["root"], tiny_diffusion["dataset"]
    r = record(generation_kill(Path(root), dataset, tmp_path, model=tiny_diffusion["model"]))
    assert r.reruns_rc == [0, 0], r.rerun_log
    assert 0 < r.killed_after_images < r.planned, r  # killed part-way
    assert r.images == r.planned and r.duplicates == 0 and r.missing == 0, r
    assert r.identical_to_uninterrupted, r  # same seeds, same bytes
    # 1 vs 2 actors, and other sampling calls: 4 rows per part sampled 4 at a time vs 8 per part sampled 3 at a
    # time (calls of 3, 3, 2), so most images share a batch with other images. Batch-size rounding of float32
    # products may move a pixel by a step of the stored uint16; anything batch-dependent moves it by far more.
    assert r.split_differently, r.sampling_calls  # else the comparison could not fail
    assert r.close_actors_batch, r  # same image ids, every pixel within BATCH_TOLERANCE_STEPS
    assert r.second_rerun_wrote == 0, r  # the second rerun found everything done
