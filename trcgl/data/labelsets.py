"""Label sets: which classes a dataset has and the rules that map raw PadChest findings onto them.

Label sets are data, not code. ``cxr-lt-30`` lives in ``labelsets/cxr-lt-30.yaml`` (read it: every rule is there);
any other YAML dropped beside it is usable by its name. ``top-N`` (also spelt ``padchest-top-N``) is built from the
data: every raw finding (except ``normal``-style meta labels we drop) with at least N positives in the train split,
each class mapping from exactly itself; with ``data.source=table`` a raw finding is a label token or a label column's
name (:mod:`trcgl.data.table`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from trcgl.errors import ConfigError

LABELSET_DIR = Path(__file__).resolve().parent / "labelsets"
TOP_N = re.compile(r"^(?:padchest-)?top-(\d+)$")
NORMAL = "normal"
# Raw labels that describe the study, not a finding: never a class of padchest-top-N.
META_LABELS = frozenset({"unchanged", "exclude", "suboptimal study"})


def normalise_label(text: str) -> str:
    """Lower case, stray and repeated whitespace removed: ``' Pleural  Effusion'`` → ``'pleural effusion'``."""
    return " ".join(str(text).lower().split())


@dataclass(frozen=True)
class LabelSet:
    """Ordered classes and exact raw-label rules.

    Attributes:
        name: label-set name.
        classes: class names in output order (K).
        rules: class name → raw labels (normalised) that make it positive.
    """

    name: str
    classes: tuple[str, ...]
    rules: dict[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"label set {self.name!r} repeats a class")
        raw_to_class: dict[str, str] = {}
        for cls in self.classes:
            for raw in self.rules.get(cls, ()):
                if raw in raw_to_class and raw_to_class[raw] != cls:
                    raise ValueError(
                        f"label set {self.name!r}: raw label {raw!r} maps to both {raw_to_class[raw]!r} and {cls!r}"
                    )
                raw_to_class[raw] = cls
        object.__setattr__(self, "_raw_to_class", raw_to_class)

    @property
    def raw_to_class(self) -> dict[str, str]:
        return self._raw_to_class  # type: ignore[attr-defined]

    def classes_of(self, raw_labels: Iterable[str]) -> tuple[str, ...]:
        """The classes a row's (normalised) raw labels make positive, in label-set order.

        ``normal`` is positive only when the row says normal and no other class is positive.
        """
        found = {self.raw_to_class[r] for r in raw_labels if r in self.raw_to_class}
        if NORMAL in found and len(found) > 1:
            found.discard(NORMAL)
        return tuple(c for c in self.classes if c in found)

    def encode(self, rows_raw_labels: Sequence[Iterable[str]]) -> np.ndarray:
        """Multi-hot targets.

        Args:
            rows_raw_labels: per row, its normalised raw labels (N rows).

        Returns:
            (N, K) uint8 multi-hot matrix.
        """
        index = {c: k for k, c in enumerate(self.classes)}
        y = np.zeros((len(rows_raw_labels), len(self.classes)), dtype=np.uint8)
        for i, raw in enumerate(rows_raw_labels):
            for c in self.classes_of(raw):
                y[i, index[c]] = 1
        return y


def available() -> list[str]:
    """Names of the label sets shipped as files, plus the top-N family."""
    return sorted(p.stem for p in LABELSET_DIR.glob("*.yaml")) + ["top-N", "padchest-top-N"]


def load_file(name: str) -> LabelSet:
    """Loads a label set shipped as ``labelsets/{name}.yaml``.

    Raises:
        ConfigError: unknown name, or a malformed file (names the file and the key).
    """
    path = LABELSET_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown label set {name!r}; known: {available()}")
    data = yaml.safe_load(path.read_text())
    classes = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(classes, dict) or not classes:
        raise ConfigError(f"label set file {str(path)!r} needs a non-empty 'classes' mapping")
    rules = {}
    for cls, raws in classes.items():
        if not isinstance(raws, list) or not all(isinstance(r, str) for r in raws):
            raise ConfigError(f"label set file {str(path)!r}: class {cls!r} must map to a list of raw labels")
        rules[normalise_label(cls)] = tuple(normalise_label(r) for r in raws)
    return LabelSet(name=name, classes=tuple(rules), rules=rules)


def top_n(name: str, train_raw_labels: Sequence[Iterable[str]]) -> LabelSet:
    """``top-N`` (or ``padchest-top-N``): every raw finding with at least N train positives, by descending count."""
    match = TOP_N.match(name)
    if match is None:
        raise ConfigError(f"label set {name!r} is not of the form top-N or padchest-top-N")
    n = int(match.group(1))
    counts = Counter(r for raws in train_raw_labels for r in set(raws) if r not in META_LABELS)
    classes = tuple(sorted((c for c, v in counts.items() if v >= n), key=lambda c: (-counts[c], c)))
    if not classes:
        raise ConfigError(f"label set {name!r}: no raw finding has {n} or more train positives")
    return LabelSet(name=name, classes=classes, rules={c: (c,) for c in classes})


def resolve(name: str, train_raw_labels: Sequence[Iterable[str]] | None = None) -> LabelSet:
    """A label set by name; ``top-N`` needs the train rows' raw labels."""
    if TOP_N.match(name):
        if train_raw_labels is None:
            raise ConfigError(f"label set {name!r} is computed from train labels; none were given")
        return top_n(name, train_raw_labels)
    return load_file(name)
