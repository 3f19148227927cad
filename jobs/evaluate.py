"""Evaluate a classifier checkpoint on a prepared split (Ray Data batch inference on an actor pool).

Writes metrics.json, per_class.parquet, predictions.parquet and report/*.png under --out (default: the checkpoint's
run folder, classifier/eval-{split}/).

    python -m jobs.evaluate --checkpoint ./runs/runs/demo/classifier/best --split test
    python -m jobs.evaluate --checkpoint s3://bucket/trcgl/runs/demo/classifier/best --config demo \
        --set storage.root=s3://bucket/trcgl
"""

from __future__ import annotations

import sys

from jobs import _cli


def main(argv: list[str] | None = None) -> int:
    import argparse

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--checkpoint", required=True, help="checkpoint folder: local path or s3://")
    extra.add_argument("--split", default="test", choices=["train", "val", "test"])
    extra.add_argument("--dataset", default=None, help="prepared dataset name (default: the checkpoint's)")
    extra.add_argument("--out", default=None, help="output folder relative to storage.root")
    known, rest = extra.parse_known_args(argv)

    def job(cfg, args):
        import json

        from trcgl.metrics import TABLE_METRICS
        from trcgl.train.checkpoint import META_FILE, read_files
        from trcgl.train.ray_evaluate import evaluate_checkpoint

        meta = json.loads(read_files(known.checkpoint, cfg.storage, (META_FILE,))[META_FILE])
        dataset = known.dataset or meta["dataset"]["name"]
        out = known.out or f"runs/{meta['config']['train']['run']}/classifier/eval-{known.split}"
        result = evaluate_checkpoint(cfg, known.checkpoint, dataset, known.split, out)
        keys = (*TABLE_METRICS, "n_images")
        return {
            "dataset": dataset,
            "split": known.split,
            "out": out,
            **{k: result[k] for k in keys},
            "ci": result["ci"],
        }

    def text(cfg, summary):
        from trcgl.storage import Storage

        return _cli.brief(summary, Storage(cfg.storage.root, cfg.storage).uri(summary["out"], "metrics.json"))

    return _cli.run(job, __doc__, rest, text=text)


if __name__ == "__main__":
    sys.exit(main())
