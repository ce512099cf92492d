"""Image decoding: the libspng fast path for plain PNGs gives exactly Pillow's pixels, and every
other image still goes through Pillow with its checks (size, animation, mode)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from server.decode import _png_fast_path, decode_images
from server.errors import InvalidInput
from server.repository import InputSpec

GREY = InputSpec(shape=(1, 28, 28), color_mode="L")
RGB = InputSpec(shape=(3, 32, 32), color_mode="RGB")


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pillow_pixels(data: bytes, spec: InputSpec) -> np.ndarray:
    """What Pillow alone makes of the image, converted to the model's mode, in [0, 1]."""
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image.convert(spec.color_mode), dtype=np.float32) / np.float32(255)
    return array[None] if spec.color_mode == "L" else array.transpose(2, 0, 1)


@pytest.fixture(scope="module")
def cifar_like() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("options", [{}, {"compress_level": 0}, {"compress_level": 9}, {"optimize": True}])
def test_plain_grey_pngs_take_the_fast_path_and_match_pillow(mnist_test, options) -> None:
    pngs = [encode(Image.fromarray(d), **options) for d in mnist_test[0][:50]]
    assert all(_png_fast_path(p, GREY) for p in pngs)
    expected = np.stack([pillow_pixels(p, GREY) for p in pngs])
    np.testing.assert_array_equal(decode_images(pngs, GREY), expected)


def test_plain_rgb_pngs_take_the_fast_path_and_match_pillow(cifar_like) -> None:
    pngs = [encode(Image.fromarray(a)) for a in cifar_like]
    assert all(_png_fast_path(p, RGB) for p in pngs)
    np.testing.assert_array_equal(decode_images(pngs, RGB), np.stack([pillow_pixels(p, RGB) for p in pngs]))


def test_pngs_needing_a_conversion_go_through_pillow(mnist_test, cifar_like) -> None:
    digit = mnist_test[0][0]
    grey_cases = {
        "RGB for a grey model": Image.fromarray(digit).convert("RGB"),
        "grey with alpha": Image.fromarray(digit).convert("LA"),
        "palette": Image.fromarray(digit).convert("P"),
        "1-bit": Image.fromarray(digit).convert("1"),
    }
    for name, image in grey_cases.items():
        data = encode(image)
        assert not _png_fast_path(data, GREY), name
        np.testing.assert_array_equal(decode_images([data], GREY)[0], pillow_pixels(data, GREY), err_msg=name)
    rgba = encode(Image.fromarray(cifar_like[0]).convert("RGBA"))
    assert not _png_fast_path(rgba, RGB)
    np.testing.assert_array_equal(decode_images([rgba], RGB)[0], pillow_pixels(rgba, RGB))


def test_other_formats_and_sizes_go_through_pillow(mnist_test) -> None:
    digit = Image.fromarray(mnist_test[0][0])
    assert not _png_fast_path(encode(digit, "BMP"), GREY)
    assert not _png_fast_path(encode(digit.resize((32, 32))), GREY)
    with pytest.raises(InvalidInput, match="32x32 pixels, but model expects 28x28"):
        decode_images([encode(digit.resize((32, 32)))], GREY)


def test_an_animated_png_is_refused_as_before(mnist_test) -> None:
    frames = [Image.fromarray(mnist_test[0][0]), Image.fromarray(mnist_test[0][1])]
    apng = encode(frames[0], save_all=True, append_images=frames[1:])
    assert not _png_fast_path(apng, GREY)
    with pytest.raises(InvalidInput, match="animated"):
        decode_images([apng], GREY)


def test_a_truncated_or_corrupt_plain_png_is_a_clear_error(mnist_test) -> None:
    data = encode(Image.fromarray(mnist_test[0][0]))
    truncated = data[: len(data) // 2]
    assert _png_fast_path(truncated, GREY)
    with pytest.raises(InvalidInput, match=r"^image 0: corrupt or truncated"):
        decode_images([truncated], GREY)
    idat = data.index(b"IDAT") + 4
    garbled = data[:idat] + bytes(b ^ 0x5A for b in data[idat : idat + 40]) + data[idat + 40 :]
    with pytest.raises(InvalidInput, match=r"^image 0: corrupt or truncated"):
        decode_images([garbled], GREY)
