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
    assert r.identical_actors_batch, r  # 1 vs 2 actors, batch 4 vs 16: same bytes
    assert r.second_rerun_wrote == 0, r  # the second rerun found everything done
