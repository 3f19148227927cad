"""DICOM X-rays decoded to the image a PadChest PNG decodes to: (H, W) float32 in [0, 1], higher = brighter.

The pixel pipeline is the DICOM standard's grayscale one (PS3.4 N.2.1.1,
https://dicom.nema.org/medical/dicom/current/output/chtml/part04/sect_N.2.html):

1. stored values: bits above BitsStored are masked off (old files keep overlays there), signed data sign-extended;
2. Modality LUT (RescaleSlope/RescaleIntercept or a Modality LUT Sequence), through pydicom;
3. optional VOI (``data.dicom_window``): the file's VOI LUT Sequence, else its first WindowCenter/WindowWidth, maps
   values to [0, 1]; files without either are scaled as when it is off;
4. otherwise values are scaled to [0, 1] over the modality output of the full stored range, so a MONOCHROME2 file
   with slope 1 and intercept 0 decodes exactly like a PNG of the same pixels and BitsStored (a linear rescale with a
   positive slope does not change the image; it matters for windows, which are given in rescaled units);
5. MONOCHROME1 (minimum = white) is inverted, so higher is brighter as in MONOCHROME2.

:func:`trcgl.data.images.decode_xray` sends a file here when it starts like DICOM (``DICM`` at byte 128). Anything
else (colour, multi-frame, a transfer syntax no installed pydicom plugin decodes, a broken file) raises
:class:`~trcgl.errors.ImageDecodeError` with a ``dicom_*`` reason, which prepare reports as a bad row.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder

from trcgl.errors import ImageDecodeError

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


def decode_dicom(data: bytes, window: bool = False) -> tuple[np.ndarray, int]:
    """Decodes a single-frame grayscale DICOM file to [0, 1], MONOCHROME1 inverted.

    Args:
        data: DICOM Part 10 file bytes.
        window: apply the file's VOI LUT or first WindowCenter/WindowWidth (``data.dicom_window``).

    Returns:
        ((H, W) float32 image in [0, 1], the file's BitsStored).

    Raises:
        ImageDecodeError: reason ``dicom_unreadable`` (truncated or malformed), ``dicom_transfer_syntax`` (compressed
            with a codec no installed pydicom plugin provides), ``dicom_not_monochrome``, ``dicom_multiframe``,
            ``dicom_pixel_format`` (BitsAllocated not 8 or 16, a constant Modality LUT) or ``dicom_voi`` (``window``
            with a VOI that cannot be applied).
    """
    try:
        ds = _read(data)
        stored, bits = _stored_pixels(ds)  # (H, W) int32
        values = apply_modality_lut(stored, ds)  # (H, W); float64 after a rescale
        lo, hi = _modality_range(ds, bits)
        image = _voi(values, ds) if window else None
        if image is None:
            image = (np.asarray(values, dtype=np.float64) - lo) / (hi - lo)
    except ImageDecodeError:
        raise
    except Exception as exc:  # pydicom parses elements lazily: a malformed value fails where it is first read
        raise ImageDecodeError("dicom_unreadable", f"malformed element: {type(exc).__name__}: {exc}") from exc
    if ds.PhotometricInterpretation == "MONOCHROME1":
        image = 1.0 - image
    return np.clip(image, 0.0, 1.0).astype(np.float32), bits


def _read(data: bytes) -> Dataset:
    """Parses the file and checks it holds one grayscale frame that an installed plugin can decode."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom raises InvalidDicomError, EOFError, struct.error, ... for broken headers
        raise ImageDecodeError("dicom_unreadable", f"truncated or corrupt DICOM header: {exc}") from exc
    if "PixelData" not in ds:
        raise ImageDecodeError("dicom_unreadable", "no Pixel Data element (a truncated file, or not an image object)")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise ImageDecodeError("dicom_unreadable", "no Transfer Syntax UID in the file meta (truncated header?)")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise ImageDecodeError("dicom_transfer_syntax", f"pydicom cannot decode transfer syntax {syntax}") from exc
    if not decoder.is_available:
        raise ImageDecodeError(
            "dicom_transfer_syntax",
            f"{syntax.name} needs a pydicom plugin: install one of {'; '.join(decoder.missing_dependencies)}",
        )
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1)) != 1 or photometric not in MONOCHROME:
        raise ImageDecodeError(
            "dicom_not_monochrome",
            f"not grayscale: PhotometricInterpretation {photometric!r}, SamplesPerPixel {ds.get('SamplesPerPixel')}",
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageDecodeError("dicom_multiframe", f"{frames} frames; one radiograph per file is expected")
    allocated, stored = int(ds.get("BitsAllocated", 0)), int(ds.get("BitsStored", 0))
    if allocated not in (8, 16) or not 1 < stored <= allocated:
        raise ImageDecodeError("dicom_pixel_format", f"BitsAllocated {allocated}, BitsStored {stored}")
    return ds


def _stored_pixels(ds: Dataset) -> tuple[np.ndarray, int]:
    """The stored values as (H, W) int32 and BitsStored: bits above BitsStored masked off, signed data sign-extended.

    pydicom already does both for native data; the mask is repeated so every decoding plugin gets the same treatment.
    """
    bits = int(ds.BitsStored)
    try:
        arr = ds.pixel_array  # (H, W)
    except Exception as exc:  # short pixel data (ValueError), broken fragments, plugin errors
        raise ImageDecodeError("dicom_unreadable", f"pixel data cannot be decoded: {exc}") from exc
    if arr.ndim != 2 or arr.size == 0:
        raise ImageDecodeError("dicom_unreadable", f"unexpected pixel array shape {arr.shape}")
    arr = arr.astype(np.int32)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        return arr & (2**bits - 1), bits
    return arr, bits


def _modality_range(ds: Dataset, bits: int) -> tuple[float, float]:
    """(lowest, highest) Modality LUT output over the full stored range: the span scaled to [0, 1].

    Raises:
        ImageDecodeError: ``dicom_pixel_format`` when the Modality LUT maps the whole range to one value.
    """
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    first, last = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    # a Modality LUT Sequence need not be monotonic: look at every stored value (at most 2**16); a rescale is linear
    grid = np.arange(first, last + 1) if ds.get("ModalityLUTSequence") else np.array([first, last])
    out = np.asarray(apply_modality_lut(grid, ds), dtype=np.float64)
    lo, hi = float(out.min()), float(out.max())
    if hi <= lo:
        raise ImageDecodeError("dicom_pixel_format", f"the Modality LUT maps every stored value to {lo}")
    return lo, hi


def _voi(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The file's first VOI LUT, else its first window, as (H, W) float64 in [0, 1]; None when it has neither.

    Windows follow PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID):
    https://dicom.nema.org/medical/dicom/current/output/chtml/part03/sect_C.11.2.html

    Raises:
        ImageDecodeError: ``dicom_voi`` for a VOI LUT pydicom cannot apply, a width the function does not allow or an
            unknown function.
    """
    if ds.get("VOILUTSequence"):
        try:
            depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])  # LUT entries span [0, 2**depth - 1]
            out = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
        except Exception as exc:
            raise ImageDecodeError("dicom_voi", f"VOI LUT cannot be applied: {exc}") from exc
        return out.astype(np.float64) / (2**depth - 1)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    x = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID" and width > 0:
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR" and width >= 1:
        center, width = center - 0.5, width - 1.0  # LINEAR maps pixel centres; LINEAR_EXACT the exact interval
    elif function != "LINEAR_EXACT" or width <= 0:
        raise ImageDecodeError("dicom_voi", f"VOI function {function} with WindowWidth {width}")
    if width == 0:  # LINEAR with width 1: a threshold at the centre
        return (x > center).astype(np.float64)
    return np.clip((x - center) / width + 0.5, 0.0, 1.0)


def _first(value: object) -> float:
    """The first value of a DS element that may list several windows, as a float."""
    return float(value[0] if isinstance(value, MultiValue) else value)
