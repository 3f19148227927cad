"""Lung-mask atlas of PadChest-Synth: real lung shapes from torchxrayvision's v7labs masks, built and cached.

This is one of three modules behind the normal chest: :mod:`trcgl.data.synth.draw` holds the generic
pixel-drawing helpers, this module turns the lung-mask zip that torchxrayvision ships into a small array of
per-lung soft masks (:class:`LungAtlas`), and :mod:`trcgl.data.synth.anatomy` picks one pair per image and
draws it to the sampled geometry. This module knows nothing about scenes or views and imports nothing from
the other two: it only reads, filters, crops and stores masks.

Each mask image is reduced, thresholded and kept only when it holds two plausible side-by-side lungs
(:func:`build_lung_atlas`). The atlas is built once per process (:func:`load_lung_atlas`) and can be shared
between processes through an ``.npz`` file named by the ``TRCGL_LUNG_ATLAS_CACHE`` environment variable.
"""

from __future__ import annotations

import fcntl
import functools
import importlib.util
import io
import logging
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

logger = logging.getLogger(__name__)

ATLAS_SIZE = 128  # each lung of the atlas is stored as an (ATLAS_SIZE, ATLAS_SIZE) uint8 soft mask
ATLAS_WORK_SIZE = 256  # masks are reduced to about this size before they are analysed
ATLAS_THREADS = 4  # threads decoding the mask PNGs during the one-off atlas build
ATLAS_VERSION = 1  # bump when the atlas recipe changes (invalidates on-disk caches)
ATLAS_CACHE_ENV = "TRCGL_LUNG_ATLAS_CACHE"  # optional .npz path shared by processes
_ATLAS_ZIP = "semantic_masks_v7labs_lungs.zip"

# Lung-atlas acceptance rules (fractions of the reduced mask image).
_MIN_LUNG_AREA = 0.02  # each lung covers at least this fraction of the image
_MAX_FOREGROUND = 0.7  # more than this is an inverted or broken mask
_MIN_AREA_RATIO = 0.35  # smaller lung / larger lung
_MIN_KEPT_FOREGROUND = 0.9  # the two lungs hold at least this fraction of all foreground pixels
_MIN_VERTICAL_OVERLAP = 0.6  # of the shorter lung's height
_LUNG_ASPECT_RANGE = (0.9, 4.5)  # height / width of one lung
_PAIR_ASPECT_RANGE = (0.55, 1.35)  # height / width of both lungs together
_MAX_ROUGHNESS = 1.05  # outline length / smoothed outline length of one lung


@dataclass(frozen=True)
class LungAtlas:
    """Real lung shapes, one soft mask per lung.

    Attributes:
        masks: (N, 2, A, A) uint8 soft masks (0..255) of the patient's [right, left] lung, each resized from its
            own bounding box.
        boxes: (N, 2, 4) float32 bounding box (y0, y1, x0, x1) of each lung inside the box around both lungs,
            as fractions of that box (so the pair keeps its real proportions and gap).
        names: (N,) file names inside the zip, for debugging.
    """

    masks: np.ndarray
    boxes: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)


def atlas_zip_path() -> Path:
    """Path of torchxrayvision's lung-mask zip, found without importing torchxrayvision (slow import)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "PadChest-Synth needs the lung masks shipped with torchxrayvision; install it "
            "(pip install torchxrayvision==1.5.7)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / _ATLAS_ZIP
    if not path.is_file():
        raise RuntimeError(f"torchxrayvision is installed but {path} is missing; reinstall torchxrayvision")
    return path


def _roughness(lung: np.ndarray) -> float:
    """Boundary length of a binary mask relative to that of its smoothed version (1 = smooth outline).

    Args:
        lung: (h, w) bool mask of one lung.

    Returns:
        Boundary pixels of the mask / boundary pixels of its gaussian-smoothed, re-thresholded copy.
    """
    smooth = ndimage.gaussian_filter(lung.astype(np.float32), 4.0) > 0.5
    boundary = np.count_nonzero(lung & ~ndimage.binary_erosion(lung))
    return boundary / max(1, np.count_nonzero(smooth & ~ndimage.binary_erosion(smooth)))


def _prepare_mask(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """Two-lung soft masks from one encoded mask image, or None when it is empty or implausible.

    Args:
        data: encoded PNG/JPEG bytes of one mask (lungs 255, background 0, maybe with JPEG artefacts).

    Returns:
        masks (2, A, A) uint8 for the patient's [right, left] lung and boxes (2, 4) float32 (y0, y1, x0, x1)
        of each lung within the pair's bounding box; None when the mask is rejected.
    """
    image = Image.open(io.BytesIO(data))
    image.draft("L", (ATLAS_WORK_SIZE, ATLAS_WORK_SIZE))  # cheap JPEG downscale; no-op for PNG
    image = image.convert("L")
    factor = max(1, min(image.size) // ATLAS_WORK_SIZE)
    if factor > 1:
        image = image.reduce(factor)
    binary = np.asarray(image) > 127
    height, width = binary.shape
    foreground = binary.mean()
    if foreground < 2 * _MIN_LUNG_AREA or foreground > _MAX_FOREGROUND:
        return None
    labels, count = ndimage.label(binary)
    if count < 2:
        return None
    areas = np.bincount(labels.ravel())[1:]
    order = np.argsort(areas)[::-1]
    big, small = order[0] + 1, order[1] + 1
    a_big, a_small = areas[order[0]], areas[order[1]]
    if a_small < _MIN_LUNG_AREA * binary.size or a_small / a_big < _MIN_AREA_RATIO:
        return None
    if (a_big + a_small) < _MIN_KEPT_FOREGROUND * binary.sum():
        return None
    slices = ndimage.find_objects(labels)
    boxes_px = []
    for lab in (big, small):
        sl = slices[lab - 1]
        boxes_px.append((sl[0].start, sl[0].stop, sl[1].start, sl[1].stop))
    # Image-left lung is the patient's right lung on a frontal view.
    (first, b_first), (second, b_second) = sorted(zip((big, small), boxes_px, strict=True), key=lambda t: t[1][2])
    if b_first[3] > b_second[2] + 0.02 * width:  # lungs overlap horizontally: not a frontal pair
        return None
    overlap = min(b_first[1], b_second[1]) - max(b_first[0], b_second[0])
    if overlap < _MIN_VERTICAL_OVERLAP * min(b_first[1] - b_first[0], b_second[1] - b_second[0]):
        return None
    for b in (b_first, b_second):
        if b[0] <= 1 or b[2] <= 1 or b[1] >= height - 1 or b[3] >= width - 1:  # cut off by the image border
            return None
        aspect = (b[1] - b[0]) / max(1, b[3] - b[2])
        if not _LUNG_ASPECT_RANGE[0] <= aspect <= _LUNG_ASPECT_RANGE[1]:
            return None
    y0 = min(b_first[0], b_second[0])
    y1 = max(b_first[1], b_second[1])
    x0, x1 = b_first[2], b_second[3]
    pair_aspect = (y1 - y0) / max(1, x1 - x0)
    if not _PAIR_ASPECT_RANGE[0] <= pair_aspect <= _PAIR_ASPECT_RANGE[1]:
        return None
    masks = np.empty((2, ATLAS_SIZE, ATLAS_SIZE), np.uint8)
    boxes = np.empty((2, 4), np.float32)
    for i, (lab, b) in enumerate(((first, b_first), (second, b_second))):
        lung = ndimage.binary_fill_holes(labels[b[0] : b[1], b[2] : b[3]] == lab)
        lung_img = Image.fromarray((lung * 255).astype(np.uint8))
        masks[i] = np.asarray(lung_img.resize((ATLAS_SIZE, ATLAS_SIZE), Image.Resampling.BILINEAR))
        if _roughness(masks[i] > 127) > _MAX_ROUGHNESS:  # notches, cut-out annotation arrows
            return None
        boxes[i] = (
            (b[0] - y0) / (y1 - y0),
            (b[1] - y0) / (y1 - y0),
            (b[2] - x0) / (x1 - x0),
            (b[3] - x0) / (x1 - x0),
        )
    return masks, boxes


def _prepare_mask_or_none(item: tuple[str, bytes]) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`_prepare_mask` of one (name, bytes) zip entry; None (logged) when the image cannot be read."""
    name, data = item
    try:
        return _prepare_mask(data)
    except (OSError, ValueError) as err:  # unreadable or truncated image: skip it
        logger.debug("lung atlas: skipping %s (%s)", name, err)
        return None


def build_lung_atlas() -> LungAtlas:
    """Build the lung atlas from torchxrayvision's real lung masks (every mask is decoded and checked).

    Masks are thresholded; those with exactly two plausible, side-by-side, smooth-outlined lungs are kept
    (empty, inverted, merged, cut-off or annotated masks are dropped), each lung cropped to its box and resized
    to ATLAS_SIZE.

    Returns:
        The atlas: the masks that pass, each pair stored as 2 x ATLAS_SIZE x ATLAS_SIZE bytes.
    """
    start = time.perf_counter()
    path = atlas_zip_path()
    with zipfile.ZipFile(path) as archive:
        files = [(name, archive.read(name)) for name in sorted(archive.namelist()) if not name.endswith("/")]
    # PNG decoding releases the GIL: a few threads cut the one-off build time; map() keeps the order.
    with ThreadPoolExecutor(max_workers=ATLAS_THREADS) as pool:
        prepared_all = list(pool.map(_prepare_mask_or_none, files))
    masks, boxes, names = [], [], []
    for (name, _), prepared in zip(files, prepared_all, strict=True):
        if prepared is not None:
            masks.append(prepared[0])
            boxes.append(prepared[1])
            names.append(name.rsplit("/", 1)[-1])
    if not masks:
        raise RuntimeError(f"no usable lung mask in {path}")
    atlas = LungAtlas(np.stack(masks), np.stack(boxes), tuple(names))
    logger.info("lung atlas: %d usable masks from %s in %.1f s", len(atlas), path.name, time.perf_counter() - start)
    return atlas


def _atlas_source_key() -> str:
    """Identity of the atlas recipe and its source zip (a cache built from anything else is stale)."""
    stat = atlas_zip_path().stat()
    return f"v{ATLAS_VERSION}:{ATLAS_SIZE}:{stat.st_size}:{int(stat.st_mtime)}"


def save_lung_atlas(atlas: LungAtlas, path: str | Path) -> None:
    """Write an atlas to an .npz file atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, masks=atlas.masks, boxes=atlas.boxes, names=np.array(atlas.names), key=_atlas_source_key())
    os.replace(tmp, path)


def _read_lung_atlas(path: Path) -> LungAtlas | None:
    """Atlas from an .npz written by :func:`save_lung_atlas`; None when unreadable or stale."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != _atlas_source_key():
                return None
            return LungAtlas(data["masks"], data["boxes"], tuple(str(n) for n in data["names"]))
    except (OSError, ValueError, KeyError) as err:
        logger.warning("lung atlas cache %s unusable (%s); rebuilding", path, err)
        return None


@functools.lru_cache(maxsize=1)
def load_lung_atlas() -> LungAtlas:
    """The lung atlas, built once per process on first use (the build decodes every mask of the zip).

    When the environment variable ``TRCGL_LUNG_ATLAS_CACHE`` names a file, the atlas is read from it if it was
    built from the same zip and recipe, else built and written there (atomically), so many worker processes on
    one machine build it once: a process that finds no usable file builds it holding an exclusive lock on
    ``{cache}.lock``, and the others wait for that lock, then read what it wrote (without the lock, the render
    workers a job starts at once would each build it). Nothing is written anywhere when the variable is unset.

    Returns:
        The atlas.
    """
    cache = os.environ.get(ATLAS_CACHE_ENV)
    if not cache:
        return build_lung_atlas()
    atlas = _read_lung_atlas(Path(cache)) if Path(cache).is_file() else None
    if atlas is not None:
        return atlas
    try:
        lock = open(f"{cache}.lock", "a")  # held for the block below, closed in its finally
    except OSError as err:
        logger.warning("could not open lung atlas cache lock %s.lock (%s)", cache, err)
        return build_lung_atlas()
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, also when the process dies
        atlas = _read_lung_atlas(Path(cache)) if Path(cache).is_file() else None  # another process built it
        if atlas is None:
            atlas = build_lung_atlas()
            try:
                save_lung_atlas(atlas, cache)
            except OSError as err:
                logger.warning("could not write lung atlas cache %s (%s)", cache, err)
        return atlas
    finally:
        lock.close()
