"""Building a config: defaults ← a YAML preset (``jobs/configs/<name>.yaml`` or a path) ← dotted overrides.

Every step is validated (:func:`trcgl.config.checks.validate`): an unknown key or a value of the wrong type is a
:class:`~trcgl.errors.ConfigError` that names the key and where the value came from.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from trcgl.config.checks import validate
from trcgl.config.schema import Config, from_dict, to_dict
from trcgl.errors import ConfigError

PRESET_DIR = Path(__file__).resolve().parent.parent.parent / "jobs" / "configs"


def _merge(base: dict[str, Any], update: dict[str, Any], cls: Any = None) -> dict[str, Any]:
    """``base`` updated by ``update``: config sections merge key by key; any other value (mappings such as
    ``sweep.space`` included) is replaced whole, so a preset can drop keys of a default mapping."""
    cls = Config if cls is None else cls
    hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else {}
    out = dict(base)
    for key, value in update.items():
        tp = hints.get(key)
        if isinstance(value, dict) and isinstance(out.get(key), dict) and dataclasses.is_dataclass(tp):
            out[key] = _merge(out[key], value, tp)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parses ``a.b.c=value`` (value read as YAML) into (["a", "b", "c"], value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return keys, value


def preset_path(preset: str) -> Path:
    """Resolves a preset name (``tiny``) or a YAML path to a file."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config file {preset!r} does not exist")
        return path
    candidate = PRESET_DIR / f"{preset}.yaml"
    if not candidate.exists():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown config preset {preset!r}; known presets: {known}, or give a .yaml path")
    return candidate


def load_config(preset: str | None = "demo", overrides: list[str] | None = None) -> Config:
    """Defaults ← preset YAML ← ``--set`` overrides, validated.

    Args:
        preset: preset name in ``jobs/configs`` or a YAML path; None for bare defaults.
        overrides: ``section.key=value`` strings.

    Raises:
        ConfigError: naming the bad key and the file or override it came from.
    """
    cfg = from_dict({}, "defaults")
    if preset is not None:
        path = preset_path(preset)
        with open(path) as fh:
            try:
                data = yaml.safe_load(fh) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
        cfg = from_dict(_merge(to_dict(cfg), data), f"file {path}")
    for text in overrides or []:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        cfg = from_dict(_merge(to_dict(cfg), nested), f"override {text!r}")
    validate(cfg)
    return cfg


def apply_overrides(cfg: Config, values: dict[str, Any], origin: str) -> Config:
    """A new validated config: ``cfg`` with each ``{"section.key": value}`` set (values already parsed).

    Raises:
        ConfigError: naming the bad key and ``origin``.
    """
    data = to_dict(cfg)
    for dotted, value in values.items():
        nested: Any = value
        for key in reversed([k for k in dotted.split(".") if k]):
            nested = {key: nested}
        data = _merge(data, nested)
    out = from_dict(data, origin)
    validate(out)
    return out


LOCAL_PATH_KEYS = (
    "storage.root",
    "data.metadata",
    "data.images",
    "model.pretrained",
    "model.label_embedding",
    "generate.model",
    "generate.reference_checkpoint",
)


def absolute_local_paths(cfg: Config) -> Config:
    """``cfg`` with every relative local path among :data:`LOCAL_PATH_KEYS` made absolute against this process's
    working directory (URIs with a scheme, ``learned`` and None are left as they are).

    A job resolves them once, in its driver: Ray Train runs its workers in another working directory (the run's
    artifacts folder under Ray's session directory), where ``./runs`` would name a different folder.
    """
    values: dict[str, Any] = {}
    for key in LOCAL_PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not isinstance(value, str) or "://" in value or value == "learned" or os.path.isabs(value):
            continue
        values[key] = os.path.abspath(os.path.expanduser(value))
    return apply_overrides(cfg, values, "absolute paths") if values else cfg


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
