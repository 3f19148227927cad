"""Contact sheet: per class, a row of positive images next to a row of normal images, labelled."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

THUMB = 160  # thumbnail side, pixels
LABEL_WIDTH = 190  # left column for the class name
GAP = 4  # pixels between thumbnails and between rows
WINDOW_PERCENTILES = (0.5, 99.5)  # display window of each image, by its own intensities
BACKGROUND = 32
TEXT = 235


def to_display(image: np.ndarray, size: int = THUMB) -> Image.Image:
    """8-bit thumbnail of one 2-D image, windowed by its own percentiles (any bit depth).

    Args:
        image: (H, W) integer or float array.
        size: thumbnail side in pixels.

    Returns:
        A mode "L" PIL image of (size, size).
    """
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"contact sheet images must be 2-D, got shape {array.shape}")
    array = array.astype(np.float32)
    low, high = np.percentile(array, WINDOW_PERCENTILES)
    if high <= low:
        low, high = float(array.min()), float(array.max()) + 1.0
    scaled = np.clip((array - low) / (high - low) * 255.0, 0.0, 255.0).astype(np.uint8)
    return Image.fromarray(scaled).resize((size, size), Image.Resampling.BILINEAR)


def make_contact_sheet(
    groups: Sequence[tuple[str, Sequence[np.ndarray], Sequence[np.ndarray]]],
    path_or_buffer: Any,
    second_label: str = "normal",
) -> None:
    """Write one 8-bit PNG: per class a labelled row of positives and, below it, a row of normals.

    Args:
        groups: (class name, positive images, normal images); images are 2-D arrays (uint16 of any bit
            depth, or float), each displayed by its own percentile window.
        path_or_buffer: file path or binary file object the PNG is written to.
        second_label: the label of each group's second row.

    Raises:
        ValueError: no groups, or an image that is not 2-D.
    """
    if not groups:
        raise ValueError("make_contact_sheet needs at least one (class, positives, normals) group")
    columns = max(1, max(max(len(pos), len(neg)) for _, pos, neg in groups))
    row_height = THUMB + GAP
    width = LABEL_WIDTH + columns * (THUMB + GAP) + GAP
    height = len(groups) * (2 * row_height + GAP) + GAP
    sheet = Image.new("L", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    y = GAP
    for name, positives, normals in groups:
        for label, images in ((name, positives), (second_label, normals)):
            draw.text((GAP, y + THUMB // 2 - 6), label, fill=TEXT, font=font)
            for i, image in enumerate(images):
                sheet.paste(to_display(image), (LABEL_WIDTH + i * (THUMB + GAP), y))
            y += row_height
        y += GAP
    sheet.save(path_or_buffer, format="PNG")
    logger.info("contact sheet: %d classes x %d columns, %dx%d px", len(groups), columns, width, height)
