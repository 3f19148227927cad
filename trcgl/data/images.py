"""X-ray decoding (16-bit PNG or DICOM; 8-bit PNG and JPEG when asked), normalisation by stored bit depth,
antialiased resizing and prepared-image encoding.

PadChest PNGs are 16-bit grayscale whose values fill only the detector's stored range (12 bits for 144k images, 10 bits
for 17k). Dividing by 65535 would make 10-bit images 4x darker than 12-bit ones, and Pillow's ``convert("L")`` clips
instead of scaling, so we normalise by ``2**BitsStored - 1``. A truncated PNG must fail, not be zero-filled: we refuse
to decode while Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is on. DICOM files (recognised by their ``DICM``
prefix, whatever their name) go through :mod:`trcgl.data.dicom` to the same [0, 1] image.

8-bit files (NIH ChestX-ray14's PNGs, the JPEGs of CheXpert and MIMIC-CXR-JPG) are refused unless the caller accepts
them (``data.accept_8bit``): for PadChest an 8-bit file is a broken export, for those datasets it is the release.
They are scaled by 255 (bits 8); a colour file is accepted only when its channels are equal (gray saved as RGB or
RGBA, as a few ChestX-ray14 files are), else it is ``not_gray``.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile

from trcgl.errors import ImageDecodeError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
EIGHT_BIT_FORMATS = ("PNG", "JPEG")  # with accept_8bit
EIGHT_BIT_MODES = ("L", "LA", "RGB", "RGBA", "P")  # LA/RGB/RGBA/P: only when every colour channel is equal
DICOM_MAGIC, DICOM_MAGIC_OFFSET = b"DICM", 128  # PS3.10 7.1: a 128-byte preamble, then "DICM"


def is_dicom(data: bytes) -> bool:
    """Whether ``data`` is a DICOM Part 10 file, by its ``DICM`` prefix (never by its file name)."""
    return data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)] == DICOM_MAGIC


def infer_bits(max_value: int) -> int:
    """The smallest usual stored bit depth (10, 12, 14, 16) that holds ``max_value``."""
    for bits in (10, 12, 14, 16):
        if max_value < 2**bits:
            return bits
    return 16


def decode_xray(
    data: bytes, bits_stored: int = 0, *, dicom_window: bool = False, accept_8bit: bool = False
) -> tuple[np.ndarray, int]:
    """Decodes a 16-bit grayscale PNG or a DICOM file and scales it to [0, 1] by its stored bit depth.

    Args:
        data: PNG, DICOM (or, with ``accept_8bit``, JPEG) file bytes.
        bits_stored: BitsStored from the metadata; 0 when unknown (then inferred from the maximum pixel value). A
            DICOM file's own BitsStored is used instead; an 8-bit file's is 8.
        dicom_window: DICOM only: apply the file's VOI LUT or window (``data.dicom_window``).
        accept_8bit: also decode 8-bit grayscale PNG and JPEG files, scaled by 255 (``data.accept_8bit``).

    Returns:
        ((H, W) float32 image in [0, 1], higher = brighter, bits used).

    Raises:
        ImageDecodeError: reason ``empty_file``, ``not_png`` (with ``accept_8bit``: neither PNG nor JPEG),
            ``unreadable`` (truncated or corrupt), ``not_16bit_gray``, ``not_gray`` (an 8-bit colour image) or
            ``exceeds_bits_stored``; for DICOM a ``dicom_*`` reason (:func:`trcgl.data.dicom.decode_dicom`).
    """
    if not data:
        raise ImageDecodeError("empty_file", "file is empty (0 bytes)")
    if is_dicom(data):
        from trcgl.data.dicom import decode_dicom  # lazy: pydicom takes a second or more to import; only DICOM pays

        return decode_dicom(data, window=dicom_window)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on: truncated X-rays would be zero-filled silently")
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as exc:  # PIL raises several types for garbage input
        raise ImageDecodeError("not_png", f"neither a DICOM file nor an image PIL can open: {exc}") from exc
    if accept_8bit and img.format in EIGHT_BIT_FORMATS and img.mode in EIGHT_BIT_MODES:
        return _decode_8bit(img), 8
    if img.format != "PNG":
        expected = "a PNG or JPEG" if accept_8bit else "a PNG"
        raise ImageDecodeError("not_png", f"not {expected} (format {img.format})")
    if img.mode not in SIXTEEN_BIT_MODES:
        hint = "" if accept_8bit else " (8-bit files are read with data.accept_8bit=true)"
        raise ImageDecodeError("not_16bit_gray", f"not a 16-bit grayscale PNG (mode {img.mode}){hint}")
    try:
        img.load()
        arr = np.asarray(img)
    except Exception as exc:
        raise ImageDecodeError("unreadable", f"truncated or corrupt PNG: {exc}") from exc
    if arr.ndim != 2 or arr.size == 0:
        raise ImageDecodeError("not_16bit_gray", f"unexpected pixel array shape {arr.shape}")
    max_value = int(arr.max())
    bits = bits_stored if bits_stored > 0 else infer_bits(max_value)
    if max_value >= 2**bits or int(arr.min()) < 0:
        raise ImageDecodeError(
            "exceeds_bits_stored",
            f"pixel values up to {max_value} do not fit BitsStored={bits} (max {2**bits - 1})",
        )
    return (arr.astype(np.float32) / float(2**bits - 1)), bits


def _decode_8bit(img: Image.Image) -> np.ndarray:
    """An 8-bit PNG or JPEG as (H, W) float32 in [0, 1]; gray stored in colour channels is accepted when they agree.

    Raises:
        ImageDecodeError: ``unreadable`` (truncated or corrupt), ``not_gray`` (channels differ).
    """
    try:
        img.load()
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        arr = np.asarray(img)  # (H, W) for L; (H, W, C) for LA, RGB, RGBA
    except Exception as exc:
        raise ImageDecodeError("unreadable", f"truncated or corrupt {img.format}: {exc}") from exc
    if arr.ndim == 3:
        colour = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]  # alpha is not part of the image
        if (colour != colour[..., :1]).any():
            raise ImageDecodeError("not_gray", f"an 8-bit {img.format} in colour (mode {img.mode}), not an X-ray")
        arr = colour[..., 0]
    if arr.ndim != 2 or arr.size == 0:
        raise ImageDecodeError("not_gray", f"unexpected pixel array shape {arr.shape}")
    return arr.astype(np.float32) / 255.0


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Pads to a centred square (keeping the chest's proportions) and resizes with antialiasing.

    Args:
        image: (H, W) float32 in [0, 1].
        size: output side.

    Returns:
        (size, size) float32 in [0, 1].
    """
    h, w = image.shape
    side = max(h, w)
    if h != w:
        square = np.zeros((side, side), dtype=np.float32)
        top, left = (side - h) // 2, (side - w) // 2
        square[top : top + h, left : left + w] = image  # (side, side)
        image = square
    if side == size:
        return image.astype(np.float32, copy=False)
    resized = Image.fromarray(image.astype(np.float32), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR, reducing_gap=3.0
    )  # bilinear widens its support when shrinking: antialiased
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def encode_prepared(image: np.ndarray) -> bytes:
    """Encodes a square [0, 1] image (S, S) as raw little-endian uint16 (full 16-bit range).

    Raw pixels rather than PNG: encoding is ~10x faster, decoding in the training loop is a ``frombuffer``, and the
    Parquet writer's zstd compresses the column anyway.
    """
    if image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise ValueError(f"prepared images are square 2-D arrays, got shape {image.shape}")
    return np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype("<u2").tobytes()


def decode_prepared(data: bytes) -> np.ndarray:
    """Inverse of :func:`encode_prepared`: (S, S) float32 in [0, 1]."""
    side = math.isqrt(len(data) // 2)
    if side * side * 2 != len(data):
        raise ValueError(f"{len(data)} bytes is not a square uint16 image")
    return np.frombuffer(data, dtype="<u2").reshape(side, side).astype(np.float32) / 65535.0


def read_image_file(fs: pafs.FileSystem, path: str) -> bytes:
    """The bytes of one image file on a pyarrow filesystem (local or S3).

    Raises:
        ImageDecodeError: reason ``missing_file`` when there is no file at ``path``.
    """
    try:
        with fs.open_input_stream(path, compression=None) as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise ImageDecodeError("missing_file", f"no file at {path}") from exc
    except OSError as exc:
        if "not found" in str(exc).lower() or "no such file" in str(exc).lower():
            raise ImageDecodeError("missing_file", f"no file at {path}") from exc
        raise


def prepared_pixels(data: bytes, size: int, *, dicom_window: bool = False, accept_8bit: bool = False) -> np.ndarray:
    """The image a classifier sees for a PNG or DICOM file: what prepare stores for it, read back.

    :func:`decode_xray` (bit depth inferred), :func:`resize_square` to ``size``, then the 16-bit round trip of
    :func:`encode_prepared` / :func:`decode_prepared`, so a file scored directly gets the pixels its prepared row has.

    Args:
        data: PNG or DICOM file bytes.
        size: the side the classifier was trained at (``data.image_size``).
        dicom_window: apply a DICOM file's VOI LUT or window (``data.dicom_window``).
        accept_8bit: also decode 8-bit PNG and JPEG files (``data.accept_8bit``).

    Returns:
        (size, size) float32 in [0, 1].

    Raises:
        ImageDecodeError: as :func:`decode_xray`.
    """
    image, _ = decode_xray(data, dicom_window=dicom_window, accept_8bit=accept_8bit)
    return decode_prepared(encode_prepared(resize_square(image, size)))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type + data (PNG spec 5.3)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png16(pixels: np.ndarray) -> bytes:
    """Writes raw uint16 pixels (H, W) as a 16-bit grayscale PNG, values unchanged (PadChest's file format).

    Written with numpy and zlib rather than Pillow: every row gets PNG filter 1 ("Sub": each byte minus the byte
    two to its left, i.e. the same byte of the previous pixel, mod 256) and the stream is deflated at level 1.
    On noisy 16-bit X-rays that is as small as Pillow's adaptive filtering at level 3 and about 2.5x faster to
    encode, which matters when PadChest-Synth renders every metadata row. Any PNG reader decodes the same values.
    """
    if pixels.dtype != np.uint16 or pixels.ndim != 2:
        raise ValueError(f"expected a 2-D uint16 array, got {pixels.dtype} {pixels.shape}")
    height, width = pixels.shape
    data = pixels.astype(">u2").view(np.uint8).reshape(height, 2 * width)  # (H, 2W) big-endian bytes
    raw = np.empty((height, 2 * width + 1), np.uint8)  # (H, 1 + 2W): filter type byte, then filtered bytes
    raw[:, 0] = 1  # filter type Sub
    raw[:, 1:3] = data[:, :2]
    np.subtract(data[:, 2:], data[:, :-2], out=raw[:, 3:])  # uint8 arithmetic wraps mod 256, as the spec asks
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)  # 16-bit grayscale, no interlace
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)),
            _png_chunk(b"IEND", b""),
        ]
    )
