"""DICOM X-rays decode to the image their PNG twin decodes to: real files written with pydicom (MONOCHROME1 and 2,
12-bit, rescaled, windowed, RLE Lossless), broken and unsupported ones rejected with a reason, and prepare over a
folder mixing PNG and DICOM copies of the same images."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    RLELossless,
    generate_uid,
)

from trcgl.data.images import ImageDecodeError, decode_prepared, decode_xray, encode_png16

BITS = 12
TOP = 2**BITS - 1


def xray(seed: int = 0, shape: tuple[int, int] = (48, 40)) -> np.ndarray:
    """A 12-bit chest-like test image (H, W) uint16: a vertical gradient, a bright disc, noise; spans 0..4095."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    img = 600.0 + 2400.0 * y / (h - 1) + 900.0 * (((y - h / 2) ** 2 + (x - w / 3) ** 2) < (h / 5) ** 2)
    img += np.random.default_rng(seed).normal(0.0, 40.0, shape)
    img[0, 0], img[-1, -1] = 0, TOP
    return np.clip(np.round(img), 0, TOP).astype(np.uint16)


def dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = BITS,
    signed: bool = False,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_function: str | None = None,
    voi_lut: np.ndarray | None = None,
    compress: str | None = None,
) -> bytes:
    """A DX DICOM Part 10 file of ``pixels`` (H, W) (or (F, H, W) frames, or (H, W, 3) RGB), explicit VR little endian.

    Args:
        rescale: (RescaleSlope, RescaleIntercept).
        window: (WindowCenter, WindowWidth) in rescaled units.
        voi_lut: a 16-bit VOI LUT indexed from 0.
        compress: a transfer syntax pydicom can encode (RLE Lossless).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "synth"
    rgb = pixels.ndim == 3 and pixels.shape[-1] == 3
    frames = pixels.shape[0] if pixels.ndim == 3 and not rgb else 1
    ds.Rows, ds.Columns = pixels.shape[1:3] if frames > 1 else pixels.shape[:2]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else photometric
    if rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if rgb else 16
    ds.BitsStored = 8 if rgb else bits_stored
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.add_new("LUTData", "OW", voi_lut.astype("<u2").tobytes())
        ds.VOILUTSequence = Sequence([item])
    ds.PixelData = pixels.astype(np.uint8 if rgb else ("<i2" if signed else "<u2")).tobytes()
    if compress is not None:
        ds.compress(compress)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def decode(data: bytes, **kwargs) -> np.ndarray:
    image, _ = decode_xray(data, **kwargs)
    return image


# ---------------------------------------------------------------------------------------------------- pixel pipeline


def test_12_bit_monochrome2_decodes_like_its_png_twin():
    a = xray()
    image, bits = decode_xray(dicom(a), 0)
    png, png_bits = decode_xray(encode_png16(a), BITS)
    assert bits == png_bits == BITS
    assert image.dtype == np.float32 and image.shape == a.shape  # (H, W), not transposed
    np.testing.assert_array_equal(image, png)  # scaled by 2**BitsStored - 1, not by BitsAllocated's 65535
    assert image.max() == 1.0 and image.min() == 0.0


def test_dicom_bits_stored_wins_over_the_metadata_and_masks_high_bits():
    a = xray()
    overlay = a | (np.random.default_rng(1).integers(0, 16, a.shape, dtype=np.uint16) << BITS)  # bits 12-15 set
    image, bits = decode_xray(dicom(overlay), 10)  # the metadata's 10 is not the file's BitsStored
    assert bits == BITS
    np.testing.assert_array_equal(image, decode(dicom(a)))


def test_monochrome1_is_inverted():
    a = xray()
    m1 = decode(dicom(a, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(m1, decode(dicom(TOP - a)))  # MONOCHROME1 of a shows what MONOCHROME2 of max-a does
    np.testing.assert_allclose(m1, 1.0 - decode(dicom(a)), atol=1e-6)
    disc = (slice(20, 28), slice(12, 16))  # the bright disc of xray() is dark in MONOCHROME1 pixel values
    assert m1[disc].mean() < m1.mean()


def test_positive_rescale_keeps_the_image():
    """Scaling is over the rescaled stored range, so a linear rescale with a positive slope is the PNG twin's image."""
    a = xray()
    np.testing.assert_allclose(decode(dicom(a, rescale=(2.0, -100.0))), decode(encode_png16(a), bits_stored=BITS))


def test_negative_rescale_slope_inverts():
    a = xray()
    np.testing.assert_allclose(decode(dicom(a, rescale=(-1.0, float(TOP)))), decode(dicom(TOP - a)), atol=1e-6)


def test_window_is_applied_in_rescaled_units():
    """slope 2 intercept -100 decodes like the file holding the pre-scaled values: the window sees rescaled values."""
    a = xray()
    window = (3000.0, 2000.0)
    rescaled = a.astype(np.int32) * 2 - 100  # -100 .. 8090: a signed 14-bit file holds it as stored values
    scaled_file = dicom(a, rescale=(2.0, -100.0), window=window)
    prescaled_file = dicom(rescaled.astype(np.int16), bits_stored=14, signed=True, window=window)
    windowed = decode(scaled_file, dicom_window=True)
    np.testing.assert_allclose(windowed, decode(prescaled_file, dicom_window=True), atol=1e-6)
    # and it is not the window over the stored values: a's raw values windowed at 3000/2000 differ
    assert np.abs(windowed - decode(dicom(a, window=window), dicom_window=True)).max() > 0.1


def test_window_only_when_asked():
    a = xray()
    center, width = 2000.0, 1001.0  # LINEAR: 0 at or below 1499, 1 above 2499, linear between
    data = dicom(a, window=(center, width))
    np.testing.assert_array_equal(decode(data), decode(dicom(a)))  # off (the default): full stored range
    on = decode(data, dicom_window=True)
    assert (on[a <= 1499] == 0.0).all() and (on[a > 2499] == 1.0).all()
    mid = (a > 1499) & (a <= 2499)
    assert mid.any()
    np.testing.assert_allclose(on[mid], (a[mid] - 1999.5) / 1000.0 + 0.5, atol=1e-6)
    # a file without a window decodes the same either way
    np.testing.assert_array_equal(decode(dicom(a), dicom_window=True), decode(dicom(a)))


def test_window_on_monochrome1_is_inverted_after_the_window():
    a = xray()
    on = decode(dicom(a, photometric="MONOCHROME1", window=(2000.0, 1001.0)), dicom_window=True)
    assert (on[a <= 1499] == 1.0).all() and (on[a > 2499] == 0.0).all()


@pytest.mark.parametrize(
    ("function", "at_center", "at_edges"),
    [("LINEAR_EXACT", 0.5, (0.0, 1.0)), ("SIGMOID", 0.5, (1 / (1 + np.e**2), 1 / (1 + np.e**-2)))],
)
def test_voi_lut_functions(function, at_center, at_edges):
    center, width = 2000, 1000
    a = np.array([[center, center - width // 2], [center + width // 2, 0]], dtype=np.uint16)
    on = decode(dicom(a, window=(center, width), voi_function=function), dicom_window=True)
    assert on[0, 0] == pytest.approx(at_center, abs=1e-6)
    assert (on[0, 1], on[1, 0]) == pytest.approx(at_edges, abs=1e-6)


def test_voi_lut_sequence_is_preferred_to_the_window():
    a = xray()
    lut = np.round(65535.0 * (np.arange(TOP + 1) / TOP) ** 0.5)  # a gamma curve, 16-bit entries
    on = decode(dicom(a, window=(2000.0, 1000.0), voi_lut=lut), dicom_window=True)
    np.testing.assert_allclose(on, lut[a] / 65535.0, atol=1e-6)


def test_rle_lossless_decodes_like_its_uncompressed_twin():
    a = xray()
    data = dicom(a, compress=RLELossless)
    assert RLELossless.encode() in data[:400]  # really compressed: the file meta names RLE Lossless
    np.testing.assert_array_equal(decode(data), decode(dicom(a)))


# ---------------------------------------------------------------------------------------------------- bad files


def edited(data: bytes, edit: Callable[[Dataset], None]) -> bytes:
    """The DICOM file ``data`` after ``edit`` changed its dataset in place."""
    ds = dcmread(io.BytesIO(data))
    edit(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _as_jpeg_lossless(ds: Dataset) -> None:
    """Relabels the file JPEG Lossless (Process 14), the usual compressed X-ray syntax, which needs a plugin."""
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3 not decoded \xff\xd9"])
    ds["PixelData"].VR = "OB"


def _drop_lut_descriptor(ds: Dataset) -> None:
    del ds.VOILUTSequence[0].LUTDescriptor


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: dicom(xray())[:-500], "dicom_unreadable"),  # pixel data cut short
        (lambda: dicom(xray())[:200], "dicom_unreadable"),  # header cut short
        pytest.param(
            lambda: dicom(xray(), compress=RLELossless)[:-300],
            "dicom_unreadable",
            marks=pytest.mark.filterwarnings("ignore:End of file reached before delimiter"),
        ),
        (lambda: dicom(np.zeros((16, 16, 3), dtype=np.uint8)), "dicom_not_monochrome"),
        (lambda: dicom(np.stack([xray(0), xray(1)])), "dicom_multiframe"),
        (lambda: dicom(xray(), window=(2000.0, 0.0)), "dicom_voi"),  # LINEAR needs width >= 1
        (lambda: edited(dicom(xray(), voi_lut=np.arange(TOP + 1)), _drop_lut_descriptor), "dicom_voi"),
        (lambda: edited(dicom(xray()), lambda ds: setattr(ds, "BitsStored", 20)), "dicom_pixel_format"),
    ],
    ids=[
        "truncated_pixels",
        "truncated_header",
        "truncated_rle",
        "rgb",
        "multiframe",
        "zero_window",
        "lut_without_descriptor",
        "bits_stored_above_allocated",
    ],
)
def test_bad_dicom_raises_with_reason(make, reason):
    with pytest.raises(ImageDecodeError) as err:
        decode_xray(make(), 12, dicom_window=True)
    assert err.value.reason == reason


def test_compressed_syntax_without_plugin_is_a_reported_reason():
    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless plugin (pylibjpeg-libjpeg or gdcm) is installed here")
    with pytest.raises(ImageDecodeError) as err:
        decode_xray(edited(dicom(xray()), _as_jpeg_lossless))
    assert err.value.reason == "dicom_transfer_syntax"
    assert "JPEG Lossless" in str(err.value) and "pylibjpeg" in str(err.value)  # names the syntax and the plugins


# ---------------------------------------------------------------------------------------------------- prepare


def _write_mixed_folder(folder: Path) -> dict[str, str]:
    """PadChest-format ``meta.csv`` and flat ``images/``: PNGs, their DICOM twins and two bad DICOMs.

    Returns:
        {DICOM ImageID: its PNG twin's ImageID}.
    """
    rows, twins = [], {}
    images = folder / "images"
    images.mkdir(parents=True)
    labels = ["['normal']", "['cardiomegaly']", "['nodule']", "['pleural effusion']"]
    kinds = ["MONOCHROME2", "MONOCHROME1", "RLE", "MONOCHROME2"] * 3  # 12 pairs: enough for train, val and test
    for i, kind in enumerate(kinds):
        a = xray(seed=i, shape=(40, 30 + i))
        png, dcm = f"img{i:02d}.png", f"img{i:02d}.dcm"
        (images / png).write_bytes(encode_png16(a))
        if kind == "MONOCHROME1":
            (images / dcm).write_bytes(dicom(TOP - a, photometric="MONOCHROME1"))
        else:
            (images / dcm).write_bytes(dicom(a, compress=RLELossless if kind == "RLE" else None))
        twins[dcm] = png
        # one patient per pair; the DICOM row's BitsStored is left blank (its file says)
        rows.append(f'{2 * i},{png},0,pat{i},PA,"{labels[i % 4]}",[],{BITS}')
        rows.append(f'{2 * i + 1},{dcm},0,pat{i},PA,"{labels[i % 4]}",[],')
    (images / "broken.dcm").write_bytes(dicom(xray())[:-500])
    (images / "colour.dcm").write_bytes(dicom(np.zeros((16, 16, 3), dtype=np.uint8)))
    n = 2 * len(kinds)
    rows.append(f"{n},broken.dcm,0,patb,PA,\"['normal']\",[],{BITS}")
    rows.append(f"{n + 1},colour.dcm,0,patc,PA,\"['normal']\",[],{BITS}")
    header = "idx,ImageID,ImageDir,PatientID,Projection,Labels,Localizations,BitsStored_DICOM\n"
    (folder / "meta.csv").write_text(header + "\n".join(rows) + "\n")
    return twins


@pytest.mark.slow
def test_prepare_reads_dicom_beside_png(ray_local, tmp_path):
    from trcgl.config import load_config
    from trcgl.data.dataset import read_dataset
    from trcgl.data.ray_prepare import run_prepare
    from trcgl.storage import Storage

    twins = _write_mixed_folder(tmp_path / "src")
    cfg = load_config(
        "tiny",
        [
            f"storage.root={tmp_path / 'root'}",
            "data.source=padchest",
            f"data.metadata={tmp_path / 'src'}/meta.csv",
            f"data.images={tmp_path / 'src'}/images",
            "data.shard_rows=6",
            "data.image_size=24",
            "data.split.val_fraction=0.2",
            "data.split.test_fraction=0.2",
        ],
    )
    report = run_prepare(cfg)
    assert report["rejected_images_by_reason"] == {"dicom_unreadable": 1, "dicom_not_monochrome": 1}
    assert {r["image_id"]: r["reason"] for r in report["rejected_image_list"]} == {
        "broken.dcm": "dicom_unreadable",
        "colour.dcm": "dicom_not_monochrome",
    }
    rows = {r["image_id"]: r for r in read_dataset(Storage(cfg.storage.root), report["dataset"]).to_pylist()}
    assert len(rows) == report["rows_written"] == 2 * len(twins)
    for dcm, png in twins.items():
        assert rows[dcm]["image"] == rows[png]["image"], dcm  # identical prepared pixels, byte for byte
        assert rows[dcm]["bits_stored"] == rows[png]["bits_stored"] == BITS
    m1 = decode_prepared(rows["img01.dcm"]["image"])  # (24, 24); xray() brightens downwards
    assert m1[-6:].mean() > m1[:6].mean() + 0.2  # the MONOCHROME1 twin is not left inverted
