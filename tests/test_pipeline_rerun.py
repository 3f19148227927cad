"""Reruns of the tiny pipeline: a stage is reused only when made from the same config keys and upstream outputs.

One real pipeline run, then: an unchanged rerun skips every stage; each changed key marks exactly the stages that
depend on it (checked on the real records, before any work); a forced stage reruns with the stages that read it.
"""

from __future__ import annotations

import pytest

from trcgl.config import load_config
from trcgl.pipeline.ray_pipeline import FORCEABLE, baseline_config, check_fresh, run_pipeline, stale_stages
from trcgl.records import StaleStageError, read_record
from trcgl.storage import Storage, run_dir
from trcgl.train import ray_train

pytestmark = pytest.mark.slow

RUN = "rerun"


def overrides(root: str, dataset: str, *extra: str) -> list[str]:
    # one trial of one epoch, a final run of two (so the final stage trains rather than reusing the trial)
    return [
        f"storage.root={root}",
        f"train.run={RUN}",
        f"train.dataset={dataset}",
        "train.epochs=1",
        "train.bootstrap=10",
        "sweep.num_samples=1",
        "pipeline.final_epochs=2",
        *extra,
    ]


@pytest.fixture(scope="module")
def first_run(tiny_prepared):
    root, dataset = tiny_prepared
    summary = run_pipeline(load_config("tiny", overrides(root, dataset)))
    return root, dataset, summary


def trained(summary: dict) -> list[str]:
    """The forceable stages that did work (not skipped) in a pipeline summary."""
    return [s for s in FORCEABLE if s in summary["stages"] and not summary["stages"][s]["skipped"]]


def test_first_run_trains_every_stage_and_records_it(first_run):
    root, _, summary = first_run
    assert trained(summary) == list(FORCEABLE)
    storage = Storage(root)
    for folder in ("diffusion", "baseline/classifier", "synthetic", "sweep", "final/classifier"):
        record = read_record(storage, run_dir(RUN, folder))
        assert record is not None, folder
    assert read_record(storage, run_dir(RUN, "baseline/classifier"))["train.epochs"] == 1
    assert read_record(storage, run_dir(RUN, "final/classifier"))["train.epochs"] == 2


def test_unchanged_rerun_skips_every_stage(first_run):
    root, dataset, summary = first_run
    again = run_pipeline(load_config("tiny", overrides(root, dataset)))
    assert trained(again) == []
    assert again["rows"] == summary["rows"]


@pytest.mark.parametrize(
    ("change", "stale", "named"),
    [
        ("diffusion.epochs=2", ["train_diffusion"], "diffusion.epochs: 1 -> 2"),
        ("train.lr=0.003", ["baseline", "sweep"], "train.lr: 0.002 -> 0.003"),  # trials start from the base config
        ("generate.aug_ratio_tail=2.0", ["generate"], "generate.aug_ratio_tail: 1.0 -> 2.0"),
        ("sweep.seed=1", ["sweep"], "sweep.seed: 0 -> 1"),
        ("pipeline.final_epochs=3", ["final"], "train.epochs: 2 -> 3"),  # the final run's epochs
        ("generate.actors_max=1", [], ""),  # how generation runs, not what it makes
        ("train.cache_mb=0", [], ""),
    ],
)
def test_a_changed_key_marks_exactly_the_stages_that_use_it(first_run, change, stale, named):
    root, dataset, _ = first_run
    cfg = load_config("tiny", overrides(root, dataset, change))
    storage = Storage(root)
    found = stale_stages(cfg, storage, dataset)
    assert list(found) == stale
    assert all(named in found[s] for s in stale), found
    if stale:
        with pytest.raises(StaleStageError, match=f"--force {' '.join(stale)}"):
            check_fresh(cfg, storage, dataset)
        assert stale_stages(cfg, storage, dataset, force=stale) == {}
    else:
        check_fresh(cfg, storage, dataset)


def test_a_standalone_job_names_the_changed_key(first_run):
    root, dataset, _ = first_run
    storage = Storage(root)
    base = baseline_config(load_config("tiny", overrides(root, dataset)))
    assert ray_train.claim_output(base, storage, dataset) == "same"
    changed = baseline_config(load_config("tiny", overrides(root, dataset, "loss.name=asl")))
    with pytest.raises(StaleStageError, match=r"loss\.name: 'bce' -> 'asl'.*--force"):
        ray_train.claim_output(changed, storage, dataset)
    assert read_record(storage, run_dir(f"{RUN}/baseline", "classifier"))["loss.name"] == "bce"  # nothing touched


def test_forcing_a_stage_reruns_it_and_the_stages_that_read_it(first_run):
    root, dataset, _ = first_run
    cfg = load_config("tiny", overrides(root, dataset, "sweep.seed=1"))
    with pytest.raises(StaleStageError):
        run_pipeline(cfg)
    forced = run_pipeline(cfg, force=["sweep"])
    assert trained(forced) == ["sweep", "final"]
    storage = Storage(root)
    assert read_record(storage, run_dir(RUN, "sweep"))["sweep.seed"] == 1
