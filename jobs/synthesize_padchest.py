"""Render PadChest-Synth, the embedded default dataset, into {storage.root}/sources/.

Real PadChest metadata rows (shipped with torchxrayvision) rendered as synthetic 16-bit PNGs in PadChest's own
layout, plus a CSV in PadChest's format and one contact sheet per class. Reruns render only missing images.

    python -m jobs.synthesize_padchest --config demo
    python -m jobs.synthesize_padchest --config demo --set synth.rows=5000 synth.size=512 storage.root=s3://b/p
"""

from __future__ import annotations

import sys

from jobs import _cli


def main(argv: list[str] | None = None) -> int:
    from trcgl.data.ray_synth import run_synthesize

    def job(cfg, args):
        report = run_synthesize(cfg)
        return {k: v for k, v in report.items() if k not in ("class_counts", "contact_sheets")}

    return _cli.run(
        job,
        __doc__,
        argv,
        text=lambda cfg, summary: _cli.brief(summary, _cli.saved_in(summary, "synth_report.json", "root")),
    )


if __name__ == "__main__":
    sys.exit(main())
