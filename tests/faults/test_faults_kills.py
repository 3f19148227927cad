"""The sweep driver kill (with ASHA stopping a trial) and corrupt inputs in prepare. The classifier driver kill runs
with its Train workers on two nodes of the fake autoscaling cluster (tests/test_autoscaling.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trcgl_dev.faults.bad_inputs import corrupt_inputs
from trcgl_dev.faults.driver_kill import (
    FROZEN,
    SWEEP_EPOCHS,
    THIRD,
    TRAINS,
    sweep_driver_kill,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def test_asha_stop_frees_the_next_trial_and_a_killed_sweep_resumes_without_duplicates(
    tiny_prepared, tmp_path: Path, record
) -> None:
    """One sweep under ASHA, trials one at a time (:func:`~trcgl_dev.faults.driver_kill.sweep_driver_kill`): ASHA
    stops the frozen second trial after its first epoch and the third trial's workers get the CPUs (no placement
    group leaks: a leak never reaches the kill point), then the driver is killed and the same command resumes."""
    root, _ = tiny_prepared
    r = record(sweep_driver_kill(Path(root), tmp_path))
    assert r.rerun_rc == 0, r.rerun_log
    # the premise: Optuna's seeded draws (an Optuna upgrade may change them: then pick another SWEEP_SEED)
    assert r.lrs == pytest.approx([TRAINS, FROZEN, THIRD]), r
    # ASHA stopped the untrained second trial at the grace-period rung, below the first; the first ran to the end
    assert r.stopped_before_kill == 1 and r.new_workers_at_kill == 2, r
    assert r.stopped_early == [False, True, False], r
    assert r.epochs == [SWEEP_EPOCHS, 1, SWEEP_EPOCHS] and r.test_scored == [True, False, True], r
    # the kill and resume
    assert r.resumed and r.finished_before_kill == 1, r
    assert r.retrained == 0 and r.finished_kept, r  # a finished or stopped trial is neither trained again nor lost
    assert r.trials == r.unique_trials == 3, r  # each trial once on the leaderboard
    assert r.configs_sampled_twice == 0, r


def test_corrupt_inputs_keep_every_good_row_and_report_every_bad_one(ray_local, tmp_path: Path, record) -> None:
    r = record(corrupt_inputs(tmp_path))
    assert r.job_succeeded and r.good_lost == 0 and r.kept == r.good, r  # none lost as collateral
    assert r.bad_unreported == 0 and r.wrong_reason == [] and r.bad_kept == [], r
    assert r.duplicates == 0, r
