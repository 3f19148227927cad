"""Decoding 16-bit X-ray PNGs by stored bit depth, rejecting bad files with a reason, antialiased resizing."""

import io

import numpy as np
import pytest
from PIL import Image

from trcgl.data.images import (
    ImageDecodeError,
    decode_prepared,
    decode_xray,
    encode_png16,
    encode_prepared,
    resize_square,
)


def ramp(bits: int) -> np.ndarray:
    return np.linspace(0, 2**bits - 1, 64 * 48).reshape(64, 48).round().astype(np.uint16)


def test_10_and_12_bit_images_normalise_to_the_same_range():
    x10, b10 = decode_xray(encode_png16(ramp(10)), 10)
    x12, b12 = decode_xray(encode_png16(ramp(12)), 12)
    assert (b10, b12) == (10, 12)
    assert x10.max() == pytest.approx(1.0) and x12.max() == pytest.approx(1.0)
    assert np.abs(x10 - x12).max() < 2e-3  # dividing both by 65535 would make the 10-bit one 4x darker


def test_bits_inferred_when_unknown():
    _, bits = decode_xray(encode_png16(ramp(10)), 0)
    assert bits == 10


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: b"", "empty_file"),
        (lambda: b"this is not an image at all", "not_png"),
        (lambda: _noise_png()[:-300], "unreadable"),
        (lambda: _save(Image.new("RGB", (8, 8)), "PNG"), "not_16bit_gray"),
        (lambda: _save(Image.new("L", (8, 8)), "JPEG"), "not_png"),
        (lambda: encode_png16(ramp(12)), "exceeds_bits_stored"),
    ],
)
def test_bad_files_raise_with_reason(make, reason):
    with pytest.raises(ImageDecodeError) as err:
        decode_xray(make(), 10)
    assert err.value.reason == reason


def _noise_png() -> bytes:
    return encode_png16(np.random.default_rng(0).integers(0, 1024, (64, 64), dtype=np.uint16))


def _save(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_resize_is_antialiased_and_keeps_aspect():
    checker = (np.indices((256, 256)).sum(axis=0) % 2).astype(np.float32)  # 1-pixel checkerboard
    small = resize_square(checker, 32)
    assert small.shape == (32, 32)
    assert abs(float(small.mean()) - 0.5) < 0.02 and float(small.std()) < 0.05  # no aliasing
    tall = np.ones((200, 100), dtype=np.float32)
    sq = resize_square(tall, 50)
    assert sq[:, :10].max() < 0.1 and sq[:, 20:30].min() > 0.9  # padded left and right, not stretched


def test_prepared_encoding_round_trip():
    x = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    assert np.abs(decode_prepared(encode_prepared(x)) - x).max() < 1e-4


def _gray8() -> np.ndarray:
    return np.linspace(0, 255, 40 * 30).reshape(40, 30).round().astype(np.uint8)  # (40, 30), every level 0-255


def test_8bit_png_and_jpeg_only_when_accepted():
    png8, jpeg = _save(Image.fromarray(_gray8(), "L"), "PNG"), _save(Image.fromarray(_gray8(), "L"), "JPEG")
    with pytest.raises(ImageDecodeError) as err:
        decode_xray(png8)
    assert err.value.reason == "not_16bit_gray" and "data.accept_8bit" in str(err.value)  # says how to read it
    image, bits = decode_xray(png8, 12, accept_8bit=True)  # a table's BitsStored does not apply to 8-bit files
    assert bits == 8 and image.dtype == np.float32
    assert np.array_equal(image, _gray8().astype(np.float32) / 255.0)  # lossless: exactly the levels over 255
    from_jpeg, bits = decode_xray(jpeg, accept_8bit=True)
    assert bits == 8 and np.abs(from_jpeg - image).max() < 0.05  # lossy, but the same picture
    # a 16-bit PNG decodes as before with the option on
    ref, b = decode_xray(encode_png16(ramp(12)), 12)
    same, b2 = decode_xray(encode_png16(ramp(12)), 12, accept_8bit=True)
    assert b == b2 == 12 and np.array_equal(ref, same)


def test_8bit_gray_in_colour_channels_is_read_and_colour_is_rejected():
    gray = _gray8()
    reference, _ = decode_xray(_save(Image.fromarray(gray, "L"), "PNG"), accept_8bit=True)
    for mode, channels in (("RGB", 3), ("RGBA", 4), ("LA", 2)):
        stacked = np.stack([gray] * channels, axis=-1)
        if channels in (2, 4):
            stacked[..., -1] = 7  # alpha is not part of the image
        decoded, _ = decode_xray(_save(Image.fromarray(stacked, mode), "PNG"), accept_8bit=True)
        assert np.array_equal(decoded, reference), mode
    colour = np.stack([gray, gray, gray], axis=-1)
    colour[5, 5, 1] ^= 1  # one channel of one pixel differs
    noise = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    bad = [
        (_save(Image.fromarray(colour, "RGB"), "PNG"), "not_gray"),
        (_save(Image.fromarray(noise, "L"), "JPEG")[:-300], "unreadable"),  # cut inside the scan data
        (_save(Image.fromarray(gray, "L"), "GIF"), "not_png"),
    ]
    for data, reason in bad:
        with pytest.raises(ImageDecodeError) as err:
            decode_xray(data, accept_8bit=True)
        assert err.value.reason == reason
