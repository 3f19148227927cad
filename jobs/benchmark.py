"""Benchmarks, each printing its figures as ratios against a baseline measured in the same run.

    python -m jobs.benchmark prepare [--rows 2000] [--render-size 512] [--size 224] [--scale 10]
    python -m jobs.benchmark train [--backbone resnet18] [--size 128] [--batch 32] [--steps 12] [--threads 2]
    python -m jobs.benchmark generate [--images 32] [--steps 10] [--batch 8] [--no-pool]
    python -m jobs.benchmark predict [--images 512] [--source-size 512] [--preset demo] [--gpus-per-actor 0]
    python -m jobs.benchmark autoscale [--workdir DIR] [--actors-max 2] [--idle-timeout-minutes M]
    python -m jobs.benchmark gpu [--dry-run] [--preset demo] [--batches 8 32 128] [--steps 20]
    python -m jobs.benchmark faults [--workdir DIR] [--only train-worker-kill sweep-driver-kill ...]
    python -m jobs.benchmark cache [--workdir DIR] [--epochs 3] [--stages classifier diffusion]
    python -m jobs.benchmark read [--workdir DIR] [--repeats 3]
    python -m jobs.benchmark metadata [--repeats 2]
    python -m jobs.benchmark cost [--config jobs/configs/padchest.yaml] [--set KEY=VALUE ...]
    python -m jobs.benchmark scale [--sizes 2000 20000 full] [--workdir DIR] [--render-size 256] [--size 64]

prepare: our Ray Data prepare vs. torchxrayvision's PC_Dataset through a DataLoader (num_workers=2) on the same
PadChest-Synth images; images/s of each and their ratio (target >= 1.0); peak memory of prepare at 1x and
``scale``x the rows (streaming: target < 1.5x growth).

train: images/s of training steps for (a) backbone + linear head, (b) full TRCGL-Net, (c) full TRCGL-Net in a
1-worker Ray Train run reading a Ray Dataset shard; ratios b/a (target >= 0.8) and c/b (target >= 0.9).

generate: images/s of (a) the presets' route (edit at data.image_size, with controls) in an in-process loop over the
generator class, (c) the route before it (32 px sampling upsampled, no controls) and their ratio a/c; (b) the Ray
Data actor-pool job on route (a) with 1, then 2 actors (skipped with --no-pool); b/a with 1 actor (target >= 0.9)
and the 1 -> 2 actor scaling.

predict: images/s of (a) a plain in-process loop (read, decode and resize as prepare does, forward, decide, one
Parquet file) and (b) jobs.predict's library call on a Ray Data actor pool with 1, then 2 actors, over the same PNG
folder and checkpoint (the preset's model, untrained); b/a with 1 actor (target >= 0.9) and with 2 actors, and the
1 -> 2 actor scaling.

gpu: on a CUDA GPU, diffusion sampling images/s at fp32 vs bf16 for several batch sizes and classifier training
images/s with AMP off/on and torch.compile off/on, with achieved TFLOP/s against the card's dense bf16 peak. Without
CUDA (or with --dry-run) a small CPU run that only shows the code paths work.

faults: the fault-injection scenarios of tests/faults/ (train-worker, classifier driver, generation and sweep driver
kills, corrupt inputs, S3 outages behind a cut TCP proxy, token auth and a credential scan, bad configuration), one
line of figures each; --only picks scenarios by name (`python -m jobs.benchmark faults --help` lists them).

cache: the tiny classifier and diffusion training jobs with their data streamed from storage every epoch
(train.cache_mb=0) vs read once and held in Ray's object store (the default); seconds per epoch and per run, and
held/streamed ratios (below 1.0: holding is faster).

scale: PadChest-Synth rendered and prepared (demo preset, fresh storage root and local Ray per size) at each size,
``full`` being every usable metadata row (synth.rows=all): seconds and images/s of each stage and peak memory of the
whole process tree per size, time-per-row and memory ratios against the smallest size (linear time, flat memory is
the goal; the full set's targets: 60 minutes, 4 GB), then one classifier epoch's images/s streamed
(train.cache_mb=0) from the largest dataset vs held from the smallest. --no-epoch skips the epochs.

read: the train split of the tiny dataset read, filtered and held in the object store through Ray Data's first
Parquet datasource (what trcgl.ray_parquet.read_parts builds) vs its DataSourceV2 pipeline (Ray's default), on fresh
local Rays in both orders: seconds of the first read on a fresh Ray and of later reads, and V1/V2 of each.

metadata: the real PadChest CSV read by pandas vs by pyarrow (what trcgl reads it with), and its list cells parsed by
ast.literal_eval vs trcgl's fast path, each pair in alternating order; ours/baseline of each (below 1.0: faster),
and one tiny-preset subset selection (read and cleaning included). No Ray.

cost: no run, a model on paper (trcgl/cost.py): what one full pipeline run with the config costs on cluster/aws.yaml
(bytes read, prepare CPU-hours, diffusion, generation and sweep GPU-hours, storage, dollars on-demand and spot),
every figure with its source (measured, published or assumed). README "What a full run costs".
"""

from __future__ import annotations

import argparse
import sys

from jobs._cli import setup_logging


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["autoscale"]:  # its own options (trcgl_dev/benchmarks/ray_autoscale_bench.py)
        from trcgl_dev.benchmarks.ray_autoscale_bench import run as run_autoscale

        setup_logging("WARNING")
        return run_autoscale(args_in[1:])
    if args_in[:1] == ["scale"]:  # its own options (trcgl_dev/benchmarks/ray_scale_bench.py)
        from trcgl_dev.benchmarks.ray_scale_bench import run as run_scale

        setup_logging("WARNING")
        for line in run_scale(args_in[1:]).lines():
            sys.stdout.write(line + "\n")
        return 0
    if args_in[:1] == ["faults"]:  # its own options (trcgl_dev/benchmarks/ray_faults_bench.py)
        from trcgl_dev.benchmarks.ray_faults_bench import run as run_faults

        setup_logging("WARNING")
        return 1 if run_faults(args_in[1:]) else 0  # a failure count: any line that said FAILED fails the command
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="which", required=True)
    prep = sub.add_parser("prepare", help="Ray Data prepare vs PC_Dataset + DataLoader")
    prep.add_argument("--rows", type=int, default=2000, help="PadChest-Synth rows to render and prepare")
    prep.add_argument("--render-size", type=int, default=512, help="side of the rendered source PNGs")
    prep.add_argument("--size", type=int, default=224, help="prepared image side")
    prep.add_argument("--scale", type=int, default=10, help="row multiple for the memory-growth figure")
    prep.add_argument("--workdir", default=None, help="keep inputs and outputs here (default: a temp dir, removed)")
    tr = sub.add_parser("train", help="training-step throughput: plain vs full model vs Ray Train")
    tr.add_argument("--backbone", default="resnet18")
    tr.add_argument("--size", type=int, default=128)
    tr.add_argument("--batch", type=int, default=32)
    tr.add_argument("--steps", type=int, default=12, help="timed steps (after 3 warm-up steps)")
    tr.add_argument("--threads", type=int, default=2)
    gen = sub.add_parser("generate", help="generation: new vs old route; in-process loop vs Ray Data actor pool")
    gen.add_argument("--images", type=int, default=32)
    gen.add_argument("--steps", type=int, default=10, help="sampling steps per image")
    gen.add_argument("--batch", type=int, default=8)
    gen.add_argument("--preset", default="demo", help="config preset whose diffusion architecture is measured")
    gen.add_argument("--no-pool", action="store_true", help="only the in-process routes (a) and (c): no Ray")
    pred = sub.add_parser("predict", help="jobs.predict: in-process loop vs Ray Data actor pool with 1 and 2 actors")
    pred.add_argument("--images", type=int, default=512, help="PNG files to score")
    pred.add_argument("--source-size", type=int, default=512, help="side of the source PNGs")
    pred.add_argument("--preset", default="demo", help="config preset whose classifier architecture is measured")
    pred.add_argument("--batch", type=int, default=32, help="images per forward pass")
    pred.add_argument("--rows-per-part", type=int, default=64, help="images per output part")
    pred.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs for the one actor (split over two)")
    pred.add_argument("--workdir", default=None, help="keep inputs and outputs here (default: a temp dir, removed)")
    gpu = sub.add_parser("gpu", help="GPU code paths: sampling fp32/bf16, training AMP/compile, TFLOP/s vs peak")
    gpu.add_argument("--dry-run", action="store_true", help="CPU, small sizes, even where CUDA is present")
    gpu.add_argument("--preset", default="demo", help="config preset whose architectures are measured")
    gpu.add_argument("--batches", type=int, nargs="+", default=None, help="sampling batch sizes")
    gpu.add_argument("--steps", type=int, default=20, help="sampler steps per image")
    gpu.add_argument("--train-size", type=int, default=None, help="classifier image side (default 224 on CUDA)")
    gpu.add_argument("--train-batch", type=int, default=64)
    gpu.add_argument("--compile-on-cpu", action="store_true", help="also time torch.compile in the CPU dry run")
    sub.add_parser("autoscale", help="GPU nodes from 0 and back on the local autoscaling cluster (--help for options)")
    sub.add_parser("faults", help="the fault-injection scenarios, one line of figures each (--help for options)")
    sub.add_parser("scale", help="render + prepare at growing row counts: time and memory growth (--help for options)")
    from trcgl_dev.benchmarks.ray_cache_bench import add_arguments as cache_arguments

    cache_arguments(sub.add_parser("cache", help="training epochs: data streamed each epoch vs held in memory"))
    from trcgl_dev.benchmarks.ray_read_bench import add_arguments as read_arguments

    read_arguments(sub.add_parser("read", help="Parquet reads: Ray Data's V1 datasource vs DataSourceV2"))
    meta = sub.add_parser("metadata", help="the PadChest CSV: pandas vs pyarrow read, literal_eval vs fast parse")
    meta.add_argument("--repeats", type=int, default=2, help="timed runs per method (alternating the order)")
    cost = sub.add_parser("cost", help="what a full run with a config costs, on paper (no Ray)")
    cost.add_argument("--config", default="jobs/configs/padchest.yaml", help="preset name or YAML path")
    cost.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    if args.which == "prepare":
        from trcgl_dev.benchmarks.ray_prepare_bench import run

        result = run(args.rows, args.render_size, args.size, args.scale, args.workdir)
    elif args.which == "gpu":
        from trcgl_dev.benchmarks.gpu_bench import run as run_gpu

        result = run_gpu(
            args.preset,
            dry_run=args.dry_run or None,
            batches=args.batches,
            steps=args.steps,
            train_size=args.train_size,
            train_batch=args.train_batch,
            compile_on_cpu=args.compile_on_cpu,
        )
    elif args.which == "generate":
        from trcgl_dev.benchmarks.ray_generate_bench import run as run_generate

        result = run_generate(args.images, args.steps, args.batch, args.preset, pool=not args.no_pool)
    elif args.which == "predict":
        from trcgl_dev.benchmarks.ray_predict_bench import run as run_predict

        sizes = (args.images, args.source_size, args.preset, args.batch, args.rows_per_part)
        result = run_predict(*sizes, gpus_per_actor=args.gpus_per_actor, workdir=args.workdir)
    elif args.which == "cost":
        from trcgl.config import load_config
        from trcgl.cost import estimate

        result = estimate(load_config(args.config, args.set), name=args.config)
    elif args.which == "cache":
        from trcgl_dev.benchmarks.ray_cache_bench import run as run_cache

        result = run_cache(args.workdir, args.epochs, tuple(args.stages))
    elif args.which == "metadata":
        from trcgl_dev.benchmarks.metadata_bench import run as run_metadata

        result = run_metadata(args.repeats)
    elif args.which == "read":
        from trcgl_dev.benchmarks.ray_read_bench import run as run_read

        result = run_read(args.workdir, args.repeats)
    else:
        from trcgl_dev.benchmarks.ray_train_bench import run as run_train

        result = run_train(args.backbone, args.size, args.batch, args.steps, threads=args.threads)
    for line in result.lines():
        sys.stdout.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
