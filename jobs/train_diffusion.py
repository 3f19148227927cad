"""Train the text-guided conditional diffusion model on a prepared dataset with Ray Train (resumable).

Publishes {root}/runs/{run}/diffusion/model/ (diffusers save_pretrained layout), the folder jobs.generate samples
from. Tail-class rows are repeated by diffusion.group_weights.

    python -m jobs.train_diffusion --config demo
    python -m jobs.train_diffusion --config demo --set diffusion.epochs=20 train.use_gpu=true
"""

from __future__ import annotations

import sys

from jobs import _cli


def main(argv: list[str] | None = None) -> int:
    from trcgl.diffusion.ray_diffusion import run_train_diffusion

    return _cli.run(lambda cfg, args: run_train_diffusion(cfg), __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
