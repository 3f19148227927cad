"""Prepare a dataset: metadata + images → Parquet parts, and the sidecars _labels.json, _cooccurrence.parquet and
_prepare_report.json (pd.read_parquet on the folder reads the parts alone).

With data.source=padchest-synth (the default) it first renders PadChest-Synth if that is not there yet. Rerunning
with the same config skips finished work; a different config writes a different dataset name.

    python -m jobs.prepare --config demo
    python -m jobs.prepare --config demo --set storage.root=s3://bucket/trcgl storage.endpoint_url=http://host:9000
    python -m jobs.prepare --config padchest --set data.images=/data/padchest data.metadata=/data/padchest/X.csv
"""

from __future__ import annotations

import sys

from jobs import _cli


def main(argv: list[str] | None = None) -> int:
    from trcgl.data.ray_prepare import run_prepare
    from trcgl.data.ray_synth import run_synthesize

    def job(cfg, args):
        if cfg.data.source == "padchest-synth" and cfg.data.images is None:
            run_synthesize(cfg)
        report = run_prepare(cfg)
        drop = ("rejected_image_list", "rejected_metadata_examples")
        return {k: v for k, v in report.items() if k not in drop}

    def text(cfg, summary):
        from trcgl.storage import PREPARE_REPORT, Storage, dataset_dir

        storage = Storage(cfg.storage.root, cfg.storage)
        saved = storage.uri(storage.sidecar_rel(dataset_dir(summary["dataset"]), PREPARE_REPORT))
        return _cli.brief(summary, saved)

    return _cli.run(job, __doc__, argv, text=text)


if __name__ == "__main__":
    sys.exit(main())
