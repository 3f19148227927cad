"""The ablation and peer study: every row of ``ablation.rows`` trained on the same data and scored on the same test
images, with 95 % intervals and paired-bootstrap differences against the baseline row.

Rows (defaults in trcgl/config/defaults.py, presets may replace them): the peers (backbone + BCE, + class-balanced
re-sampling, ASL, LDAM-DRW, ML-GCN, CSRA), TRCGL-Net's parts added one at a time and removed one at a time,
synthesis against duplication of real tail images, fidelity filtering on. Each row and seed is one classifier run
under {root}/runs/{run}/ablation/rows/{row}/seed{seed}/, run as a Ray Tune grid; the same command after an
interruption resumes (finished rows are not retrained). Rows that draw synthetic data make the run's diffusion model
and synthetic images first (skipped when they exist): {run}/synthetic/ for extra synthetic / synthetic_filtered,
{run}/modes/{sample,edit}/synthetic/ for extra synthetic_sample / synthetic_edit. Writes
{root}/runs/{run}/ablation/: table.parquet, table.md, heatmap.png, tail_map.png, ablation_report.json. Model
selection (best epoch) uses val only.

    python -m jobs.ablation --config jobs/configs/ablation.yaml
    python -m jobs.ablation --config jobs/configs/ablation.yaml --set 'ablation.seeds=[0, 1, 2]'
    python -m jobs.ablation --config jobs/configs/synthesis.yaml   # baseline, duplication, oracle, both diffusion modes
    ray job submit --working-dir . -- python -m jobs.ablation --config jobs/configs/padchest.yaml \\
        --set storage.root=s3://my-bucket/trcgl ablation.max_concurrent_trials=2
"""

from __future__ import annotations

import sys

from jobs import _cli


def main(argv: list[str] | None = None) -> int:
    from trcgl.config import check_generator_size
    from trcgl.study.ray_ablation import FORCEABLE, run_ablation
    from trcgl.study.rows import check_ablation, needs_generation

    def check(cfg):
        check_ablation(cfg)
        if needs_generation(cfg):
            check_generator_size(cfg)

    def text(cfg, summary):
        table = _cli.saved_in(summary, "table.md")
        shown = _cli.brief(summary, _cli.saved_in(summary, "ablation_report.json"))
        return shown + (f"\ntable: {table}" if table else "")

    return _cli.run(
        lambda cfg, args: run_ablation(cfg, force=args.force),
        __doc__,
        argv,
        force_stages=FORCEABLE,
        check=check,
        text=text,
    )


if __name__ == "__main__":
    sys.exit(main())
