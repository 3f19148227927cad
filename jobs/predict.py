"""Apply a classifier checkpoint to new images on a Ray Data actor pool: per-class probabilities and decisions.

SOURCE (--images): a folder of PNG and DICOM files, local or s3:// (recursive); dataset:SPLIT (a split of the
checkpoint's prepared dataset) or dataset:NAME:SPLIT; table:PATH (the image paths of a CSV or Parquet table, its
columns mapped by data.table: the job's own with data.source=table, else the checkpoint's). Writes part-*.parquet
(image_id, uri, prob_<class>, pred_<class>, findings, overlays) and _report.json under --out (default:
runs/{run}/predict/{source}-{hash}/ under storage.root). Decisions are probability >= the class's threshold, chosen
on val (F1-optimal per class) and stored with the checkpoint. A rerun scores only missing parts; bad images are
skipped and listed with their reason.

    python -m jobs.predict --checkpoint ./runs/runs/demo/final/classifier/best --images /data/new-xrays
    python -m jobs.predict --checkpoint s3://bucket/trcgl/runs/demo/final/classifier/best \
        --images s3://bucket/incoming/ --overlays 3 --set storage.root=s3://bucket/trcgl
    python -m jobs.predict --checkpoint ./runs/runs/demo/final/classifier/best --images dataset:test
    python -m jobs.predict --checkpoint ./runs/runs/cxr14/classifier/best --images table:/data/cxr14/test.csv
"""

from __future__ import annotations

import sys

from jobs import _cli


def main(argv: list[str] | None = None) -> int:
    import argparse

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--checkpoint", required=True, help="checkpoint folder: local path or s3://")
    extra.add_argument("--images", required=True, help="SOURCE: folder, s3:// prefix, dataset:[NAME:]SPLIT, table:PATH")
    extra.add_argument("--out", default=None, help="output folder: relative to storage.root, absolute, or s3://")
    extra.add_argument("--actors", type=int, default=2, help="scoring actors (at most one per part)")
    extra.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    extra.add_argument("--rows-per-part", type=int, default=256, help="images per output part (unit of resumption)")
    extra.add_argument("--gpus-per-actor", type=float, default=None, help="default: 1 if the cluster has a GPU, else 0")
    extra.add_argument("--cpus-per-actor", type=float, default=1.0)
    extra.add_argument("--overlays", type=int, default=0, help="overlays (PNG) of each image's top N classes")
    extra.add_argument("--fixed-threshold", type=float, default=None, help="one threshold for every class instead")
    known, rest = extra.parse_known_args(argv)

    def job(cfg, args):
        from trcgl.predict.ray_predict import PredictOptions, run_predict

        opts = PredictOptions(
            checkpoint=known.checkpoint,
            images=known.images,
            out=known.out,
            actors=known.actors,
            batch_size=known.batch_size,
            rows_per_part=known.rows_per_part,
            gpus_per_actor=known.gpus_per_actor,
            cpus_per_actor=known.cpus_per_actor,
            overlays=known.overlays,
            fixed_threshold=known.fixed_threshold,
        )
        report = run_predict(cfg, opts, force=args.force)
        keys = ("output", "images_listed", "images_scored", "bad_images", "bad_by_reason", "parts", "parts_skipped")
        summary = {k: report[k] for k in keys} | {"threshold_rule": report["thresholds"]["rule"]["name"]}
        return summary | {"bad": report["bad"][:10], "seconds": report.get("seconds"), "rerun": report.get("rerun")}

    return _cli.run(job, __doc__, rest, force_stages=())


if __name__ == "__main__":
    sys.exit(main())
