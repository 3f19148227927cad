"""Render oracle tail-class rows with PadChest-Synth's own renderer: the upper bound for synthetic tail rows.

The rows the generation plan would make (generate.* in sample mode: the same classes, counts and donors), each
rendered fresh with a new image id and its donor's findings, localizations and projection, prepared like real rows.
Writes {root}/runs/{run}/oracle/part-*.parquet (mixed into training with train.extra_source=oracle), _plan.parquet
and _oracle_report.json (sidecars: pd.read_parquet on the folder reads the rows). A rerun after a kill renders only
the missing parts; a rerun with other generate or synth values stops, naming them, unless --force renders the folder
again. Needs data.source=padchest-synth.

    python -m jobs.oracle --config demo
    python -m jobs.train_classifier --config demo --set train.run=demo-oracle train.extra_source=oracle \
        train.oracle=runs/demo/oracle train.aug_ratio_tail=1.0
"""

from __future__ import annotations

import sys

from jobs import _cli


def main(argv: list[str] | None = None) -> int:
    from trcgl.data.ray_oracle import run_oracle
    from trcgl.data.synth import oracle
    from trcgl.data.synth.oracle import check_source

    return _cli.run(
        lambda cfg, args: run_oracle(cfg, force=args.force),
        __doc__,
        argv,
        force_stages=(),
        check=check_source,
        text=lambda cfg, summary: _cli.brief(summary, _cli.saved_in(summary, oracle.REPORT_FILE)),
    )


if __name__ == "__main__":
    sys.exit(main())
