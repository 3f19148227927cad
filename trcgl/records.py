"""Stage records: what a stage's outputs were made from, so that a rerun reuses only work done for the same inputs.

Before any work, a stage claims its folder (:func:`claim`) with a record: the dotted config keys it depends on with
their values, and its inputs (the dataset name, the records of the upstream stages it reads). The record is
``_inputs.json`` in the folder (a leading underscore keeps it out of the Parquet namespace).

On a rerun:

- no record and no other file: a new folder; the record is written and the stage runs;
- the same record: the stage resumes what it left unfinished or skips what it published;
- a record whose own config keys differ, or a folder with outputs but no record: :class:`StaleStageError`, naming
  the changed keys, the folder and the option that recomputes it (``--force``). Nothing is deleted;
- a record whose upstream inputs differ (an upstream stage was recomputed from other values): the stage's outputs
  were made from artifacts that no longer exist, so the folder is cleared and the stage runs again with the current
  config (its own keys may have changed too: the user changed them together with the upstream stage's).

With ``force``, the folder is cleared and the stage runs from scratch whatever its record says.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable, Mapping
from typing import Any

from trcgl.config import Config, config_hash, to_dict
from trcgl.errors import ConfigError
from trcgl.storage import Storage, run_dir

log = logging.getLogger(__name__)

RECORD = "_inputs.json"
INPUT_PREFIX = "input."  # record keys that name upstream inputs rather than config keys


class StaleStageError(ConfigError):
    """A stage's folder holds outputs made from other config values; the message names the keys and the option."""


def flat_keys(cfg: Config, sections: Iterable[str], drop: Iterable[str] = ()) -> dict[str, Any]:
    """The values of every key of ``sections`` as ``{"section.key": value}`` (nested sections dotted further).

    Args:
        cfg: the config.
        sections: top-level section names (``"model"``, ``"train"``, ...).
        drop: dotted keys left out (execution settings that do not change a stage's outputs, or identities such
            as ``train.run``).
    """
    out: dict[str, Any] = {}
    data = to_dict(cfg)

    def walk(value: Any, prefix: str) -> None:
        if _is_subsection(cfg, prefix):  # a section: one key per field; any other mapping is one value
            for key, sub in value.items():
                walk(sub, f"{prefix}.{key}")
        else:
            out[prefix] = value

    for section in sections:
        walk(data[section], section)
    for key in drop:
        out.pop(key, None)
    return out


def _is_subsection(cfg: Config, dotted: str) -> bool:
    """Whether a dotted key names a nested config section (``data.split``) rather than a value (``sweep.space``)."""
    obj: Any = cfg
    for part in dotted.split("."):
        if not hasattr(obj, "__dataclass_fields__") or not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return hasattr(obj, "__dataclass_fields__")


def stage_record(stage: str, keys: Mapping[str, Any], **inputs: Any) -> dict[str, Any]:
    """A record: the stage's name, its config keys and its named inputs (stored as ``input.<name>``)."""
    return {"stage": stage, **dict(keys), **{f"{INPUT_PREFIX}{k}": v for k, v in inputs.items()}}


def record_hash(record: Mapping[str, Any]) -> str:
    """A short stable identity of a record (what a downstream stage stores as its input)."""
    return config_hash(dict(record), length=12)


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Keys whose values differ between two records (present in one only counts as differing), sorted."""
    return sorted(k for k in set(old) | set(new) if old.get(k, _MISSING) != new.get(k, _MISSING))


_MISSING = object()


def _upstream_recomputed(old: Any, new: Any) -> bool:
    """Whether an input changed because the same upstream output was recomputed (same folder or URI, another record),
    rather than because the stage now reads other inputs (which its own config keys say)."""
    if old is None or new is None:
        return False
    if isinstance(old, dict) and isinstance(new, dict):
        if "uri" in old or "uri" in new:
            return old.get("uri") == new.get("uri") and old != new
        return set(old) == set(new) and old != new  # the same folders, other records
    return old != new  # a record hash


def read_record(storage: Storage, folder: str) -> dict[str, Any] | None:
    """The record of ``folder``, or None when it has none."""
    rel = posixpath.join(folder, RECORD)
    return storage.read_json(rel) if storage.exists(rel) else None


def upstream_hash(storage: Storage, folder: str) -> str | None:
    """The record hash of an upstream stage's folder (None when it has no record: made outside a stage)."""
    record = read_record(storage, folder)
    return record_hash(record) if record is not None else None


def own_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The config keys (not upstream inputs) whose values differ between two records."""
    return [k for k in changed_keys(old, new) if not k.startswith(INPUT_PREFIX)]


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], keys: list[str]) -> str:
    """``key: old -> new`` for the first few keys, for error messages."""
    shown = [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}" for k in keys[:8]]
    more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
    return "; ".join(shown) + more


def claim(storage: Storage, folder: str, record: Mapping[str, Any], force_option: str, force: bool = False) -> str:
    """Claims ``folder`` for a stage made from ``record`` before the stage does any work.

    Args:
        storage: the storage root.
        folder: the stage's folder, relative to the root.
        record: what the stage's outputs will be made from (:func:`stage_record`).
        force_option: the command-line option that recomputes this stage, named in the error.
        force: clear the folder and recompute whatever its record says.

    Returns:
        ``"new"`` (nothing there: record written), ``"same"`` (made from the same record: resume or skip),
        ``"cleared"`` (cleared because of ``force`` or an upstream recompute; record written).

    Raises:
        StaleStageError: the folder holds outputs made from other config values (or from unknown ones).
    """
    record = dict(record)
    old = read_record(storage, folder)
    rel = posixpath.join(folder, RECORD)
    if old == record and not force:
        return "same"
    if old is None and not force and not storage.list_files(folder):
        storage.write_json(rel, record)
        return "new"
    if not force:
        if old is None:
            raise StaleStageError(
                f"{storage.uri(folder)!r} holds outputs of stage {record['stage']!r} with no record of the config "
                f"they were made from; recompute it with {force_option}, or choose another run name"
            )
        own = own_changes(old, record)
        recomputed = any(
            _upstream_recomputed(old.get(k), record.get(k))
            for k in changed_keys(old, record)
            if k.startswith(INPUT_PREFIX)
        )
        if own and not recomputed:
            raise StaleStageError(
                f"{storage.uri(folder)!r} was made by stage {record['stage']!r} with other config values "
                f"({describe_changes(old, record, own)}); recompute it with {force_option}, or choose another run name"
            )
        changed = changed_keys(old, record)
        log.info(
            "%s: recomputing %s, made from upstream outputs that were recomputed since (%s)",
            record["stage"],
            storage.uri(folder),
            ", ".join(k[len(INPUT_PREFIX) :] for k in changed),
        )
    else:
        log.info("%s: --force given: clearing %s and recomputing", record["stage"], storage.uri(folder))
    storage.delete(folder)
    storage.write_json(rel, record)
    return "cleared"


# ---------------------------------------------------------------------------------------------------- the stages
# What each stage's outputs depend on. Keys left out change how a stage runs, not what it writes: resources and
# parallelism (generation is byte-identical across actor counts; not across batch sizes, whose rounding differs, so
# generate.batch_size is recorded), caching, retries, and identities
# (train.run names the folder itself; train.dataset is replaced by the resolved dataset name).

CLASSIFIER_EXECUTION_KEYS = (
    "train.run",
    "train.dataset",
    "train.cpus_per_worker",
    "train.gpus_per_worker",
    "train.placement_strategy",
    "train.pin_memory",
    "train.max_failures",
    "train.checkpoints_to_keep",
    "train.eval_local_rows",
    "train.cache_mb",
    "train.oracle",  # replaced by the oracle folder it resolves to, recorded as an input
)
DIFFUSION_EXECUTION_KEYS = ()
GENERATE_EXECUTION_KEYS = (
    "generate.actors_min",
    "generate.actors_max",
    "generate.num_gpus",
    "generate.cpus_per_actor",
    "generate.model",
    "generate.reference_checkpoint",
    "generate.grid_examples",
    "generate.realism_max_images",
)
# what only synthetic_filtered/ depends on (the fidelity filter), beside everything synthetic/ depends on
FIDELITY_KEYS = ("generate.fidelity_threshold", "generate.fidelity_keep_fraction")
SWEEP_EXECUTION_KEYS = ("sweep.max_concurrent_trials", "sweep.driver_cpus", "sweep.enabled")
ORACLE_STAGE = "oracle"  # runs/{run}/oracle/: rows rendered by PadChest-Synth's renderer (trcgl.data.synth.oracle)


def _under_root(storage: Storage, uri: str) -> str | None:
    """``uri`` relative to the storage root, or None when it lies elsewhere."""
    root = storage.uri("").rstrip("/") + "/"
    if "://" not in uri and not uri.startswith("/"):
        return uri.strip("/")
    return uri[len(root) :].strip("/") if uri.startswith(root) else None


def folder_hash(storage: Storage, uri_or_rel: str, strip: str = "") -> str | None:
    """The record hash of the stage folder holding ``uri_or_rel`` (minus a trailing ``strip`` part such as
    ``/model``), or None when it is outside the root or has no record."""
    rel = _under_root(storage, uri_or_rel)
    if rel is None:
        return None
    if strip and rel.endswith(strip):
        rel = rel[: -len(strip)].rstrip("/")
    return upstream_hash(storage, rel)


def extra_folders(cfg: Config) -> list[str]:
    """The folders of generated rows a classifier run draws its extra rows from (relative to the root, or URIs).

    ``train.extra_source=synthetic``: ``train.synthetic``; ``oracle``: ``train.oracle``, by default the run's own
    ``runs/{train.run}/oracle`` (written by ``jobs.oracle``); ``real``: none (copies of real rows).
    """
    if cfg.train.extra_source == ORACLE_STAGE:
        return [cfg.train.oracle or run_dir(cfg.train.run, ORACLE_STAGE)]
    return list(cfg.train.synthetic) if cfg.train.extra_source == "synthetic" else []


def classifier_record(cfg: Config, storage: Storage, dataset: str) -> dict[str, Any]:
    """A classifier run: model, loss and train keys, the dataset, and the synthetic (or oracle) folders it mixes in."""
    mixes = cfg.train.aug_ratio_tail > 0 or cfg.train.aug_ratio_medium > 0
    folders = {f: folder_hash(storage, f) for f in extra_folders(cfg)} if mixes else {}
    keys = flat_keys(cfg, ("model", "loss", "train"), CLASSIFIER_EXECUTION_KEYS)
    if cfg.train.extra_source == ORACLE_STAGE:
        return stage_record("classifier", keys, dataset=dataset, synthetic={}, oracle=folders)
    return stage_record("classifier", keys, dataset=dataset, synthetic=folders)


def diffusion_record(cfg: Config, dataset: str) -> dict[str, Any]:
    """The diffusion model: every diffusion key and the dataset it trains on."""
    return stage_record("train_diffusion", flat_keys(cfg, ("diffusion",), DIFFUSION_EXECUTION_KEYS), dataset=dataset)


def generate_record(cfg: Config, storage: Storage, dataset: str, model_uri: str) -> dict[str, Any]:
    """Generated images (``synthetic/``): the generate keys but the fidelity filter's, the dataset, and the diffusion
    model (its URI and its record)."""
    keys = flat_keys(cfg, ("generate",), GENERATE_EXECUTION_KEYS + FIDELITY_KEYS)
    model = {"uri": model_uri, "record": folder_hash(storage, model_uri, "/model")}
    return stage_record("generate", keys, dataset=dataset, model=model)


def filtered_record(
    cfg: Config, storage: Storage, dataset: str, model_uri: str, reference: str | None
) -> dict[str, Any]:
    """The fidelity-filtered images (``synthetic_filtered/``): what ``synthetic/`` depends on, the filter's keys and
    the reference classifier that scores them (its URI and its record)."""
    record = generate_record(cfg, storage, dataset, model_uri)
    record |= {key: flat_keys(cfg, ("generate",))[key] for key in FIDELITY_KEYS}
    ref = {"uri": reference, "record": folder_hash(storage, reference, "/best")} if reference else None
    return record | {f"{INPUT_PREFIX}reference": ref}


def sweep_record(cfg: Config, storage: Storage, dataset: str, folders: Iterable[str]) -> dict[str, Any]:
    """A sweep: its keys, the base classifier keys every trial starts from, the dataset and the synthetic folders
    its space draws from (``folders``, relative to the root)."""
    keys = flat_keys(cfg, ("sweep", "model", "loss", "train"), CLASSIFIER_EXECUTION_KEYS + SWEEP_EXECUTION_KEYS)
    synthetic = {f: upstream_hash(storage, f) for f in folders}
    return stage_record("sweep", keys, dataset=dataset, synthetic=synthetic)
