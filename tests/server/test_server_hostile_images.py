"""Hostile image files: each is a one-line 422 naming what is wrong, and none holds the event loop
for the time it would take to walk what the file claims (frames, directories, segments)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from server.decode import decode_images, max_image_bytes, parse_epsilon
from server.errors import InvalidInput
from server.repository import InputSpec

pytestmark = pytest.mark.unit

GREY = InputSpec(shape=(1, 28, 28), color_mode="L")
RGB = InputSpec(shape=(3, 32, 32), color_mode="RGB")


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def digit() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, depth: int, color_type: int, channels: int, extra: bytes = b"") -> bytes:
    """A valid PNG written by hand (Pillow cannot write 16-bit colour PNGs)."""
    row = b"\0" + bytes(range(256)) * (width * channels * depth // 8 // 256 + 1)
    rows = row[: 1 + width * channels * depth // 8] * height
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + extra
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def tiff_rgb16(width: int, height: int) -> bytes:
    """An uncompressed little-endian TIFF of 16 bits a sample, RGB (Pillow writes only 8-bit RGB)."""
    pixels = np.arange(width * height * 3, dtype="<u2").tobytes()
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, None), (277, 3, 1, 3), (278, 3, 1, height), (279, 4, 1, len(pixels))]
    ifd_at = 8
    bits_at = ifd_at + 2 + 12 * len(entries) + 4
    pixels_at = bits_at + 6
    out = bytearray(b"II*\0" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries)))
    for tag, kind, count, value in entries:
        value = {258: bits_at, 273: pixels_at}.get(tag, value)
        out += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 and count == 1
                                                        else struct.pack("<I", value))
    return bytes(out + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + pixels)


def tiff_with_directories(image: Image.Image, extra: int, last_empty: bool = False) -> bytes:
    """A TIFF whose first directory is followed by `extra` minimal ones, chained."""
    data = bytearray(encode(image, "TIFF"))
    first = struct.unpack_from("<I", data, 4)[0]
    link = first + 2 + 12 * struct.unpack_from("<H", data, first)[0]
    if len(data) % 2:
        data += b"\0"
    for _ in range(extra):
        struct.pack_into("<I", data, link, len(data))
        if last_empty:  # a directory of no entries: not a readable image
            data += struct.pack("<HI", 0, 0)
        else:  # a copy of the first directory's entries
            count = struct.unpack_from("<H", data, first)[0]
            data += data[first: first + 2 + 12 * count] + struct.pack("<I", 0)
        link = len(data) - 4
    return bytes(data)


def test_a_tiff_whose_second_directory_is_corrupt_is_refused_for_having_one() -> None:
    with pytest.raises(InvalidInput, match=r"^image 0: animated \(more than one frame\)"):
        decode_images([tiff_with_directories(digit(), 1, last_empty=True)], GREY)


def test_a_gif_that_ends_inside_an_extension_is_named_corrupt() -> None:
    gif = encode(digit(), "GIF")
    with pytest.raises(InvalidInput, match=r"^image 0: corrupt or truncated"):
        decode_images([gif[:-1] + b"!"], GREY)


def test_a_tiff_of_many_directories_is_refused_as_animated_without_counting_them() -> None:
    """Pillow's frame count walks every directory against all those before it (quadratic): 46,603
    of them took 11 s of the event loop. The server asks only whether there is a second."""
    with pytest.raises(InvalidInput, match=r"^image 0: animated \(more than one frame\)"):
        decode_images([tiff_with_directories(digit(), 3000)], GREY)


def test_an_animated_gif_is_refused() -> None:
    frames = [digit(), digit().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidInput, match=r"animated \(more than one frame\); send one still image"):
        decode_images([buffer.getvalue()], GREY)


@pytest.mark.parametrize(("color_type", "channels", "spec"), [(2, 3, RGB), (6, 4, RGB), (4, 2, GREY)])
def test_16_bit_colour_pngs_are_refused_not_rounded_to_their_high_byte(color_type, channels, spec) -> None:
    _, h, w = spec.shape
    sixteen = png(w, h, 16, color_type, channels)
    with Image.open(io.BytesIO(sixteen)) as image:
        assert image.mode in ("RGB", "RGBA", "LA")  # what Pillow makes of it: 8 bits a sample
    with pytest.raises(InvalidInput, match=r"^image 0: 16 bits a sample \(mode (RGB|RGBA|LA)\); send 8-bit"):
        decode_images([sixteen], spec)
    eight = png(w, h, 8, color_type, channels)
    assert decode_images([eight], spec).shape == (1, *spec.shape)  # the same file at 8 bits is served


def test_a_16_bit_rgb_tiff_is_refused() -> None:
    data = tiff_rgb16(32, 32)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB"
    with pytest.raises(InvalidInput, match=r"^image 0: 16 bits a sample \(mode RGB\)"):
        decode_images([data], RGB)


def test_an_image_file_past_its_size_limit_is_refused_before_it_is_parsed() -> None:
    limit = max_image_bytes(GREY)
    assert limit == 512 * 1024  # a 28 x 28 grey image: the floor
    assert max_image_bytes(InputSpec(shape=(3, 512, 512), color_mode="RGB")) == 2 * 3 * 512 * 512 + 64 * 1024
    padding = png_chunk(b"tEXt", b"comment\0" + b"x" * limit)
    bloated = png(28, 28, 8, 0, 1, extra=padding)
    with pytest.raises(InvalidInput, match=rf"^image 0: {len(bloated)} bytes; an encoded 1x28x28 image may take "
                                           rf"at most {limit}"):
        decode_images([bloated], GREY)
    within = png(28, 28, 8, 0, 1, extra=png_chunk(b"tEXt", b"comment\0" + b"x" * (limit // 2)))
    assert decode_images([within], GREY).shape == (1, 1, 28, 28)


@pytest.mark.parametrize("value", [10**400, -(10**400)])
def test_an_epsilon_past_floats_range_is_a_clear_error(value: int) -> None:
    with pytest.raises(InvalidInput, match="epsilon must be a number"):
        parse_epsilon(value, 0.3)
