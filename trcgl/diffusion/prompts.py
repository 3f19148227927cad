"""The prompt template: the ONE place that turns a row's classes, localizations and projection into text.

Template (lower case except the projection; items separated by ``"; "``, localizations joined by ``", "``)::

    chest x-ray, {projection} view: {class 1}; {class 2}; ...; {localization 1}, {localization 2}, ...

    build_prompt(["pleural effusion", "cardiomegaly"], ["loc left", "loc basal"], "PA")
    → "chest x-ray, PA view: pleural effusion; cardiomegaly; loc left, loc basal"

    build_prompt([], ["loc left"], "AP_horizontal")
    → "chest x-ray, AP horizontal view: no finding"

* Classes keep the order given (the label set's order, as :meth:`LabelSet.classes_of` returns them); localizations
  follow in the order given, de-duplicated.
* A row with no class of the label set is ``no finding``; its localizations are dropped (they describe findings
  outside the label set).
* Underscores in the projection become spaces (``AP_horizontal`` → ``AP horizontal``).
* The text encoder truncates at ``DiffusionConfig.max_prompt_tokens``: classes come first so they survive; a long
  localization list is what gets cut.

:data:`EMPTY_PROMPT` is the unconditional prompt of classifier-free guidance. :data:`WORD_PATTERN` is how text splits
into tokenizer words; :func:`prompt_vocabulary` and the offline tokenizer (:mod:`trcgl.diffusion.text`) both use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

EMPTY_PROMPT = ""  # the unconditional prompt (classifier-free guidance)
NO_FINDING = "no finding"
PREFIX = "chest x-ray"
# PadChest projections; their words are always in the vocabulary.
PROJECTIONS = ("PA", "AP", "AP_horizontal", "L", "COSTAL")
SEPARATORS = "; ,"  # the separators the template puts between items
WORD_PATTERN = r"\w+|[^\w\s]"  # a word is a run of word characters or one punctuation mark

_WORD_RE = re.compile(WORD_PATTERN)


def _norm(text: str) -> str:
    """Lower case, single spaces: ``' Pleural  Effusion'`` → ``'pleural effusion'``."""
    return " ".join(str(text).lower().split())


def _projection_text(projection: str) -> str:
    return " ".join(str(projection).replace("_", " ").split())


def _unique(items: Iterable[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item and item not in out:
            out.append(item)
    return out


def build_prompt(classes: Sequence[str], localizations: Sequence[str], projection: str) -> str:
    """The prompt of one image (template in the module docstring).

    Args:
        classes: the row's positive classes, in label-set order.
        localizations: the row's PadChest localizations (``"loc left"``, ...).
        projection: PadChest projection (``PA``, ``AP``, ``AP_horizontal``, ...).

    Returns:
        The prompt text.
    """
    head = f"{PREFIX}, {_projection_text(projection)} view: "
    items = _unique(_norm(c) for c in classes)
    if not items:
        return head + NO_FINDING
    locs = _unique(_norm(loc) for loc in localizations)
    if locs:
        items.append(", ".join(locs))
    return head + "; ".join(items)


def split_words(text: str) -> list[str]:
    """Lower-cased tokenizer words of ``text`` (as the offline tokenizer splits it)."""
    return _WORD_RE.findall(text.lower())


def prompt_vocabulary(
    class_names: Sequence[str], localizations: Sequence[str], projections: Sequence[str] = ()
) -> list[str]:
    """Every word a prompt over these classes and localizations can contain, sorted.

    Args:
        class_names: the label set's classes.
        localizations: the localizations seen in the data.
        projections: projections seen in the data beyond PadChest's (a table's views, ``UNK`` where it has none).

    Returns:
        Sorted unique lower-case words: the template's, the PadChest and given projections', the classes' and
        localizations'.
    """
    views = _unique([*PROJECTIONS, *projections])
    texts = [build_prompt([], [], p) for p in views] + [SEPARATORS, *class_names, *localizations]
    return sorted({w for text in texts for w in split_words(text)})
