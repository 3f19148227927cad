"""Train the text-guided conditional diffusion model on a prepared dataset with Ray Train (resumable).

Publishes {root}/runs/{run}/diffusion/model/ (diffusers save_pretrained layout), the folder jobs.generate samples
from. Tail-class rows are repeated by diffusion.group_weights. A rerun resumes or skips a model trained from the same
diffusion config and dataset; one trained from other values stops the job, naming them, unless --force recomputes it.

    python -m jobs.train_diffusion --config demo
    python -m jobs.train_diffusion --config demo --set diffusion.epochs=20 train.use_gpu=true
"""

from __future__ import annotations

import sys

from jobs import _cli


def main(argv: list[str] | None = None) -> int:
    from trcgl.config import check_generator_size
    from trcgl.diffusion.ray_diffusion import run_train_diffusion

    return _cli.run(
        lambda cfg, args: run_train_diffusion(cfg, force=args.force),
        __doc__,
        argv,
        force_stages=(),
        check=check_generator_size,
    )


if __name__ == "__main__":
    sys.exit(main())
