"""Sweeps over classifier runs: the search space (no Ray) and the Ray Tune + Optuna driver (``ray_sweep``)."""
