"""Reruns of the tiny pipeline: a stage is reused only when made from the same config keys and upstream outputs.

The pipeline run is the end-to-end job's (tests/conftest.py ``pipeline_on_token_head``: the tiny pipeline on a
token-auth head, storage on the loopback S3 server), read here with the same config: an unchanged rerun skips every
stage; each changed key marks exactly the stages that depend on it (checked on the real records, before any work); a
forced stage reruns with the stages that read it (made from the same config but the forced key, so the run stays
what tests/test_pipeline_jobs.py reads back whichever test runs first).
"""

from __future__ import annotations

import pytest
from conftest import PIPELINE_JOB_SET

from trcgl.config import load_config
from trcgl.data.dataset import resolve_dataset_name
from trcgl.pipeline.ray_pipeline import FORCEABLE, baseline_config, check_fresh, run_pipeline, stale_stages
from trcgl.records import StaleStageError, read_record
from trcgl.storage import Storage, run_dir
from trcgl.train import ray_train

pytestmark = pytest.mark.slow

RUN = "tiny"  # the preset's run name, which the job keeps


@pytest.fixture(scope="module")
def first_run(pipeline_on_token_head: dict, ray_local: None) -> tuple[list[str], Storage, str, dict]:
    """(the job's overrides, its storage, its dataset, its summary)."""
    root, endpoint = pipeline_on_token_head["root"], pipeline_on_token_head["endpoint"]
    assert pipeline_on_token_head["security"].job.succeeded, pipeline_on_token_head["security"].job.log_tail
    base = [f"storage.root={root}", f"storage.endpoint_url={endpoint}", *PIPELINE_JOB_SET]
    cfg = load_config("tiny", base)
    storage = Storage(cfg.storage.root, cfg.storage)
    return base, storage, resolve_dataset_name(cfg, storage), storage.read_json(f"runs/{RUN}/summary.json")


def config(base: list[str], *extra: str):
    return load_config("tiny", [*base, *extra])


def trained(summary: dict) -> list[str]:
    """The forceable stages that did work (not skipped) in a pipeline summary."""
    return [s for s in FORCEABLE if s in summary["stages"] and not summary["stages"][s]["skipped"]]


def test_first_run_trains_every_stage_and_records_it(first_run):
    _, storage, _, summary = first_run
    assert trained(summary) == [s for s in FORCEABLE if s not in ("oracle", "controls")]  # pipeline.controls: []
    assert summary["stages"]["controls"]["disabled"] and summary["stages"]["oracle"]["disabled"]
    for folder in ("diffusion", "baseline/classifier", "synthetic", "sweep", "final/classifier"):
        record = read_record(storage, run_dir(RUN, folder))
        assert record is not None, folder
    assert read_record(storage, run_dir(RUN, "baseline/classifier"))["train.epochs"] == 1
    assert read_record(storage, run_dir(RUN, "final/classifier"))["train.epochs"] == 2


def test_unchanged_rerun_skips_every_stage(first_run):
    base, _, _, summary = first_run
    again = run_pipeline(config(base))
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
    base, storage, dataset, _ = first_run
    cfg = config(base, change)
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
    base, storage, dataset, _ = first_run
    baseline = baseline_config(config(base))
    assert ray_train.claim_output(baseline, storage, dataset) == "same"
    changed = baseline_config(config(base, "loss.name=asl"))
    with pytest.raises(StaleStageError, match=r"loss\.name: 'bce' -> 'asl'.*--force"):
        ray_train.claim_output(changed, storage, dataset)
    assert read_record(storage, run_dir(f"{RUN}/baseline", "classifier"))["loss.name"] == "bce"  # nothing touched


def test_controls_train_only_their_runs_and_are_then_reused(first_run):
    base, storage, _, summary = first_run
    cfg = config(base, "pipeline.controls=[synthetic, oracle]")
    out = run_pipeline(cfg)
    assert trained(out) == ["oracle", "controls"]  # nothing upstream or downstream of them reran
    rows = {r["name"]: r for r in out["rows"]}
    assert list(rows) == ["best", "baseline", "baseline + synthetic rows", "baseline + oracle rows"]
    assert rows["best"] == summary["rows"][0] and rows["baseline"] == summary["rows"][1]
    synthetic, oracle = rows["baseline + synthetic rows"], rows["baseline + oracle rows"]
    assert synthetic["synthetic_rows"] > 0 and synthetic["extra_rows"] == synthetic["synthetic_rows"]
    assert oracle["synthetic_rows"] == 0 and oracle["extra_rows"] > 0
    for extra in ("synthetic", "oracle"):
        record = read_record(storage, run_dir(f"{RUN}/controls/{extra}", "classifier"))
        assert record["train.extra_source"] == extra and record["model.gcn"] is False  # the baseline's model
    assert storage.manifest(run_dir(RUN, "oracle")) is not None
    html = storage.read_bytes(f"runs/{RUN}/report/report.html").decode()
    assert "baseline + oracle rows" in html and "a perfect generator" in html
    again = run_pipeline(cfg)
    assert trained(again) == [] and again["rows"] == out["rows"]


def test_forcing_a_stage_reruns_it_and_the_stages_that_read_it(first_run):
    base, storage, _, _ = first_run
    cfg = config(base, "sweep.seed=1")
    with pytest.raises(StaleStageError):
        run_pipeline(cfg)
    forced = run_pipeline(cfg, force=["sweep"])
    assert trained(forced) == ["sweep", "final"]
    assert read_record(storage, run_dir(RUN, "sweep"))["sweep.seed"] == 1
