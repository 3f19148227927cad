"""Checks that types alone cannot express: value ranges, names that must exist, and the sweep's search space.

Run on every config built (:func:`trcgl.config.loading.load_config`, :func:`~trcgl.config.loading.apply_overrides`),
so a job fails before any work starts, naming the key.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from trcgl.config.schema import Config, coerce, to_dict
from trcgl.data.labelsets import TOP_N, load_file
from trcgl.errors import ConfigError

SYNTHETIC_SET = "synthetic_set"  # pseudo-key: which synthetic folder of the run trials draw from
SYNTHETIC_FOLDERS = ("synthetic", "synthetic_filtered")
TYPES = ("choice", "uniform", "loguniform", "int")
EXTRA_SOURCES = ("synthetic", "real", "oracle")  # train.extra_source
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # train.placement_strategy (Ray's)
GENERATE_MODES = ("sample", "edit")
# ablation.rows.<name>.extra: synthetic_<mode> draws a folder of its own, generated with generate.mode forced to <mode>
MODE_EXTRAS = {f"synthetic_{mode}": mode for mode in GENERATE_MODES}
ABLATION_EXTRAS = ("none", "synthetic", "synthetic_filtered", *MODE_EXTRAS, "real", "oracle")
DATA_SOURCES = ("padchest-synth", "padchest", "table")
# data.table.uncertain / blank: what a -1 / blank value becomes ("ignore": not known, trcgl.label_values)
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
BLANK_POLICIES = ("zeros", "ignore")


def field_type(dotted: str) -> Any:
    """The declared type of a dotted config key (``model.gcn_tau`` → float).

    Raises:
        ConfigError: the key names no config field.
    """
    cls: Any = Config
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            where = ".".join(parts[:i]) or "the top level"
            raise ConfigError(
                f"config key 'sweep.space.{dotted}': {part!r} is not a key of {where}; known: {sorted(hints)}"
            )
        tp = hints[part]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(tp):
                raise ConfigError(f"config key 'sweep.space.{dotted}': {'.'.join(parts[: i + 1])} has no sub-keys")
            cls = tp
    return tp


def _candidates(key: str, spec: dict[str, Any]) -> list[Any]:
    """The values a spec can produce that are checked against the key's type (choices, or the range ends)."""
    where = f"sweep.space.{key}"
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        raise ConfigError(f"config key {where!r} must be a mapping with type one of {list(TYPES)}, got {spec!r}")
    kind = spec["type"]
    if kind == "choice":
        extra = set(spec) - {"type", "values"}
        values = spec.get("values")
        if extra or not isinstance(values, list) or not values:
            raise ConfigError(f"config key {where!r}: a choice needs a non-empty 'values' list only, got {spec!r}")
        return list(values)
    extra = set(spec) - {"type", "low", "high"}
    low, high = spec.get("low"), spec.get("high")
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if extra or not numeric or not low < high:
        raise ConfigError(f"config key {where!r}: {kind} needs numbers low < high only, got {spec!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"config key {where!r}: loguniform needs low > 0, got {low}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"config key {where!r}: int needs integer bounds, got {low}, {high}")
    return [low, high]


def check_space(space: dict[str, dict[str, Any]]) -> None:
    """Checks every key names a config field and every value it can take has that field's type.

    Raises:
        ConfigError: naming ``sweep.space.<key>`` and the bad value.
    """
    for key, spec in space.items():
        values = _candidates(key, spec)
        if key == SYNTHETIC_SET:
            bad = [v for v in values if v not in SYNTHETIC_FOLDERS]
            if spec["type"] != "choice" or bad:
                raise ConfigError(
                    f"config key 'sweep.space.{key}' must be a choice among {list(SYNTHETIC_FOLDERS)}, got {spec!r}"
                )
            continue
        tp = field_type(key)
        if dataclasses.is_dataclass(tp):
            raise ConfigError(f"config key 'sweep.space.{key}' names a section, not a value")
        for value in values:
            if spec["type"] == "loguniform" or spec["type"] == "uniform":
                value = float(value)
            coerce(value, tp, f"sweep.space.{key}", "sweep.space")


def filters_fidelity(cfg: Config) -> bool:
    """Whether ``jobs.generate`` also writes ``synthetic_filtered/`` (a fidelity threshold or keep fraction is set)."""
    return cfg.generate.fidelity_threshold is not None or cfg.generate.fidelity_keep_fraction is not None


def check_generator_size(cfg: Config) -> None:
    """The generator must produce ``data.image_size``: synthetic rows are never resized to the classifier's size.

    An image upsampled from a smaller generator is blurred as no real row is, and every synthetic row is a tail
    positive, so "blurred means tail" becomes the cheapest feature a classifier can learn (and fidelity scores
    measure the blur). There is no resolution-matching opt-in: set ``diffusion.image_size`` to ``data.image_size``.
    Run by the jobs that train or sample the generator (``jobs.train_diffusion``, ``jobs.generate``, the
    pipeline with ``pipeline.diffusion`` and the ablation's rows that draw synthetic data) before any work, not by
    :func:`validate`: a classifier-only run may use any ``data.image_size``.

    Raises:
        ConfigError: naming both keys and their values.
    """
    if cfg.diffusion.image_size != cfg.data.image_size:
        raise ConfigError(
            f"config key 'diffusion.image_size' is {cfg.diffusion.image_size} but 'data.image_size' is "
            f"{cfg.data.image_size}: the generator must produce the classifier's resolution (synthetic rows are never "
            f"resized); set diffusion.image_size={cfg.data.image_size}"
        )


# the model section's named choices (trcgl/models/trcgl_net.py checks them again where it builds)
MODEL_CHOICES = {
    "output_stride": (8, 16, 32),
    "pool": ("mean", "max"),
    "bias_init": ("log_prior", "zero"),
    "gcn_adjacency": ("paper", "reference"),
}


def check_model(cfg: Config) -> None:
    """The model section's named choices, so a study row with a bad value fails before any work."""
    for key, choices in MODEL_CHOICES.items():
        value = getattr(cfg.model, key)
        if value not in choices:
            raise ConfigError(f"config key 'model.{key}' must be one of {list(choices)}, got {value!r}")
    if cfg.model.csra and cfg.model.cosine_classifier:
        raise ConfigError("config keys 'model.csra' and 'model.cosine_classifier' are mutually exclusive")


def check_table(cfg: Config) -> None:
    """``data.table`` for ``data.source=table``: the keys that can be checked without reading the table (which columns
    exist is checked when it is read, :mod:`trcgl.data.table`)."""
    t = cfg.data.table
    if not t.path_column:
        raise ConfigError("config key 'data.table.path_column' must name the image path column")
    if bool(t.labels_column) == bool(t.label_columns):
        raise ConfigError(
            "data.source=table needs exactly one of config keys 'data.table.labels_column' (one delimited column) "
            f"and 'data.table.label_columns' (one column per finding, or 'auto'); got {t.labels_column!r} and "
            f"{t.label_columns!r}"
        )
    if isinstance(t.label_columns, str) and t.label_columns != "auto":
        raise ConfigError(f"config key 'data.table.label_columns' must be a list of columns or 'auto', got "
                          f"{t.label_columns!r}")  # fmt: skip
    if t.patient_column and t.patient_pattern:
        raise ConfigError("config keys 'data.table.patient_column' and 'data.table.patient_pattern' are exclusive")
    if not (t.patient_column or t.patient_pattern or t.split_column):
        raise ConfigError(
            "data.source=table needs config key 'data.table.patient_column' or 'data.table.patient_pattern' (splits "
            "are by patient), or 'data.table.split_column' (a given split)"
        )
    if t.patient_pattern:
        try:
            groups = re.compile(t.patient_pattern).groups
        except re.error as exc:
            raise ConfigError(f"config key 'data.table.patient_pattern' {t.patient_pattern!r}: {exc}") from None
        if groups < 1:
            raise ConfigError(
                f"config key 'data.table.patient_pattern' {t.patient_pattern!r} needs a group: the patient id"
            )
    for key, allowed in (("uncertain", UNCERTAIN_POLICIES), ("blank", BLANK_POLICIES)):
        value = getattr(t, key)
        if value == "ignore" and t.labels_column:
            raise ConfigError(
                f"config key 'data.table.{key}' 'ignore' applies to label columns (data.table.label_columns), not to "
                f"the delimited column data.table.labels_column={t.labels_column!r}, which has no {key} values"
            )
        if value not in allowed:
            raise ConfigError(f"config key 'data.table.{key}' must be one of {list(allowed)}, got {value!r}")
    if not t.labels_separator or not t.localization_separator:
        raise ConfigError("config keys 'data.table.labels_separator' / 'localization_separator' must not be empty")


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    check_model(cfg)
    d = cfg.data
    if d.source not in DATA_SOURCES:
        raise ConfigError(f"config key 'data.source' must be one of {list(DATA_SOURCES)}, got {d.source!r}")
    if d.source == "table":
        check_table(cfg)
    if d.layout not in ("auto", "dirs", "flat"):
        raise ConfigError(f"config key 'data.layout' must be auto, dirs or flat, got {d.layout!r}")
    if not 8 <= d.image_size <= 4096:
        raise ConfigError(f"config key 'data.image_size' must be in [8, 4096], got {d.image_size}")
    if d.shard_rows < 1:
        raise ConfigError(f"config key 'data.shard_rows' must be >= 1, got {d.shard_rows}")
    s = d.split
    if s.val_fraction < 0 or s.test_fraction < 0 or s.val_fraction + s.test_fraction >= 1:
        raise ConfigError(
            f"config keys 'data.split.val_fraction' + 'data.split.test_fraction' must be in [0, 1), "
            f"got {s.val_fraction} + {s.test_fraction}"
        )
    if not 0 < d.groups.tail_max <= d.groups.head_min < 1:
        raise ConfigError(
            f"config keys 'data.groups' need 0 < tail_max <= head_min < 1, got {d.groups.tail_max}, {d.groups.head_min}"
        )
    if isinstance(cfg.synth.rows, str) and cfg.synth.rows != "all":
        raise ConfigError(f"config key 'synth.rows' must be a row count or 'all', got {cfg.synth.rows!r}")
    if (cfg.synth.rows != "all" and cfg.synth.rows < 1) or not 8 <= cfg.synth.size <= 4096:
        raise ConfigError(f"config keys 'synth.rows'/'synth.size' out of range: {cfg.synth.rows}, {cfg.synth.size}")
    if not TOP_N.match(d.label_set):
        try:
            load_file(d.label_set)
        except ConfigError as exc:
            raise ConfigError(f"config key 'data.label_set': {exc}") from None
    if cfg.synth.layout not in ("dirs", "flat"):
        raise ConfigError(f"config key 'synth.layout' must be dirs or flat, got {cfg.synth.layout!r}")
    if cfg.storage.s3_client not in ("s3fs", "pyarrow"):
        raise ConfigError(f"config key 'storage.s3_client' must be s3fs or pyarrow, got {cfg.storage.s3_client!r}")
    if cfg.storage.retries < 1:
        raise ConfigError(f"config key 'storage.retries' must be >= 1, got {cfg.storage.retries}")
    kf = cfg.generate.fidelity_keep_fraction
    if kf is not None and not 0 < kf <= 1:
        raise ConfigError(f"config key 'generate.fidelity_keep_fraction' must be in (0, 1] or null, got {kf}")
    if cfg.generate.mode not in GENERATE_MODES:
        raise ConfigError(f"config key 'generate.mode' must be sample or edit, got {cfg.generate.mode!r}")
    if not 0 < cfg.generate.strength <= 1:
        raise ConfigError(f"config key 'generate.strength' must be in (0, 1], got {cfg.generate.strength}")
    if cfg.diffusion.plain_levels < 0 or not cfg.diffusion.unet_channels:
        raise ConfigError(
            f"config keys 'diffusion.plain_levels' / 'diffusion.unet_channels' must be >= 0 / non-empty, got "
            f"{cfg.diffusion.plain_levels} / {cfg.diffusion.unet_channels}"
        )
    if cfg.generate.realism_max_images < 0:
        raise ConfigError(
            f"config key 'generate.realism_max_images' must be >= 0, got {cfg.generate.realism_max_images}"
        )
    sw = cfg.sweep
    if cfg.train.extra_source not in EXTRA_SOURCES:
        raise ConfigError(
            f"config key 'train.extra_source' must be one of {list(EXTRA_SOURCES)}, got {cfg.train.extra_source!r}"
        )
    if cfg.train.extra_source == "oracle" and d.source != "padchest-synth":
        raise ConfigError(
            f"config key 'train.extra_source' is oracle, which renders with PadChest-Synth's renderer (the only source "
            f"with a true generative process), but config key 'data.source' is {d.source!r}"
        )
    if cfg.train.cache_mb < 0:
        raise ConfigError(f"config key 'train.cache_mb' must be >= 0, got {cfg.train.cache_mb}")
    if cfg.train.eval_local_rows < 0:
        raise ConfigError(f"config key 'train.eval_local_rows' must be >= 0, got {cfg.train.eval_local_rows}")
    if cfg.train.dist_backend not in ("auto", "nccl", "gloo"):
        raise ConfigError(f"config key 'train.dist_backend' must be auto, nccl or gloo, got {cfg.train.dist_backend!r}")
    if cfg.train.placement_strategy not in PLACEMENT_STRATEGIES:
        raise ConfigError(
            f"config key 'train.placement_strategy' must be one of {list(PLACEMENT_STRATEGIES)}, "
            f"got {cfg.train.placement_strategy!r}"
        )
    if sw.scheduler not in ("asha", "fifo"):
        raise ConfigError(f"config key 'sweep.scheduler' must be asha or fifo, got {sw.scheduler!r}")
    if sw.num_samples < 1 or sw.max_concurrent_trials < 1:
        raise ConfigError(
            f"config keys 'sweep.num_samples'/'sweep.max_concurrent_trials' must be >= 1, "
            f"got {sw.num_samples}, {sw.max_concurrent_trials}"
        )
    check_space(sw.space)
    ab = cfg.ablation
    if not ab.rows:
        raise ConfigError("config key 'ablation.rows' must name at least one row")
    if ab.baseline not in ab.rows:
        raise ConfigError(f"config key 'ablation.baseline' is {ab.baseline!r}, not one of the rows {list(ab.rows)}")
    for name, reference in (ab.comparisons or {}).items():
        for role, row_name in (("row", name), ("reference", reference)):
            if row_name not in ab.rows:
                raise ConfigError(
                    f"config key 'ablation.comparisons.{name}': the {role} {row_name!r} is not one of the rows "
                    f"{list(ab.rows)}"
                )
    if not ab.seeds or len(set(ab.seeds)) != len(ab.seeds):
        raise ConfigError(f"config key 'ablation.seeds' must be distinct seeds, at least one, got {ab.seeds}")
    if ab.bootstrap < 0 or ab.aug_ratio_tail < 0 or ab.aug_ratio_medium < 0 or ab.max_concurrent_trials < 1:
        raise ConfigError(
            "config keys 'ablation.bootstrap'/'ablation.aug_ratio_tail'/'ablation.aug_ratio_medium' must be >= 0 and "
            f"'ablation.max_concurrent_trials' >= 1, got {ab.bootstrap}, {ab.aug_ratio_tail}, {ab.aug_ratio_medium}, "
            f"{ab.max_concurrent_trials}"
        )
    for name, row in ab.rows.items():
        if not isinstance(row, dict):
            raise ConfigError(f"config key 'ablation.rows.{name}' must be a mapping of overrides, got {row!r}")
        if row.get("extra", "none") not in ABLATION_EXTRAS:
            raise ConfigError(
                f"config key 'ablation.rows.{name}.extra' must be one of {list(ABLATION_EXTRAS)}, got {row['extra']!r}"
            )
        if row.get("extra") == "oracle" and d.source != "padchest-synth":
            raise ConfigError(
                f"config key 'ablation.rows.{name}.extra' is oracle, which renders with PadChest-Synth's renderer, but "
                f"config key 'data.source' is {d.source!r}"
            )
    for key in ("access_key", "secret_key", "aws_secret_access_key", "aws_access_key_id", "token"):
        if key in to_dict(cfg.storage):
            raise ConfigError("credentials never go in the config; use the environment or an instance role")
