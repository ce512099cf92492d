"""Client bytes to model input, once, at the edge: images, nested pixel lists, v2 tensors, eps.

Everything returns float32 [N, C, H, W] in [0, 1] for the model's input spec, or raises an error
whose message tells the client what is wrong. Images are never resized: the certificate is about
the pixels the model saw.
"""

from __future__ import annotations

import asyncio
import binascii
import io
import math
import struct
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pybase64
import pyspng
from PIL import Image, UnidentifiedImageError

from server.errors import BadRequest, InvalidInput
from server.repository import InputSpec

# Pillow formats accepted; anything else is refused before a decoder runs.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
# 8-bit modes that convert to L or RGB without guessing a scale.
CONVERTIBLE_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX"}
MAX_8BIT = np.float32(255.0)  # divide (as torchvision does), not multiply by 1/255: exact rounding

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# How long decoding one request may hold the event loop before the other requests get a turn. A
# request may carry 4096 images: decoded in one go, they kept every other client of the process
# waiting until the last (`python -m bench.fairness`; docs/server.md, "Large requests").
TURN_S = 0.002
FEW_IMAGES = 4
# PNG colour type that, at 8 bits, already is each model colour mode: no conversion to guess.
PNG_COLOR_TYPE = {"L": 0, "RGB": 2}
PNG_BIT_DEPTH_AT = 24  # after the signature and IHDR's length, type, width and height
TIFF_BITS_PER_SAMPLE = 258
# The most bytes one encoded image may take: its pixels twice over and 64 KiB of metadata, and
# 512 KiB at least (a camera's EXIF or an ICC profile). Pillow reads some formats' headers in
# Python, on the event loop: an 8 MiB JPEG of two million empty segments held it 3 s, and took
# memory --max-bytes-in-flight does not see (docs/server.md, "The image API").
MIN_IMAGE_BYTES_LIMIT = 512 * 1024


def parse_epsilon(value: Any, default: float) -> float:
    """The eps to certify at: a finite number >= 0 (or the model's default when absent)."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidInput(f"epsilon must be a number, not {value!r}")
    try:
        eps = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON integer past float's range
        raise InvalidInput(f"epsilon must be a number, not {str(value)[:40]!r}") from None
    if not math.isfinite(eps) or eps < 0:
        raise InvalidInput(f"epsilon must be a finite number >= 0, not {eps}")
    return eps


def check_pixels(batch: np.ndarray) -> np.ndarray:
    """Refuse NaN, infinities and values outside [0, 1] (NaN fails both comparisons)."""
    low, high = batch.min(), batch.max()
    if not (low >= 0.0 and high <= 1.0):
        raise InvalidInput(f"pixel values must be finite and in [0, 1]; got min {low}, max {high}")
    return batch


def _png_fast_path(data: bytes, spec: InputSpec) -> bool:
    """A still, non-interlaced 8-bit PNG of the model's size and colour mode, the usual request:
    libspng (pyspng) decodes it to Pillow's pixels 7-9x faster (`python -m bench.decode`).
    Anything else (other formats, sizes, modes, animations) goes to Pillow, which also names
    what is wrong with it."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return False
    width, height, depth, color_type, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    _, h, w = spec.shape
    # An APNG would decode as its first frame here, where Pillow refuses it as animated. Its acTL
    # chunk comes before the image data; the same four bytes anywhere else only mean Pillow.
    return (
        (width, height, depth, interlace) == (w, h, 8, 0)
        and PNG_COLOR_TYPE.get(spec.color_mode) == color_type
        and b"acTL" not in data
    )


def _pixels_png(data: bytes, where: str) -> np.ndarray:
    try:
        return pyspng.load(data)
    except RuntimeError as exc:  # libspng's error for bad CRCs, truncated or corrupt data
        raise InvalidInput(where + f"corrupt or truncated ({exc})") from None


def max_image_bytes(spec: InputSpec) -> int:
    return max(MIN_IMAGE_BYTES_LIMIT, 2 * math.prod(spec.shape) + 64 * 1024)


def _deeper_than_8_bits(image: Image.Image, data: bytes) -> bool:
    """Pillow opens a 16-bit-a-channel colour PNG or TIFF in an 8-bit mode (RGB, RGBA, LA) and
    keeps each sample's high byte: refused as 16-bit grey is, rather than quietly rounded."""
    if image.format == "PNG":
        return data[PNG_BIT_DEPTH_AT] > 8  # Pillow opened it, so IHDR comes first
    if image.format == "TIFF":
        bits = image.tag_v2.get(TIFF_BITS_PER_SAMPLE, 1)
        return max(bits if isinstance(bits, tuple) else (bits,), default=1) > 8
    return False


def _pixels_pillow(data: bytes, spec: InputSpec, where: str) -> bytes:
    _, h, w = spec.shape
    try:
        # Pillow raises DecompressionBombError past 2 x MAX_IMAGE_PIXELS; anything smaller but of
        # the wrong size is refused below before its pixels are decoded. (A catch_warnings block
        # here cost more than decoding a 28x28 PNG.)
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise InvalidInput(where + f"not an image in an accepted format ({', '.join(IMAGE_FORMATS)})") from None
    except Exception as exc:  # Pillow raises many types for hostile bytes; all mean "not an image"
        raise InvalidInput(where + f"not a readable image ({type(exc).__name__}: {exc})") from None
    with image:
        if image.size != (w, h):
            raise InvalidInput(
                where + f"{image.size[0]}x{image.size[1]} pixels, but model expects {w}x{h} "
                "(images are not resized: the certificate holds for the pixels the model sees)"
            )
        try:
            # is_animated, not n_frames: counting a TIFF's directories is quadratic in Pillow (46,603
            # of them in 4 MiB took 11 s), and walking a corrupt GIF's or TIFF's frames raises.
            animated = getattr(image, "is_animated", False)
            deeper = _deeper_than_8_bits(image, data)
        except Exception as exc:
            raise InvalidInput(where + f"corrupt or truncated ({type(exc).__name__}: {exc})") from None
        if animated:
            raise InvalidInput(where + "animated (more than one frame); send one still image")
        if deeper:
            raise InvalidInput(where + f"16 bits a sample (mode {image.mode}); send 8-bit grey, RGB or RGBA")
        if image.mode not in CONVERTIBLE_MODES:
            raise InvalidInput(
                where + f"mode {image.mode} is not supported; send 8-bit grey, RGB or RGBA"
            )
        try:
            # convert() copies even when the mode is already right: skip it then (the usual case)
            return (image if image.mode == spec.color_mode else image.convert(spec.color_mode)).tobytes()
        except Exception as exc:
            raise InvalidInput(where + f"corrupt or truncated ({type(exc).__name__}: {exc})") from None


def _decode_image_into(data: bytes, spec: InputSpec, out: np.ndarray, index: int) -> None:
    c, h, w = spec.shape
    where = f"image {index}: "
    if not data:
        raise InvalidInput(where + "empty file")
    if len(data) > (limit := max_image_bytes(spec)):
        raise InvalidInput(where + f"{len(data)} bytes; an encoded {c}x{h}x{w} image may take at most {limit}")
    if _png_fast_path(data, spec):
        raw = _pixels_png(data, where)
    else:
        raw = _pixels_pillow(data, spec, where)
    # Pillow's tobytes + frombuffer: cheaper than np.asarray(image) (__array_interface__)
    pixels = np.frombuffer(raw, dtype=np.uint8)
    if c == 1:
        np.divide(pixels.reshape(h, w), MAX_8BIT, out=out[index, 0])
    else:
        np.divide(pixels.reshape(h, w, c).transpose(2, 0, 1), MAX_8BIT, out=out[index])


class Turns:
    """For work a request does item by item on the event loop: `await turns.between()` after each
    item lets the loop run its other work (other requests), and other threads take the GIL, once
    this one has had TURN_S."""

    __slots__ = ("_ends",)

    def __init__(self) -> None:
        self._ends = time.perf_counter() + TURN_S

    async def between(self) -> None:
        if time.perf_counter() > self._ends:
            # Also let go of the GIL for a moment: the event loop yielding to its other requests
            # keeps it, and a batch thread needing it between two calls into onnxruntime took up
            # to 129 ms for a one-image batch while the loop decoded a large request
            # (docs/server.md, "Large requests").
            time.sleep(0)
            await asyncio.sleep(0)
            self._ends = time.perf_counter() + TURN_S


def _new_batch(n: int, spec: InputSpec) -> np.ndarray:
    if not n:
        raise InvalidInput("no image in the request")
    return np.empty((n, *spec.shape), dtype=np.float32)


def decode_images(files: Sequence[bytes], spec: InputSpec) -> np.ndarray:
    """Encoded images (PNG, JPEG, ...) to one float32 batch in the model's colour mode."""
    out = _new_batch(len(files), spec)
    for i, data in enumerate(files):
        _decode_image_into(data, spec, out, i)
    return out


async def decode_images_in_turns(files: Sequence[bytes], spec: InputSpec) -> np.ndarray:
    """`decode_images` on the event loop, taking `Turns` with the other requests; FEW_IMAGES or
    fewer, the usual request, in one go: they cannot hold the loop long, and every one-image
    request would pay for the turns' bookkeeping (docs/server.md, "Large requests")."""
    if len(files) <= FEW_IMAGES:
        return decode_images(files, spec)
    out = _new_batch(len(files), spec)
    turns = Turns()
    for i, data in enumerate(files):
        _decode_image_into(data, spec, out, i)
        await turns.between()
    return out


def decode_base64(text: str, index: int) -> bytes:
    # pybase64 (SIMD): the stdlib's decoder takes about 3 ns a character, 13 us for a 32 x 32 PNG's
    # 4 KB, more than decoding the PNG (docs/benchmarks.md, item 16).
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"instance {index}: b64 is not valid base64") from None


def numbers_array(data: Any) -> np.ndarray | None:
    """`data` (JSON parsed: nested lists) as an array of numbers, or None if it is not rectangular
    or holds anything else. The dtype is inferred, then checked: asked for float32 at once, numpy
    would also take the strings "0.5" and the booleans true and false as pixels."""
    try:
        array = np.asarray(data)
    except (TypeError, ValueError, OverflowError):
        return None
    return array if array.dtype.kind in "iuf" else None


def decode_pixel_lists(instances: Sequence[Any], spec: InputSpec) -> np.ndarray:
    """Nested lists of pixels in [0, 1], each [C, H, W] (or [H, W] for grey models).

    In one go, not in turns: the lists are the JSON body parsed into Python objects (a 24-byte float
    and an 8-byte list slot for each number of a few characters), and while one request converted
    them in turns, other requests' parsed bodies were alive beside them (docs/server.md, "Memory")."""
    c, h, w = spec.shape
    out = _new_batch(len(instances), spec)
    for i, instance in enumerate(instances):
        array = numbers_array(instance)
        if array is None:
            raise InvalidInput(f"instance {i}: not a rectangular array of numbers of shape [{c}, {h}, {w}]")
        if array.shape == (h, w) and c == 1:
            array = array[None]
        if array.shape != (c, h, w):
            raise InvalidInput(f"instance {i}: shape {list(array.shape)}, model expects [{c}, {h}, {w}]")
        out[i] = array
    return check_pixels(out)


DATATYPE_FP32 = "FP32"


def check_tensor_shape(shape: Sequence[int], spec: InputSpec) -> int:
    """A v2 input shape [N, C, H, W] for this model; returns N."""
    expected = [-1, *spec.shape]
    if len(shape) != 4 or list(shape[1:]) != list(spec.shape):
        raise InvalidInput(f"input shape {list(shape)}, model expects {expected}")
    if shape[0] < 1:
        raise InvalidInput(f"input shape {list(shape)}: the batch must hold at least one image")
    return int(shape[0])


def tensor_from_bytes(buffer: memoryview, shape: Sequence[int], spec: InputSpec) -> np.ndarray:
    """A binary FP32 tensor (little-endian, row-major), without a copy when aligned."""
    n = check_tensor_shape(shape, spec)
    expected = n * math.prod(spec.shape) * 4
    if len(buffer) != expected:
        raise BadRequest(f"input holds {len(buffer)} bytes; FP32 {list(shape)} needs {expected}")
    array = np.frombuffer(buffer, dtype="<f4").reshape(n, *spec.shape)
    if not array.flags.aligned:
        array = array.copy()
    return check_pixels(array)


def tensor_from_list(data: Any, shape: Sequence[int], spec: InputSpec) -> np.ndarray:
    """A JSON v2 tensor: `data` flat (row-major) or nested, with shape [N, C, H, W]."""
    n = check_tensor_shape(shape, spec)
    array = numbers_array(data)
    if array is None:
        raise BadRequest("input data must be a flat or nested list of numbers")
    array = array.astype(np.float32, copy=False)
    if array.size != n * math.prod(spec.shape):
        raise BadRequest(f"input data holds {array.size} values; shape {list(shape)} needs {n * math.prod(spec.shape)}")
    return check_pixels(array.reshape(n, *spec.shape))
