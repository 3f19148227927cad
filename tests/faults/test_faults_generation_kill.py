"""Fault scenario 3: generation killed after K of N images, rerun twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from trcgl_dev.faults.generation_kill import generation_kill

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def test_killed_generation_ends_with_exactly_the_planned_images_byte_identical(
    tiny_diffusion: dict, tmp_path: Path, record
) -> None:
    root, dataset = tiny_diffusion["root"], tiny_diffusion["dataset"]
    f = record(generation_kill(Path(root), dataset, tmp_path, model=tiny_diffusion["model"]))
    assert f["reruns_rc"] == [0, 0], f.get("rerun_log")
    assert 0 < f["killed_after_images"] < f["planned"], f  # killed part-way
    assert f["images"] == f["planned"] and f["duplicates"] == 0 and f["missing"] == 0, f
    assert f["identical_to_uninterrupted"], f  # same seeds, same bytes
    assert f["identical_actors_batch"], f  # 1 vs 2 actors, batch 4 vs 16: same bytes
    assert f["second_rerun_wrote"] == 0, f  # the second rerun found everything done
