"""Train TRCGL-Net (or a peer/ablation configuration) on a prepared dataset with Ray Train, then evaluate on test.

Rerunning with the same train.run and the same model, loss and train values resumes from the last checkpoint; other
values stop the job, naming the changed keys, unless --force recomputes the run from scratch. Outputs under
{root}/runs/{run}/classifier/: metrics.json, per_class.parquet, predictions.parquet, report/*.png, best/ (best epoch
by val mAP), history.json.

    python -m jobs.train_classifier --config demo
    python -m jobs.train_classifier --config demo --set train.run=plain model.se=false model.class_attention=false \
        model.gcn=false
    python -m jobs.train_classifier --config demo --set loss.name=asl train.num_workers=4 train.use_gpu=true
"""

from __future__ import annotations

import sys

from jobs import _cli


def main(argv: list[str] | None = None) -> int:
    from jobs.results import summary_text
    from trcgl.train.ray_train import run_training

    def text(cfg, summary):
        saved = _cli.saved_in(summary, "summary.json", key="outputs")
        return summary_text(summary) + (f"\ndetails: {saved}" if saved else "")

    return _cli.run(lambda cfg, args: run_training(cfg, force=args.force), __doc__, argv, force_stages=(), text=text)


if __name__ == "__main__":
    sys.exit(main())
