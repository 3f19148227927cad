"""Fault scenarios 2, 4 and 5: a killed classifier driver, a killed sweep driver, corrupt inputs in prepare."""

from __future__ import annotations

from pathlib import Path

import pytest

from trcgl_dev.faults.bad_inputs import corrupt_inputs
from trcgl_dev.faults.kills import classifier_driver_kill, sweep_driver_kill
from trcgl_dev.faults.ray_worker_kill import REFERENCE_EPOCHS

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def test_killed_classifier_driver_resumes_and_other_run_starts_fresh(
    tiny_prepared, tmp_path: Path, record, fault_runs: dict
) -> None:
    root, dataset = tiny_prepared
    figures = classifier_driver_kill(Path(root), dataset, tmp_path, epochs=REFERENCE_EPOCHS)
    fault_runs["classifier_reference"] = figures.pop("fresh_result")  # scenario 1's fault-free reference
    f = record(figures)
    assert f["rerun_rc"] == 0, f["rerun_log"]
    assert f["resumed_at_or_after_checkpoint"], f  # not from scratch: at or after the last registered checkpoint
    assert f["epochs"] == REFERENCE_EPOCHS and f["epochs_unique"], f  # every epoch once, none repeated after resume
    assert f["rows_ok"], f  # each epoch saw each train row exactly once (count and id checksum over workers)
    # another run name does not pick the killed run up: it starts at epoch 0 and trains every epoch
    assert f["fresh_start_epoch"] == 0 and f["fresh_epochs"] == list(range(REFERENCE_EPOCHS)), f


def test_killed_sweep_resumes_without_duplicates(tiny_prepared, tmp_path: Path, record) -> None:
    root, _ = tiny_prepared
    f = record(sweep_driver_kill(Path(root), tmp_path, trials=2))
    assert f["rerun_rc"] == 0, f.get("rerun_log")
    assert f["resumed"] and f["finished_before_kill"] >= 1, f
    assert f["retrained"] == 0 and f["finished_kept"], f  # a finished trial is neither trained again nor lost
    assert f["trials"] == f["unique_trials"] == 2, f  # each trial once on the leaderboard
    assert f["configs_sampled_twice"] == 0, f


def test_corrupt_inputs_keep_every_good_row_and_report_every_bad_one(ray_local, tmp_path: Path, record) -> None:
    f = record(corrupt_inputs(tmp_path))
    assert f["ok"] and f["good_lost"] == 0 and f["kept"] == f["good"], f  # none lost as collateral
    assert f["bad_unreported"] == 0 and f["wrong_reason"] == [] and f["bad_kept"] == [], f
    assert f["duplicates"] == 0, f
