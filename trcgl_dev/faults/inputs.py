"""Bad inputs on disk for the fault scenarios and tests: a small PadChest-format dataset (real PNG files and a
metadata CSV) with every kind of bad image and malformed metadata row the prepare job must survive."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from trcgl.data.images import encode_png16

HEADER = "idx,ImageID,ImageDir,PatientID,Projection,Labels,Localizations,BitsStored_DICOM\n"
GOOD = 14

# what the prepare report must say of each bad input (trcgl.data.ray_prepare / trcgl.data.padchest)
BAD_IMAGE_REASONS = {
    "truncated.png": "unreadable",
    "zero.png": "empty_file",
    "notpng.png": "not_png",
    "rgb8.png": "not_16bit_gray",
    "wrongbits.png": "exceeds_bits_stored",
    "missing.png": "missing_file",
}
BAD_ROW_REASONS = {
    "labels_missing": 1,  # NaN Labels
    "labels_empty": 1,  # ['']
    "labels_unparseable": 2,  # a truncated list literal, a bare string
    "projection_not_kept": 1,  # unknown projection
    "duplicate_image_id": 1,
    "ragged_row": 1,  # more fields than the header
}


def _png(rng: np.random.Generator, bits: int) -> bytes:
    return encode_png16(rng.integers(0, 2**bits, (40, 30), dtype=np.uint16))


def _rgb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def make_padchest_like(folder: Path, layout: str = "dirs") -> dict[str, list[str]]:
    """Writes ``folder/meta.csv`` and ``folder/images/`` (``dirs``: ``images/{ImageDir}/{ImageID}``; ``flat``).

    14 good 16-bit grey PNGs (10- and 12-bit values), 5 bad images (truncated, zero bytes, not a PNG, 8-bit RGB,
    values above the stored bit depth), a row whose file is missing, and 7 malformed metadata rows (NaN and ``['']``
    labels, a truncated list literal, a bare string, an unknown projection, a duplicate ImageID, a ragged row).

    Returns:
        {"good": ImageIDs that must be kept, "bad_images": ImageIDs that must be reported}.
    """
    rng = np.random.default_rng(0)
    rows, files = [], {}
    labels = ["['normal']", "['cardiomegaly', 'pleural effusion']", "['nodule']", "['pseudonodule']"]
    good = []
    for i in range(GOOD):
        iid = f"good{i:02d}.png"
        bits = 10 if i % 3 == 0 else 12
        rows.append(f'{i},{iid},{i % 2},pat{i // 2},PA,"{labels[i % 4]}","[\'loc left\']",{bits}')
        files[iid] = (str(i % 2), _png(rng, bits))
        good.append(iid)
    bad_images = {
        "truncated.png": _png(rng, 12)[:-400],
        "zero.png": b"",
        "notpng.png": b"GIF89a not really",
        "rgb8.png": _rgb_png(),
        "wrongbits.png": _png(rng, 12),  # says 10 bits below, holds 12-bit values
    }
    n = GOOD
    for iid, data in bad_images.items():
        bits = 10 if iid == "wrongbits.png" else 12
        rows.append(f"{n},{iid},0,patb{n},PA,\"['normal']\",[],{bits}")
        files[iid] = ("0", data)
        n += 1
    rows.append(f"{n},missing.png,0,patm,PA,\"['normal']\",[],12")  # no file
    bad_meta = [
        f"{n + 1},nan.png,0,px1,PA,,[],12",
        f"{n + 2},empty.png,0,px2,PA,\"['']\",[],12",
        f"{n + 3},trunc.png,0,px3,PA,\"['normal'\",[],12",
        f"{n + 4},bare.png,0,px4,PA,normal,[],12",
        f"{n + 5},lateral.png,0,px5,UNK,\"['normal']\",[],12",
        f"{n + 6},good00.png,0,pat0,PA,\"['nodule']\",[],12",  # duplicate ImageID
        f"{n + 7},ragged.png,0,px7,PA,\"['normal']\",[],12,extra",
    ]
    (folder / "images").mkdir(parents=True)
    for iid, (d, data) in files.items():
        target = folder / "images" / d / iid if layout == "dirs" else folder / "images" / iid
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (folder / "meta.csv").write_text(HEADER + "\n".join(rows + bad_meta) + "\n")
    return {"good": good, "bad_images": [*bad_images, "missing.png"]}
