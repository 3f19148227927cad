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
