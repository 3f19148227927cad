"""Fault scenario 1: a Ray Train worker killed mid-epoch, in classifier and in diffusion training."""

from __future__ import annotations

from pathlib import Path

import pytest

from trcgl_dev.faults.ray_worker_kill import REFERENCE_EPOCHS, train_worker_kill

pytestmark = [pytest.mark.slow, pytest.mark.faults]


@pytest.mark.parametrize("stage", ["classifier", "diffusion"])
def test_killed_train_worker_recovers_from_a_registered_checkpoint(
    tiny_prepared, stage: str, record, request: pytest.FixtureRequest, fault_runs: dict
) -> None:
    root, dataset = tiny_prepared
    # the fault-free reference: the session's shared diffusion model, or scenario 2's fresh classifier run when it
    # ran first (same configuration by construction); else train_worker_kill trains one
    reference = (
        request.getfixturevalue("tiny_diffusion")["result"]
        if stage == "diffusion"
        else fault_runs.get("classifier_reference")
    )
    f = record(train_worker_kill(Path(root), dataset, stage, epochs=REFERENCE_EPOCHS, reference=reference))
    assert f["completed"] and f["error"] is None, f
    assert f["recovery_s"] is not None, f  # a new worker group came up
    # resumed from at least the last registered checkpoint (whether that was the latest reported epoch is a figure:
    # RELIABILITY_NOTES.md saw restarts from an older one)
    assert f["resumed_from_registered"], f
    assert f["epochs_unique"] and f["rows_ok"], f  # each epoch once in the history, each row once per epoch
    # the last epoch's loss against a fault-free run of the same config, data order aside. Classifier: fault-free
    # runs spread 0.16-0.21 after two epochs (rank 0's half of the rows), one epoch lost would read about 0.33.
    # Diffusion: the denoising loss is steady (0.806-0.807 seen).
    tolerance = 0.35 if stage == "classifier" else 0.25
    assert abs(f["final"] - f["final_no_fault"]) <= tolerance * f["final_no_fault"], f
