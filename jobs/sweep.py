"""Sweep classifier settings with Ray Tune + Optuna (TPE, seeded) and ASHA early stopping.

The search space is config (``sweep.space``: dotted keys → choice / uniform / loguniform / int; the default covers
the synthetic:real ratio per group, which synthetic set to draw from, GCN settings, the parts on/off, loss, learning
rate and weight decay). Each trial is one classifier run under {root}/runs/{run}/sweep/trials/{trial_id}/. Writes
{root}/runs/{run}/sweep/: leaderboard.parquet, best_config.yaml, sweep_report.json, plots/*.png. Running the same
command again after an interruption resumes the sweep (Tuner.restore); after it finished, it reads the results back.
Other sweep, model, loss or train values stop the job, naming them, unless --force reruns the sweep from scratch.

    python -m jobs.sweep --config demo
    python -m jobs.sweep --config demo --set sweep.num_samples=16 sweep.max_concurrent_trials=2
    python -m jobs.sweep --config demo --set 'sweep.space={train.lr: {type: loguniform, low: 1e-4, high: 1e-2}}'
    ray job submit --working-dir . -- python -m jobs.sweep --config jobs/configs/padchest.yaml \\
        --set storage.root=s3://my-bucket/trcgl sweep.max_concurrent_trials=4
"""

from __future__ import annotations

import sys

from jobs import _cli


def main(argv: list[str] | None = None) -> int:
    from trcgl.sweep.ray_sweep import run_sweep

    return _cli.run(
        lambda cfg, args: run_sweep(cfg, force=args.force),
        __doc__,
        argv,
        force_stages=(),
        text=lambda cfg, summary: _cli.brief(summary, _cli.saved_in(summary, "sweep_report.json")),
    )


if __name__ == "__main__":
    sys.exit(main())
