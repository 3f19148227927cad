"""What a full run costs, on paper: the pipeline's work from a config, priced on one cluster shape.

Every input carries its source (``measured: BENCHMARKS.md#...``, ``published: ...`` or ``assumed: ...``); every
derived figure names the inputs it comes from and takes the weakest kind among them (assumed < published <
measured). The work scales with the config: rows read, epochs, image sizes, the sweep's trial count and ASHA rungs,
the generation plan. GPU time is FLOPs (counted, see BENCHMARKS.md#cost-model-inputs) over an assumed fraction of
the card's peak: no GPU figure has been measured yet (issue 19, section 5), so the GPU-hours are the weakest part.

Left out: node start-up and idle time before scale-down, the head's disk, data transfer (in-region S3 is free),
evaluation and fidelity scoring (forward passes only, small beside training), and DDP efficiency below 1.0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from trcgl.config import Config

log = logging.getLogger(__name__)

KINDS = ("assumed", "published", "measured")  # weakest first


@dataclass(frozen=True)
class Sourced:
    """A number and where it comes from (``kind: detail``, kind one of :data:`KINDS`)."""

    value: float
    source: str

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]


def _weakest(*inputs: Sourced) -> str:
    return min((i.kind for i in inputs), key=KINDS.index)


@dataclass(frozen=True)
class CostInputs:
    """The model's constants: PadChest, our measured rates, the card, the prices (us-east-1)."""

    rows: Sourced = Sourced(160_861, "published: PadChest metadata CSV shipped with torchxrayvision (README Data)")
    frontal_rows: Sourced = Sourced(110_000, "assumed: frontal rows with labels (issue 19, PadChest-Synth's copy)")
    dataset_bytes: Sourced = Sourced(1.0e12, "published: PadChest, about 1 TB of 16-bit PNGs (BIMCV dataset page)")
    source_side_px: Sourced = Sourced(2500, "assumed: typical PadChest image side; decode cost ~ source pixels")
    prepare_images_s: Sourced = Sourced(126.5 / 2, "measured: BENCHMARKS.md#prepare (126.5 images/s on 2 CPUs)")
    prepare_bench_side_px: Sourced = Sourced(512, "measured: BENCHMARKS.md#prepare (512 px rendered sources)")
    classifier_flops: Sourced = Sourced(70.66e9, "measured: BENCHMARKS.md#cost-model-inputs (ResNet-50, 384 px)")
    classifier_flops_px: int = 384
    unet_forward_flops: Sourced = Sourced(1230.1e9, "measured: BENCHMARKS.md#cost-model-inputs (padchest UNet)")
    unet_flops_px: int = 384
    gpu_name: str = "g5.2xlarge, 1 A10G"
    gpu_peak_flops: Sourced = Sourced(70e12, "published: A10G dense bf16 peak (trcgl_dev/benchmarks/gpu_bench.py)")
    mfu: Sourced = Sourced(0.30, "assumed: 30 % of peak, DDP scaling 1.0 (no GPU measured yet, issue 19 section 5)")
    diffusion_repeat: Sourced = Sourced(1.3, "assumed: mean rows per train row in a diffusion epoch (group repeats)")
    tail_classes: Sourced = Sourced(13, "assumed: tail classes of cxr-lt-30 (BENCHMARKS.md#generation study)")
    medium_classes: Sourced = Sourced(12, "assumed: medium classes of cxr-lt-30")
    gpu_on_demand: Sourced = Sourced(1.212, "published: EC2 list price, g5.2xlarge, 2026-12 (check before use)")
    gpu_spot: Sourced = Sourced(0.50, "assumed: g5.2xlarge spot (varies by zone and hour; check price history)")
    cpu_node_vcpus: Sourced = Sourced(16, "published: m6i.4xlarge vCPUs (cluster/aws.yaml CPU workers)")
    cpu_on_demand: Sourced = Sourced(0.768, "published: EC2 list price, m6i.4xlarge, 2026-12 (check before use)")
    cpu_spot: Sourced = Sourced(0.30, "assumed: m6i.4xlarge spot (varies by zone and hour; check price history)")
    head_on_demand: Sourced = Sourced(0.384, "published: EC2 list price, m6i.2xlarge head, 2026-12 (check)")
    s3_gb_month: Sourced = Sourced(0.023, "published: S3 Standard list price per GB-month, 2026-12 (check)")


@dataclass(frozen=True)
class Figure:
    """One row of the estimate."""

    what: str
    value: float
    unit: str
    source: str


@dataclass
class CostEstimate:
    """The estimate's rows, the inputs they come from, and the config it was made for."""

    config: str
    inputs: CostInputs
    figures: list[Figure] = field(default_factory=list)

    def add(self, what: str, value: float, unit: str, how: str, *inputs: Sourced) -> float:
        self.figures.append(Figure(what, value, unit, f"{_weakest(*inputs)}: {how}" if inputs else how))
        return value

    def value(self, what: str) -> float:
        return next(f.value for f in self.figures if f.what == what)

    def lines(self) -> list[str]:
        out = [f"cost  {self.config}: one full pipeline run, prices us-east-1", "", "| figure | value | source |"]
        out.append("|---|---|---|")
        out += [f"| {f.what} | {_fmt(f.value)} {f.unit} | {f.source} |" for f in self.figures]
        out += ["", "| input | value | source |", "|---|---|---|"]
        for name, item in vars(self.inputs).items():
            if isinstance(item, Sourced):
                out.append(f"| {name} | {_fmt(item.value)} | {item.source} |")
        return out


def _fmt(x: float) -> str:
    if x >= 1e7:
        return f"{x:.4g}"
    if x >= 100 or x == int(x):
        return f"{x:,.0f}"
    return f"{x:.3g}"


def asha_epochs_per_trial(max_epochs: int, grace_period: int, reduction_factor: float) -> float:
    """Expected epochs of one ASHA trial: every trial reaches the first rung, 1/reduction_factor of those the next.

    Rungs at grace_period * reduction_factor**k below max_epochs; the survivors of the last rung run to max_epochs.
    """
    rungs, r = [], float(grace_period)
    while r < max_epochs:
        rungs.append(r)
        r *= reduction_factor
    epochs, done, share = 0.0, 0.0, 1.0
    for rung in [*rungs, float(max_epochs)]:
        epochs += share * (rung - done)
        done, share = rung, share / reduction_factor
    return epochs


def estimate(cfg: Config, name: str = "config", inputs: CostInputs | None = None) -> CostEstimate:
    """The cost of ``jobs.pipeline`` with ``cfg``: prepare, diffusion, generation, baseline, controls, sweep, final.

    Args:
        cfg: the run's config (epochs, image sizes, generation plan and sweep are read from it).
        name: what the first printed line calls the config.
        inputs: the constants; None: :class:`CostInputs` defaults.

    Returns:
        The estimate (``lines()`` prints it as two Markdown tables).
    """
    i = inputs or CostInputs()
    est = CostEstimate(name, i)
    if cfg.model.backbone != "resnet50":
        log.warning("classifier FLOPs were counted for resnet50, not %s: its GPU-hours are off", cfg.model.backbone)
    gpu_rate = i.gpu_peak_flops.value * i.mfu.value  # FLOP/s per GPU
    gpu_in = (i.gpu_peak_flops, i.mfu)
    classifier_in = (i.frontal_rows, i.classifier_flops, *gpu_in)  # every classifier stage's inputs

    # data: what prepare reads and writes
    frontal = i.frontal_rows.value
    est.add("images read by prepare", frontal, "images", "frontal rows with labels", i.frontal_rows)
    est.add(
        "bytes read by prepare",
        frontal * i.dataset_bytes.value / i.rows.value / 1e12,
        "TB",
        "images x (dataset bytes / rows)",
        i.frontal_rows,
        i.dataset_bytes,
        i.rows,
    )
    prepared_gb = frontal * cfg.data.image_size**2 * 2 / 1e9  # raw uint16 pixels
    est.add("prepared dataset", prepared_gb, "GB", f"images x {cfg.data.image_size}^2 x 2 B", i.frontal_rows)
    per_cpu = i.prepare_images_s.value * (i.prepare_bench_side_px.value / i.source_side_px.value) ** 2
    cpu_h = est.add(
        "prepare CPU-hours",
        frontal / per_cpu / 3600,
        "CPU-h",
        "images / (measured images/s per CPU x (512 px / source side)^2)",
        i.frontal_rows,
        i.prepare_images_s,
        i.source_side_px,
    )

    # GPU work: FLOPs per image x images / achieved FLOP/s
    train_rows = frontal * (1 - cfg.data.split.val_fraction - cfg.data.split.test_fraction)
    clf = i.classifier_flops.value * (cfg.data.image_size / i.classifier_flops_px) ** 2
    unet = i.unet_forward_flops.value * (cfg.diffusion.image_size / i.unet_flops_px) ** 2
    n_classes = i.tail_classes.value * (cfg.generate.aug_ratio_tail > 0) + i.medium_classes.value * (
        cfg.generate.aug_ratio_medium > 0
    )
    synthetic = n_classes * cfg.generate.per_class_max if cfg.pipeline.diffusion else 0.0  # upper bound: every cap
    steps = cfg.diffusion.sample_steps
    if cfg.generate.mode == "edit":
        steps = max(1, math.ceil(cfg.generate.strength * steps))
    guided = 2 if cfg.diffusion.guidance_scale != 1.0 else 1
    gen_h = est.add(
        "generation GPU-hours",
        synthetic * 2 * steps * guided * unet / gpu_rate / 3600,
        "GPU-h",
        f"{synthetic:,.0f} rows (every tail/medium class at per_class_max) x 2 (control) x {steps} steps x {guided} "
        "(guidance) x UNet forward",
        i.tail_classes,
        i.medium_classes,
        i.unet_forward_flops,
        *gpu_in,
    )
    diff_epochs = cfg.diffusion.epochs if cfg.pipeline.diffusion else 0
    diff_h = est.add(
        "diffusion training GPU-hours",
        train_rows * i.diffusion_repeat.value * diff_epochs * 3 * unet / gpu_rate / 3600,
        "GPU-h",
        f"train rows x repeat x {diff_epochs} epochs x 3 UNet forwards (forward + backward)",
        i.frontal_rows,
        i.diffusion_repeat,
        i.unet_forward_flops,
        *gpu_in,
    )
    clf_h = clf / gpu_rate / 3600  # GPU-hours per classifier image-epoch
    base_h = est.add(
        "baseline classifier GPU-hours",
        train_rows * cfg.train.epochs * clf_h,
        "GPU-h",
        f"train rows x {cfg.train.epochs} epochs x classifier FLOPs",
        *classifier_in,
    )
    ctrl_h = est.add(
        "control classifiers GPU-hours",
        len(cfg.pipeline.controls) * (train_rows + synthetic) * cfg.train.epochs * clf_h,
        "GPU-h",
        f"{len(cfg.pipeline.controls)} controls x (train + extra rows) x {cfg.train.epochs} epochs",
        *classifier_in,
    )
    trial_epochs = asha_epochs_per_trial(cfg.sweep.max_epochs, cfg.sweep.grace_period, cfg.sweep.reduction_factor)
    trial_h = est.add(
        "sweep GPU-hours per trial",
        (train_rows + synthetic) * trial_epochs * clf_h,
        "GPU-h",
        f"(train + synthetic rows) x {trial_epochs:.2f} expected ASHA epochs (max {cfg.sweep.max_epochs})",
        *classifier_in,
    )
    sweep_h = est.add(
        f"sweep GPU-hours, {cfg.sweep.num_samples} trials",
        cfg.sweep.num_samples * trial_h,
        "GPU-h",
        "trials x per trial (linear in sweep.num_samples)",
        *classifier_in,
    )
    final_epochs = cfg.pipeline.final_epochs or cfg.train.epochs
    final_h = est.add(
        "final classifier GPU-hours",
        (train_rows + synthetic) * final_epochs * clf_h,
        "GPU-h",
        f"(train + synthetic rows) x {final_epochs} epochs",
        *classifier_in,
    )
    gpu_h = est.add(
        "GPU-hours, total",
        diff_h + gen_h + base_h + ctrl_h + sweep_h + final_h,
        "GPU-h",
        "sum of the GPU stages (1 GPU per node)",
        i.frontal_rows,
        *gpu_in,
    )

    # wall clock: each stage on the GPUs it uses at once; the head runs throughout
    workers = cfg.train.num_workers * cfg.train.gpus_per_worker
    wall = (
        cpu_h / (i.cpu_node_vcpus.value * 6)  # cluster/aws.yaml: up to 6 CPU workers
        + (diff_h + base_h + ctrl_h + final_h) / workers
        + gen_h / (cfg.generate.actors_max * cfg.generate.num_gpus)
        + sweep_h / (workers * cfg.sweep.max_concurrent_trials)
    )
    est.add("wall-clock hours", wall, "h", "stages in sequence, each on all the GPUs it uses", i.frontal_rows, *gpu_in)

    # storage and money
    synthetic_gb = synthetic * 2 * cfg.diffusion.image_size**2 * 2 / 1e9
    stored_gb = est.add(
        "storage",
        i.dataset_bytes.value / 1e9 + prepared_gb + synthetic_gb,
        "GB",
        "PadChest in S3 + prepared shards + synthetic rows with controls (checkpoints: < 1 GB)",
        i.frontal_rows,
        i.dataset_bytes,
    )
    cpu_nodes_h = cpu_h / i.cpu_node_vcpus.value
    for label, gpu_price, cpu_price in (
        ("on-demand", i.gpu_on_demand, i.cpu_on_demand),
        ("spot", i.gpu_spot, i.cpu_spot),
    ):
        est.add(
            f"compute, {label} ({i.gpu_name})",
            gpu_h * gpu_price.value + cpu_nodes_h * cpu_price.value + wall * i.head_on_demand.value,
            "USD",
            f"GPU-h x {label} GPU node price + CPU node-h x {label} CPU price + wall-clock h x on-demand head price",
            gpu_price,
            cpu_price,
            i.head_on_demand,
            i.frontal_rows,
            *gpu_in,
        )
    est.add("storage per month", stored_gb * i.s3_gb_month.value, "USD", "GB x S3 price", i.s3_gb_month, i.frontal_rows)
    return est
