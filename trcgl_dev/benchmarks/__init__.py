"""Benchmarks behind ``python -m jobs.benchmark``: figures as ratios against a baseline measured in the same run."""
