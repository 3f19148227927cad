"""Classifier training and evaluation: data mixing, checkpoints, batch inference, report (Ray only in ray_*.py)."""
