"""The configuration tree: one dataclass per section, and its conversion to and from plain dicts.

A config crosses process boundaries only as a plain dict (:func:`to_dict` / :func:`from_dict`); building one checks
every key and type (:func:`coerce`) and names the bad key and where its value came from. Range checks that types
cannot express live in :mod:`trcgl.config.checks`; presets and overrides in :mod:`trcgl.config.loading`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from trcgl.config.defaults import default_ablation_rows, default_comparisons, default_space
from trcgl.errors import ConfigError


@dataclass
class StorageConfig:
    """Where every stage reads and writes (see :mod:`trcgl.storage`).

    Credentials are never part of the config: they come from the environment or the cloud's instance role.
    """

    root: str = "./runs"  # local path or s3://bucket/prefix
    endpoint_url: str | None = None  # S3-compatible endpoint; falls back to $AWS_ENDPOINT_URL
    region: str = "us-east-1"
    # attempts per S3 request before failing loudly; with s3_client=s3fs on a fixed backoff (0.1 * 1.7**i s, see
    # trcgl.storage): 10 rides out an outage of up to 17 s and fails one of 26 s or more, 30-40 s after it began
    retries: int = 10
    s3_client: str = "s3fs"  # "s3fs" (botocore, wrapped for pyarrow) or "pyarrow" (pyarrow's native S3 client)
    connect_timeout_s: float = 5.0


@dataclass
class SplitConfig:
    """Patient-level split fractions; the split of a patient is a hash of (seed, PatientID)."""

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0


@dataclass
class GroupConfig:
    """Head / medium / tail thresholds on train prevalence (fraction of train images positive)."""

    head_min: float = 0.10  # prevalence > head_min: head
    tail_max: float = 0.01  # prevalence < tail_max: tail; in between: medium


@dataclass
class TableConfig:
    """``data.source=table``: which columns of a labelled CSV or Parquet table (``data.metadata``) mean what.

    How each value is read, and which rows are dropped and why: :mod:`trcgl.data.table`; recipes for ChestX-ray14 and
    CheXpert / MIMIC-CXR: README "Your own data: a labelled table".
    """

    path_column: str = "Path"  # image path: relative to data.images (else the table's folder), absolute, or s3://
    patient_column: str | None = None  # patient id column (the patient split groups by it)
    patient_pattern: str | None = None  # or a regex on the path whose first group is the patient (r"(patient\d+)/")
    split_column: str | None = None  # train / val / test per row (valid, validate, validation = val); None: by patient
    view_columns: list[str] = field(default_factory=list)  # joined by " " into the view; []: no view filter
    view_values: dict[str, str] = field(default_factory=dict)  # view -> projection ({"Lateral": "L"}); else as is
    labels_column: str | None = None  # one column of delimited findings (ChestX-ray14's "Finding Labels") ...
    labels_separator: str = "|"
    none_labels: list[str] = field(default_factory=list)  # findings that mean none (e.g. "No Finding"): dropped
    # ... or one column per finding (1 positive, 0 negative, -1 uncertain, blank unmentioned): names, or "auto"
    label_columns: list[str] | str = field(default_factory=list)
    uncertain: str = "zeros"  # -1 values: "zeros" (negative), "ones" (positive) or "ignore" (not known)
    blank: str = "zeros"  # blank values: "zeros" or "ignore" (not known)
    localization_column: str | None = None  # optional delimited localizations (diffusion prompts, regions)
    localization_separator: str = "|"


@dataclass
class DataConfig:
    """What dataset to prepare and how.

    ``source`` is ``padchest-synth`` (the embedded default: rendered by :mod:`jobs.synthesize_padchest` into
    ``{root}/sources/``), ``padchest`` (real images at ``images``) or ``table`` (any labelled CSV or Parquet table at
    ``metadata``, its columns mapped by ``table``).
    """

    source: str = "padchest-synth"
    # PadChest CSV, or the table of data.source=table (.csv, .csv.gz or .parquet, local or s3://); None: the default
    metadata: str | None = None
    images: str | None = None  # images root (local or s3://); None: the rendered PadChest-Synth images
    layout: str = "auto"  # "dirs" ({images}/{ImageDir}/{ImageID}), "flat" ({images}/{ImageID}) or "auto"
    label_set: str = "cxr-lt-30"  # a file in trcgl/data/labelsets/, or "top-N" (alias "padchest-top-N")
    projections: list[str] = field(default_factory=lambda: ["PA", "AP", "AP_horizontal"])
    image_size: int = 224
    max_rows: int | None = None  # keep only the first N usable rows (ordered by ImageID); None: all
    shard_rows: int = 256  # rows per Parquet part (also the unit of work of one Ray Data task)
    # DICOM inputs only: map values through the file's VOI LUT or first WindowCenter/WindowWidth (as a viewer shows
    # them) before scaling to [0, 1]; off: the full stored range, as PNGs (trcgl/data/dicom.py)
    dicom_window: bool = False
    # also read 8-bit grayscale PNG and JPEG files, scaled by 255 (ChestX-ray14, CheXpert, MIMIC-CXR-JPG); off: an
    # 8-bit file is a rejected image (not_16bit_gray / not_png), as it is for PadChest's 16-bit release
    accept_8bit: bool = False
    name: str | None = None  # dataset name; None: derived from this section's hash
    split: SplitConfig = field(default_factory=SplitConfig)
    groups: GroupConfig = field(default_factory=GroupConfig)
    table: TableConfig = field(default_factory=TableConfig)  # data.source=table only


@dataclass
class SynthConfig:
    """PadChest-Synth: real PadChest metadata rows rendered as synthetic 16-bit PNGs in PadChest's layout."""

    # rows in the stratified subset, or "all": every usable frontal and lateral metadata row (tail_floor and
    # lateral_fraction then have nothing to choose and are ignored, also by the source's name)
    rows: int | str = 2000
    size: int = 256  # rendered image side, pixels
    layout: str = "dirs"  # "dirs": PadChest's {ImageDir}/{ImageID}; "flat": {ImageID} (as torchxrayvision reads)
    seed: int = 0  # dataset seed (per-image seeds derive from it and the ImageID)
    tail_floor: int = 20  # minimum positives per class in the subset (where the metadata has that many)
    lateral_fraction: float = 0.1  # share of lateral (L) rows kept in the subset, so loaders see both
    contact_sheet_examples: int = 8
    batch_size: int = 32  # rows per Ray Data rendering task


@dataclass
class ModelConfig:
    """TRCGL-Net and its peers as configurations of one model (trcgl/models).

    Peers: plain backbone + BCE (se, class_attention, gcn, csra all off); ML-GCN (gcn on, class_attention off: GCN
    classifiers on pooled features); CSRA (csra on); TRCGL-Net (se, class_attention, gcn on).
    """

    backbone: str = "resnet18"  # any timm model name, built with in_chans=1
    pretrained: str | None = None  # path or s3:// to backbone weights (never downloaded from a hub)
    # feature-map stride: 32 is the backbone's own; 16 or 8 dilate the last stage(s) (timm output_stride) so that
    # attention maps have more cells (64 px: 2x2 at 32, 4x4 at 16)
    output_stride: int = 32
    se: bool = True  # channel reweighting (squeeze-and-excitation gate on the feature map)
    se_reduction: int = 16
    class_attention: bool = True  # class-aware attention: one spatial attention map per class
    attention_temperature: float = 1.0  # softmax temperature over spatial positions
    csra: bool = False  # CSRA head (class-specific residual attention) instead of class attention
    csra_lambda: float = 0.1
    csra_temperature: float = 1.0  # CSRA's attention temperature T; >= 99 means max pooling, as CSRA's code does
    pool: str = "mean"  # global pooling of the pooled head (neither class attention nor CSRA): mean or max (ML-GCN)
    # cosine classifier: logits = cosine_scale * cos(feature, W_k) + b_k (LDAM's normalised classifier)
    cosine_classifier: bool = False
    cosine_scale: float = 30.0
    bias_init: str = "log_prior"  # classifier bias at init: log_prior (sigmoid(b_k) = train prevalence) or zero
    gcn: bool = True  # label co-occurrence GCN producing one classifier vector per class
    gcn_tau: float = 0.4  # binarisation threshold on P(j|i)
    gcn_p: float = 0.2  # neighbour re-weighting: weight of neighbours vs self
    gcn_layers: int = 2
    gcn_hidden: int = 256
    gcn_bias: bool = True  # bias terms in the GCN layers (ML-GCN's reference layers have none)
    # adjacency: "paper" (node i aggregates j when P(j|i) >= tau, the paper's equation) or "reference" (ML-GCN's
    # code: gen_A + gen_adj, node i aggregates j when P(i|j) >= tau, self-loop 1); trcgl/models/gcn.py
    gcn_adjacency: str = "paper"
    # label node features: "learned", "ppmi" (fixed: SVD of the PPMI matrix of the train labels), or a path / s3://
    # to a fixed (K, D) .npy of class-name embeddings
    label_embedding: str = "learned"
    label_embedding_dim: int = 128  # D for learned and ppmi features (ppmi: at most K)
    dropout: float = 0.0


@dataclass
class LossConfig:
    """Training loss: bce, asl (asymmetric loss) or ldam_drw (LDAM margins with deferred re-weighting)."""

    name: str = "bce"
    asl_gamma_neg: float = 4.0
    asl_gamma_pos: float = 0.0
    asl_clip: float = 0.05
    asl_detach_focal: bool = True  # focal weights without gradient, as the ASL reference trains
    ldam_max_margin: float = 0.5  # in cosine units with model.cosine_classifier (Cao et al. 2019)
    ldam_scale: float = 10.0  # s for raw logits; with model.cosine_classifier, model.cosine_scale is s
    drw_start_fraction: float = 0.6  # DRW turns on class re-weighting after this fraction of epochs
    drw_beta: float = 0.999  # effective-number re-weighting beta


@dataclass
class AugmentConfig:
    """X-ray augmentations: small affine and intensity changes; no horizontal flip by default (laterality)."""

    rotate_deg: float = 5.0
    translate: float = 0.05  # fraction of the side
    scale: float = 0.05  # +- fraction
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: bool = False


@dataclass
class TrainConfig:
    """Classifier training on Ray Train."""

    run: str = "demo"  # run name: {root}/runs/{run}/classifier/; rerunning the same name resumes
    dataset: str | None = None  # prepared dataset name; None: the one the data section prepares
    epochs: int = 8
    batch_size: int = 32  # per worker
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    num_workers: int = 2  # Ray Train workers
    use_gpu: bool = False
    # leave whole CPUs for Ray Data (workers holding every CPU starve its read tasks and training hangs); 0.45, not
    # 0.5, so that two workers and a sweep trial's driver still leave one whole CPU of two
    cpus_per_worker: float = 0.45
    gpus_per_worker: float = 1.0  # when use_gpu
    # torch.distributed: "auto" (gloo for CPU workers; for GPU workers NCCL when every worker's torch can use CUDA and
    # has NCCL, else gloo, decided on the placed workers), nccl, gloo
    dist_backend: str = "auto"
    # the Train workers' placement group: PACK (Ray's default: fewest nodes), SPREAD, STRICT_PACK, STRICT_SPREAD (one
    # worker per node)
    placement_strategy: str = "PACK"
    amp: bool = True  # mixed precision (bf16 autocast) where the device supports it (CUDA with bf16)
    compile: bool = False  # torch.compile the model for training steps (checkpoints keep the plain weights)
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager": tracing without code generation)
    channels_last: bool = False  # NHWC memory format for convolutions (helps tensor cores on CUDA)
    pin_memory: bool = True  # on CUDA: page-locked host batches and non-blocking copies to the GPU
    max_failures: int = 2
    checkpoints_to_keep: int = 2
    seed: int = 0
    synthetic: list[str] = field(default_factory=list)  # synthetic Parquet folders (relative to root, or URIs)
    aug_ratio_tail: float = 0.0  # synthetic samples per real sample of a tail-class positive
    aug_ratio_medium: float = 0.0
    # where the extra rows of aug_ratio_* come from: "synthetic" (train.synthetic), "real" (copies of real train
    # positives drawn with replacement: class-balanced re-sampling, the control for synthesis) or "oracle" (rows
    # rendered fresh by PadChest-Synth's renderer, jobs.oracle: the upper bound; data.source=padchest-synth only)
    extra_source: str = "synthetic"
    oracle: str | None = None  # oracle folder for extra_source=oracle (relative to root, or URI); None: {run}/oracle
    bootstrap: int = 200  # bootstrap resamples for 95 % intervals
    # a CPU run scores a split of at most this many images in the driver rather than on a Ray Data actor pool
    # (starting actors that each load the model costs more than scoring a few hundred images); 0: always the pool
    eval_local_rows: int = 512
    # train and val data estimated at most this many MB are read once and held in Ray's object store for every epoch
    # (classifier and diffusion training); larger data streams from storage each epoch; 0: always stream
    cache_mb: float = 1024.0
    report_attention_classes: int = 4
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class DiffusionConfig:
    """Text-guided conditional diffusion (trcgl/diffusion): model, training and sampling."""

    source: str = "scratch"  # "scratch": pixel-space UNet + small text encoder trained jointly; "pretrained"
    pretrained: str | None = None  # path or s3:// to a Stable-Diffusion-family pipeline (source=pretrained)
    text_encoder: str | None = None  # path or s3:// to a pretrained transformers text encoder; None: train a small one
    freeze_text_encoder: bool = False
    # the generator's output side (pixels for scratch; the VAE's input size for pretrained); jobs that train or sample
    # it refuse a value other than data.image_size (trcgl.config.checks.check_generator_size)
    image_size: int = 64
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    # the first (highest-resolution) levels of the UNet that have plain ResNet blocks, no attention: self-attention
    # over a level's positions costs their count squared, so at 64 px two plain levels keep attention at 16 x 16
    # positions, where a 32 px model with one plain level had it
    plain_levels: int = 1
    layers_per_block: int = 1
    cross_attention_dim: int = 64
    attention_head_dim: int = 8
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 2
    max_prompt_tokens: int = 32
    num_train_timesteps: int = 1000
    cond_dropout: float = 0.1  # probability of training on the empty prompt (classifier-free guidance)
    ema_decay: float = 0.999
    sampler: str = "ddim"  # "ddim" or "dpmsolver++"
    sample_steps: int = 25
    guidance_scale: float = 3.0
    group_weights: dict[str, float] = field(default_factory=lambda: {"head": 1.0, "medium": 2.0, "tail": 8.0})
    amp: bool = True  # bf16 autocast for training steps and sampling where the device supports it (CUDA with bf16)
    epochs: int = 5
    batch_size: int = 16
    lr: float = 2e-4
    seed: int = 0


@dataclass
class GenerateConfig:
    """Tail-class synthesis on a Ray Data actor pool (jobs.generate)."""

    model: str | None = None  # diffusion model folder (local or s3://); None: {root}/runs/{run}/diffusion/model
    aug_ratio_tail: float = 1.0  # synthetic images per real train positive of each tail class
    aug_ratio_medium: float = 0.0  # the same for medium classes (0: none)
    per_class_max: int = 200  # cap per class
    rows_per_file: int = 32  # plan rows per output Parquet part (the unit of resumption)
    batch_size: int = 8  # images sampled at once by an actor
    actors_min: int = 1
    actors_max: int = 2
    num_gpus: float = 0.0  # per actor; actors fall back to CPU where a GPU is declared but CUDA is absent
    cpus_per_actor: float = 1.0
    seed: int = 0
    # "sample": images drawn from noise with the prompt of a real positive's label set; "edit": a real train image
    # negative for the class, noised to ``strength`` and denoised with the class added to its prompt (SDEdit)
    mode: str = "sample"
    strength: float = 0.6  # edit: fraction of the sampler's schedule the donor is noised to, in (0, 1]
    region: bool = True  # edit: change only a soft mask over the side and level of a real positive's localizations
    # each row also gets a control image: the same path (same seed, donor, strength, mask) with the empty prompt
    controls: bool = True
    reference_checkpoint: str | None = None  # classifier checkpoint scoring fidelity; None: the run's classifier/best
    # keep synthetic images whose fidelity score reaches this. The score is the margin: the reference's score for the
    # target class on the image minus on its own control image (generate.controls), in [-1, 1]: above 0, the prompt
    # raised the score; without control images, the raw score in [0, 1] (with a warning)
    fidelity_threshold: float | None = None
    # keep this fraction of each class's synthetic images, the highest by the same score (relative, so it never keeps
    # none when the reference scores a rare class low); with fidelity_threshold as well, both apply
    fidelity_keep_fraction: float | None = None
    grid_examples: int = 8  # synthetic and real examples per class in the sample grids
    realism_max_images: int = 256  # synthetic (and as many real) images in the realism two-sample test; 0: none


@dataclass
class SweepConfig:
    """Ray Tune + Optuna over classifier runs (jobs.sweep and the pipeline's sweep stage).

    ``space`` maps a dotted config key (or ``synthetic_set``: a folder of the run, ``synthetic`` or
    ``synthetic_filtered``) to ``{type: choice, values: [...]}``, ``{type: uniform|loguniform, low, high}`` or
    ``{type: int, low, high}`` (inclusive). A trial is the base config with its sampled values as overrides.
    """

    enabled: bool = True  # pipeline: run the sweep; false: one classifier run with train.*
    num_samples: int = 8  # trials
    max_concurrent_trials: int = 1
    seed: int = 0  # Optuna TPE sampler seed
    metric: str = "val_mAP"  # model selection uses val only
    scheduler: str = "asha"  # "asha" (early stopping by epoch) or "fifo" (every trial runs all epochs)
    max_epochs: int | None = None  # epochs per trial; None: train.epochs
    grace_period: int = 1  # ASHA: epochs before a trial may be stopped
    reduction_factor: int = 2  # ASHA
    driver_cpus: float = 0.01  # CPUs held by each trial's driver (the Train workers hold train.cpus_per_worker)
    space: dict[str, dict[str, Any]] = field(default_factory=default_space)


@dataclass
class PipelineConfig:
    """The end-to-end pipeline (jobs.pipeline)."""

    diffusion: bool = True  # train the diffusion model and generate tail-class images
    baseline: dict[str, Any] = field(
        default_factory=lambda: {"model.gcn": False, "train.aug_ratio_tail": 0.0, "train.aug_ratio_medium": 0.0}
    )  # overrides of the baseline trained beside the best config (and used as fidelity reference)
    final_epochs: int | None = None  # epochs of the final training of the best config; None: train.epochs
    # the generator's controls: the baseline retrained with each source of extra rows named here (real: copies of
    # real tail positives; synthetic: the run's generated images; oracle: the same plan rendered by PadChest-Synth),
    # at generate.aug_ratio_tail / aug_ratio_medium, as rows of the summary (README "Reading the synthetic rows")
    controls: list[str] = field(default_factory=list)


@dataclass
class AblationConfig:
    """The ablation and peer study (jobs.ablation): named rows, each one classifier run per seed on the same data.

    A row maps dotted config keys to values (overrides of the run's config) plus the pseudo-key ``extra``: where the
    extra tail/medium training rows come from. ``none``: no extra rows; ``synthetic`` / ``synthetic_filtered``: the
    run's generated folder of that name, at the study's ratios; ``synthetic_sample`` / ``synthetic_edit``: images
    generated with ``generate.mode`` forced to sample / edit (every other generate key the run's), each in a folder
    of its own (``runs/{run}/modes/{mode}/synthetic``), so one study compares both modes; ``real``: copies of real
    train positives drawn with replacement (class-balanced re-sampling) at the same ratios, the control for
    synthesis; ``oracle``: the run's ``oracle/`` folder (the generation plan's rows rendered fresh by PadChest-Synth's
    renderer, the upper bound; only with data.source=padchest-synth). Everything else (data, split, backbone, image
    size, epochs, seed policy) is the run's config and is the same for every row.
    """

    rows: dict[str, dict[str, Any]] = field(default_factory=default_ablation_rows)
    baseline: str = "backbone + BCE"  # the row the differences are taken against
    # row -> the row it adds one part to: the table's second section gives each such difference (a part on top of
    # the others, e.g. "ASL + SE" against "ASL"), beside the differences to the baseline. Both must be in ``rows``;
    # None: the pairs of trcgl/config/defaults.py default_comparisons whose two rows are in ``rows``
    comparisons: dict[str, str] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])  # train.seed of each row's runs
    bootstrap: int = 1000  # resamples of the test images for intervals and paired differences
    aug_ratio_tail: float = 1.0  # extra rows per real tail positive for rows with extra != none
    aug_ratio_medium: float = 0.0
    ratios_from_sweep: bool = True  # take the ratios from the run's finished sweep (its best trial) when it has one
    max_concurrent_trials: int = 1

    def comparison_pairs(self) -> dict[str, str]:
        """``comparisons``, or where it is None the default pairs whose two rows are both in ``rows``."""
        if self.comparisons is not None:
            return dict(self.comparisons)
        return {r: ref for r, ref in default_comparisons().items() if r in self.rows and ref in self.rows}


@dataclass
class RayConfig:
    """How a job connects to Ray."""

    address: str | None = None  # None: $RAY_ADDRESS if set, else start a local Ray
    num_cpus: int | None = None  # for a local Ray; None: all cores
    cpus_per_task: float = 1.0  # CPUs per Ray Data decode/render task
    autoscaling: bool = False  # an autoscaler can add nodes: wait for missing GPUs instead of failing fast


@dataclass
class Config:
    """The whole tree."""

    storage: StorageConfig = field(default_factory=StorageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str, origin: str) -> Any:
    """Checks ``value`` against type ``tp`` (coercing only safe cases: int→float, numeric strings→float)."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} ({origin}) must be a mapping, got {value!r}")
        return _build(tp, value, key, origin)
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key, origin)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"config key {key!r} ({origin}): {value!r} is not a {_type_name(tp)}")
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} ({origin}) must be a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[{i}]", origin) for i, v in enumerate(value)]
    if typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} ({origin}) must be a mapping, got {value!r}")
        return {str(k): coerce(v, args[1], f"{key}.{k}", origin) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "3e-4" as a string
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(f"config key {key!r} ({origin}) must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str, origin: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            raise ConfigError(f"unknown config key {dotted!r} ({origin}); known keys here: {sorted(known)}")
        kwargs[key] = coerce(value, hints[key], dotted, origin)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a plain, JSON-able dict (what crosses process boundaries)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any], origin: str = "dict") -> Config:
    """Builds and validates a :class:`Config` from a (possibly partial) plain dict."""
    return _build(Config, data, "", origin)


def config_hash(section: Any, length: int = 8) -> str:
    """A short stable hash of a config section (or any JSON-able value)."""
    data = to_dict(section) if dataclasses.is_dataclass(section) else section
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
