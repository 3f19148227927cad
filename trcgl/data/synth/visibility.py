"""How visible each PadChest-Synth finding is at a working resolution: pixels it changes, measured on the renderer.

A generator can only carry a finding that survives downsampling to the classifier's size. For each class, the same
anatomy is rendered with and without that one finding (:func:`trcgl.data.synth.render.render_image` draws from
independent random streams per purpose, so adding a finding leaves the anatomy, the other layers and the film noise
unchanged), both images are prepared as the prepare stage prepares a rendered image (16-bit PNG, scaled to [0, 1] by
its stored bit depth, padded square and resized with antialiasing), and the pixels whose absolute difference exceeds
:data:`DIFF_THRESHOLD` are counted. The figure of a class is the median count over a few seeded anatomies (frontal PA
films, no localizations: the renderer places the finding where it usually sits).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from trcgl.data.images import decode_xray, encode_png16, resize_square
from trcgl.data.synth.findings import CLASS_NAMES, NORMAL
from trcgl.data.synth.render import MIN_SIZE, render_image

DIFF_THRESHOLD = 0.03  # |with - without| above this (intensity in [0, 1]) counts as a changed pixel
DEFAULT_RENDER_SIZE = 256  # synth.size's default: the side PadChest-Synth images are rendered at
BITS_STORED = 12
VISIBLE_MIN_PIXELS = 16
"""A finding is *visible* at a working size when it changes at least this many pixels there (median over anatomies).

Read off the renderer's own figures, not tuned on any classifier: ``finding_visibility(CLASS_NAMES, 32)`` (rendered
at 64 or 256 px alike) ranks the 30 findings from 0 up to a few hundred pixels with one clear gap, between the small,
thin or faint signs (azygos lobe, calcified densities, bronchiectasis, nodule, sternotomy, pneumoperitoneo, ...)
and the first findings that change a region (mass, hilar enlargement, ...); 16 pixels, a 4 x 4 patch, lies in that
gap. It is an absolute count because a convolutional classifier sees a finding through the pixels it covers at the
working size, not through its share of the image; at larger sizes more findings pass it.
"""


def _prepared(pixels: np.ndarray, size: int) -> np.ndarray:
    """A rendered image as the prepare stage stores it, decoded: (size, size) float32 in [0, 1]."""
    image, _ = decode_xray(encode_png16(pixels), BITS_STORED)
    return resize_square(image, size)


def _render(image_id: str, classes: Sequence[str], render_size: int, seed: int) -> np.ndarray:
    """(render_size, render_size) uint16: one frontal PA film of the anatomy named by ``image_id``."""
    return render_image(
        image_id=image_id,
        classes=classes,
        localizations=(),
        projection="PA",
        bits_stored=BITS_STORED,
        size=render_size,
        dataset_seed=seed,
    )


@functools.lru_cache(maxsize=32)
def _visibility(classes: tuple[str, ...], size: int, samples: int, seed: int, render_size: int) -> tuple[int, ...]:
    """The cached computation behind :func:`finding_visibility` (one count per class, in order)."""
    drawn = [c for c in dict.fromkeys(classes) if c in CLASS_NAMES and c != NORMAL]
    counts: dict[str, list[int]] = {c: [] for c in drawn}
    for j in range(samples):
        image_id = f"visibility-{seed}-{j:03d}"  # one anatomy per sample
        without = _prepared(_render(image_id, [], render_size, seed), size)  # (S, S)
        for cls in drawn:
            with_finding = _prepared(_render(image_id, [cls], render_size, seed), size)  # (S, S)
            counts[cls].append(int((np.abs(with_finding - without) > DIFF_THRESHOLD).sum()))
    return tuple(int(np.median(counts[c])) if c in counts else 0 for c in classes)


def finding_visibility(
    classes: Sequence[str], size: int, samples: int = 5, seed: int = 0, render_size: int | None = None
) -> dict[str, int]:
    """Pixels each finding changes at the working size: the median over ``samples`` anatomies.

    Args:
        classes: class names. Classes the renderer does not draw (``normal``, or names outside cxr-lt-30, e.g.
            raw PadChest findings of a ``padchest-top-N`` label set) change nothing: 0.
        size: the working side in pixels (``data.image_size``).
        samples: anatomies per class (seeded: the same call gives the same figures in any process).
        seed: the renderer's dataset seed for these anatomies.
        render_size: the side the images are rendered at before downsampling (``synth.size``); None: the larger of
            ``size`` and :data:`DEFAULT_RENDER_SIZE` (never upsampled).

    Returns:
        {class: pixels of a (size, size) image whose intensity in [0, 1] changes by more than
        :data:`DIFF_THRESHOLD`}, in the order given. Results are cached per arguments.

    Raises:
        ValueError: ``size`` or ``render_size`` below the renderer's minimum, ``render_size`` below ``size``, or
            ``samples`` < 1.
    """
    render = max(size, DEFAULT_RENDER_SIZE) if render_size is None else int(render_size)
    if size < 1 or render < MIN_SIZE or render < size:
        raise ValueError(f"need 1 <= size <= render_size and render_size >= {MIN_SIZE}, got {size}, {render}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    counts = _visibility(tuple(classes), int(size), int(samples), int(seed), render)
    return dict(zip(classes, counts, strict=True))


def visible_classes(visibility: dict[str, int], min_pixels: int = VISIBLE_MIN_PIXELS) -> list[str]:
    """The classes of a :func:`finding_visibility` result that are visible (at least ``min_pixels`` changed)."""
    return [c for c, n in visibility.items() if n >= min_pixels]
