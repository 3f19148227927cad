"""Render one PadChest-Synth image: anatomy, findings, film.

``render_image`` is the only entry point the rest of the project needs. The steps:

1. Derive independent random streams from ``sha256(dataset_seed, image_id, stream name)`` (never Python's
   ``hash``, never global state), so an image is byte-identical in any process and adding a finding does not
   reshuffle the anatomy, the film noise or the other findings.
2. Sample the normal geometry (:func:`anatomy.sample_anatomy`), let findings that change anatomy edit it
   (:data:`findings.ANATOMY_EFFECTS`: heart size, lung volume, diaphragm height, ...), then draw the layers
   (:func:`anatomy.build_scene`).
3. Draw each finding in :data:`findings.DRAW_ORDER` (opacities, then lucencies, then bone, then devices).
4. Compose the layers into a density map (:func:`compose`) and expose it like a film (:func:`expose`):
   exponential detector response, quantum + electronic noise, per-image exposure, bit depth.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from trcgl.data.synth.anatomy import Scene, View, build_scene, sample_anatomy
from trcgl.data.synth.findings import (
    ANATOMY_EFFECTS,
    CLASS_NAMES,
    DRAW_ORDER,
    FINDING_RENDERERS,
    NORMAL,
    parse_localizations,
)

logger = logging.getLogger(__name__)

SUPPORTED_BITS = (10, 12)
MIN_SIZE = 32
LATERAL_PROJECTIONS = frozenset({"L"})
SUPINE_PROJECTIONS = frozenset({"AP", "AP_horizontal"})

AIR_ATTENUATION = 0.74  # fraction of the body's density that full lung air removes
PARENCHYMA_DENSITY = 0.035  # density of normal lung tissue and vessels per unit of ``markings``
REFERENCE_DENSITY = 1.4  # density mapped to the top of the range (thick soft tissue + bone)
UNSHARPNESS_PX_AT_512 = 0.7  # detector blur (gaussian sigma, pixels of a 512 image)


def rng_stream(dataset_seed: int, image_id: str, stream: str) -> np.random.Generator:
    """Independent, reproducible random generator for one purpose of one image.

    Args:
        dataset_seed: the dataset's seed.
        image_id: the image's identity (PadChest ImageID).
        stream: what the numbers are for ("anatomy", "finding:nodule", ...).

    Returns:
        A numpy Generator seeded from a SHA-256 digest (stable across processes and platforms).
    """
    digest = hashlib.sha256(f"{int(dataset_seed)}\x1f{image_id}\x1f{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def compose(scene: Scene) -> np.ndarray:
    """Collapse a scene's layers into one density map.

    Lung air removes a fraction of the body's soft tissue unless fluid or tissue fills it; aerated lung adds
    its parenchyma and vessels; bone, extra density (calcium, metal) and misplaced air add on top.

    Args:
        scene: the drawn scene.

    Returns:
        (S, S) float32 density, >= 0 (dense = bright).
    """
    a = scene.anatomy
    aerated = scene.air() * (1.0 - np.clip(scene.fill, 0.0, 1.0))
    density = scene.soft * (1.0 - (AIR_ATTENUATION * a.air_gain) * aerated)
    density += (PARENCHYMA_DENSITY * aerated) * scene.markings
    density += scene.bone
    density += scene.density
    density -= scene.lucency
    np.maximum(density, 0.0, out=density)
    sigma = UNSHARPNESS_PX_AT_512 * scene.size / 512
    return ndimage.gaussian_filter(density, sigma, truncate=3.0, output=density) if sigma > 0.3 else density


def expose(density: np.ndarray, rng: np.random.Generator, bits_stored: int, lateral: bool) -> np.ndarray:
    """Turn a density map into a detector image of the given bit depth.

    Exponential (film-like) response with a per-image beam hardness, a gentle heel-effect gradient, signal-
    dependent quantum noise plus fine electronic noise, a per-image gamma and output window. The mapping does
    not depend on the image content, so a finding changes only its own pixels.

    Args:
        density: (S, S) float32 from :func:`compose`.
        rng: the image's film random stream.
        bits_stored: 10 or 12.
        lateral: lateral films are thicker and get a little more exposure.

    Returns:
        (S, S) uint16 in [0, 2**bits_stored - 1].
    """
    size = density.shape[0]
    k = rng.uniform(0.4, 0.9) * (0.85 if lateral else 1.0)
    signal = -np.expm1(-k * density)
    signal *= 1.0 / (-math.expm1(-k * REFERENCE_DENSITY))
    heel = rng.uniform(-0.05, 0.05)
    tilt = rng.uniform(-0.03, 0.03)
    c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    signal *= (1.0 + heel * c)[:, None] * (1.0 + tilt * c)[None, :]
    quantum = rng.uniform(0.008, 0.022)
    electronic = rng.uniform(0.002, 0.006)
    noise = rng.standard_normal(density.shape, dtype=np.float32)
    signal += (quantum * np.sqrt(np.clip(signal, 0.0, None)) + electronic) * noise
    np.clip(signal, 0.0, 1.0, out=signal)
    gamma = rng.uniform(0.85, 1.2)
    if abs(gamma - 1.0) > 1e-3:
        signal **= gamma
    max_value = 2**bits_stored - 1
    low = rng.uniform(0.0, 0.05) * max_value
    high = rng.uniform(0.82, 1.0) * max_value
    image = low + signal * (high - low)
    return np.clip(np.rint(image), 0, max_value).astype(np.uint16)


def _check_args(image_id: str, classes: Sequence[str], bits_stored: int, size: int) -> list[str]:
    """Validate arguments; returns the findings to draw (deduplicated, "normal" dropped, drawing order)."""
    if bits_stored not in SUPPORTED_BITS:
        raise ValueError(
            f"unsupported bits_stored {bits_stored!r} for image {image_id!r}; supported: {list(SUPPORTED_BITS)}"
        )
    if not isinstance(size, int | np.integer) or size < MIN_SIZE:
        raise ValueError(f"image size {size!r} for image {image_id!r} must be an integer >= {MIN_SIZE}")
    known = set(CLASS_NAMES)
    for name in classes:
        if name not in known:
            raise ValueError(f"unknown finding {name!r} for image {image_id!r}; known: {list(CLASS_NAMES)}")
    present = set(classes) - {NORMAL}
    return [name for name in DRAW_ORDER if name in present]


def render_image(
    *,
    image_id: str,
    classes: Sequence[str],
    localizations: Sequence[str],
    projection: str,
    bits_stored: int,
    size: int,
    dataset_seed: int,
) -> np.ndarray:
    """Render one synthetic chest X-ray.

    Args:
        image_id: PadChest ImageID; with ``dataset_seed`` it fixes every random choice.
        classes: cxr-lt-30 class names (``"normal"`` or empty: nothing abnormal).
        localizations: raw PadChest localization strings (``"loc left"``, ``"loc basal"``, ...), used to place
            findings where they make sense.
        projection: PadChest projection: "L" is lateral; "AP"/"AP_horizontal" are portable frontal films;
            "PA", "COSTAL" and anything else are drawn as PA.
        bits_stored: 12 or 10 (PadChest's BitsStored_DICOM).
        size: output pixels per side.
        dataset_seed: the dataset's seed.

    Returns:
        (size, size) uint16 with values in [0, 2**bits_stored - 1]; bright = dense.

    Raises:
        ValueError: unknown class name, unsupported bits_stored or bad size (the message names the value).
    """
    names = _check_args(image_id, classes, bits_stored, size)
    bits_stored = int(bits_stored)  # 12.0 from a pandas float column is fine
    view = View.LATERAL if projection in LATERAL_PROJECTIONS else View.FRONTAL
    supine = projection in SUPINE_PROJECTIONS
    where = parse_localizations(localizations)

    anatomy = sample_anatomy(rng_stream(dataset_seed, image_id, "anatomy"), view, supine)
    for name in names:
        effect = ANATOMY_EFFECTS.get(name)
        if effect is not None:
            effect(anatomy, rng_stream(dataset_seed, image_id, f"anatomy:{name}"), where)
    scene = build_scene(anatomy, int(size), rng_stream(dataset_seed, image_id, "scene"))
    for name in names:
        FINDING_RENDERERS[name](scene, rng_stream(dataset_seed, image_id, f"finding:{name}"), where)
    density = compose(scene)
    return expose(density, rng_stream(dataset_seed, image_id, "film"), bits_stored, view is View.LATERAL)
