"""The cost model (trcgl/cost.py, `python -m jobs.benchmark cost`): figures follow the config, each with a source.

Fast: pure arithmetic on a loaded config, no Ray, no torch.
"""

from __future__ import annotations

import pytest

from jobs.benchmark import main as benchmark_main
from trcgl.config import load_config
from trcgl.cost import KINDS, asha_epochs_per_trial, estimate

DOLLARS = "compute, on-demand (g5.2xlarge, 1 A10G)"


def _cost(*overrides: str) -> float:
    return estimate(load_config("padchest", list(overrides))).value(DOLLARS)


@pytest.mark.parametrize("key", ["sweep.num_samples", "train.epochs"])
def test_cost_grows_linearly(key):
    costs = [_cost(f"{key}={n}") for n in (8, 16, 24, 32)]
    steps = [b - a for a, b in zip(costs, costs[1:], strict=False)]
    assert steps[0] > 0, costs
    assert steps == pytest.approx([steps[0]] * len(steps), rel=1e-9), costs


def test_sweep_hours_scale_with_trials():
    one = estimate(load_config("padchest", ["sweep.num_samples=1"]))
    many = estimate(load_config("padchest", ["sweep.num_samples=40"]))
    per_trial = one.value("sweep GPU-hours per trial")
    assert many.value("sweep GPU-hours, 40 trials") == pytest.approx(40 * per_trial)


def test_image_size_changes_the_gpu_hours():
    small = estimate(load_config("padchest", ["data.image_size=256", "diffusion.image_size=256"]))
    large = estimate(load_config("padchest"))
    assert small.value("GPU-hours, total") < large.value("GPU-hours, total")


def test_every_row_and_input_has_a_source():
    est = estimate(load_config("padchest"))
    assert est.figures
    for f in est.figures:
        kind, _, detail = f.source.partition(": ")
        assert kind in KINDS and detail, f
    for line in est.lines():
        if line.startswith("| ") and not line.startswith(("| figure", "| input")):
            assert line.rstrip(" |").rsplit("| ", 1)[1].split(":", 1)[0] in KINDS, line


def test_asha_expected_epochs():
    # rungs 3, 9 then max 15 with reduction 3: 3 + 6/3 + 6/9
    assert asha_epochs_per_trial(15, 3, 3) == pytest.approx(3 + 2 + 6 / 9)
    assert asha_epochs_per_trial(3, 3, 3) == pytest.approx(3)


def test_cli_prints_the_table(capsys):
    assert benchmark_main(["cost", "--config", "jobs/configs/padchest.yaml", "--set", "sweep.num_samples=4"]) == 0
    out = capsys.readouterr().out
    assert "| sweep GPU-hours, 4 trials |" in out and "USD" in out
