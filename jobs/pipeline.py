"""The whole TRCGL-Net method, end to end: prepare → train diffusion → baseline → generate → (oracle, controls) →
sweep → final → report.

With no arguments it runs the embedded default (demo preset): PadChest-Synth rendered from the real PadChest
metadata, a local Ray, storage in ./runs; about half an hour on a 2-core laptop (BENCHMARKS.md has the latest time).

Each stage records the config keys and upstream outputs it was made from. A rerun skips a stage made from the same
ones (so rerunning after an interruption resumes), recomputes a stage whose upstream was recomputed, and stops before
any training when a stage's own keys changed, naming the stages and keys: --force STAGE ... recomputes them.
Logs a line per stage, training epoch and sweep trial (-v: everything Ray prints; -q: warnings only), then prints a
summary table (mAP, mAUC, head/medium/tail mAP with 95 % intervals, for the best configuration, the no-synthetic,
no-GCN baseline and, with pipeline.controls, the baseline with duplicated, synthetic or oracle tail rows) and the
path of the self-contained HTML report; writes {root}/runs/{run}/summary.json and
{root}/runs/{run}/report/report.html.

    python -m jobs.pipeline
    python -m jobs.pipeline --config tiny --set storage.root=s3://my-bucket/trcgl
    python -m jobs.pipeline --config demo --set sweep.enabled=false        # one classifier run instead of a sweep
    python -m jobs.pipeline --set train.lr=3e-3 --force baseline sweep     # after changing a key the stages use
    ray job submit --runtime-env cluster/runtime_env.yaml -- \\
        python -m jobs.pipeline --config jobs/configs/padchest.yaml \\
        --set storage.root=s3://my-bucket/trcgl data.images=s3://my-bucket/padchest/images ray.autoscaling=true
"""

from __future__ import annotations

import sys
from typing import Any

from jobs import _cli


def summary_text(summary: dict[str, Any], saved: str | None = None) -> str:
    """The final summary as a plain-text table with the report's location (and the summary file's, ``saved``)."""
    from trcgl.pipeline.report import summary_table

    table = summary_table(summary["rows"]).to_string(index=False)
    stages = ", ".join(
        f"{k} {v['seconds']:.0f}s{' (skipped)' if v['skipped'] else ''}" for k, v in summary["stages"].items()
    )
    return (
        f"run {summary['run']} on {summary['dataset']} (test split, 95 % bootstrap intervals)\n{table}\n"
        f"stages: {stages}\nreport: {summary['report']}\n" + (f"summary: {saved}\n" if saved else "")
    )


def main(argv: list[str] | None = None) -> int:
    from trcgl.config import check_generator_size
    from trcgl.pipeline.ray_pipeline import FORCEABLE, check_pipeline, run_pipeline
    from trcgl.storage import Storage, run_dir

    def check(cfg):
        check_pipeline(cfg)
        if cfg.pipeline.diffusion:
            check_generator_size(cfg)

    def text(cfg, summary):
        return summary_text(summary, Storage(cfg.storage.root, cfg.storage).uri(run_dir(cfg.train.run), "summary.json"))

    return _cli.run(
        lambda cfg, args: run_pipeline(cfg, force=args.force),
        __doc__,
        argv,
        force_stages=FORCEABLE,
        check=check,
        text=text,
    )


if __name__ == "__main__":
    sys.exit(main())
