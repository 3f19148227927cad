"""Generate synthetic tail-class images with the trained diffusion model on a Ray Data actor pool.

Writes {root}/runs/{run}/synthetic/part-*.parquet (rows the classifier mixes in with train.synthetic) and the sidecars
_plan.parquet, _generate_report.json, _realism.json and _grids/ (pd.read_parquet on the folder reads the rows). A
rerun after a kill generates only the missing parts; a rerun with other generate values stops, naming them, unless
--force regenerates the folder.

    python -m jobs.generate --config demo
    python -m jobs.generate --config demo --set generate.num_gpus=1 generate.actors_max=8 ray.autoscaling=true
"""

from __future__ import annotations

import sys

from jobs import _cli


def main(argv: list[str] | None = None) -> int:
    from trcgl.config import check_generator_size
    from trcgl.diffusion.ray_generate import run_generate
    from trcgl.storage import GENERATE_REPORT

    return _cli.run(
        lambda cfg, args: run_generate(cfg, force=args.force),
        __doc__,
        argv,
        force_stages=(),
        check=check_generator_size,
        text=lambda cfg, summary: _cli.brief(summary, _cli.saved_in(summary, GENERATE_REPORT)),
    )


if __name__ == "__main__":
    sys.exit(main())
