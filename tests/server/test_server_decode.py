"""Image decoding: the libspng fast path for plain PNGs gives exactly Pillow's pixels, every other
image still goes through Pillow with its checks (size, animation, mode), and a request of many
images lets the event loop serve other requests between them."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from server import decode
from server.decode import _png_fast_path, decode_images, decode_images_in_turns
from server.errors import InvalidInput
from server.repository import InputSpec
from server.routes.v1 import MULTIPART_PIECE, PiecewiseRequest

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


# -- many images in one request: decoded in turns with the other requests on the event loop ------


def first_done(large, small) -> list[str]:
    """Run a large request's decoding beside a small request's work on one event loop; the order
    in which they finished."""
    order: list[str] = []

    async def run(name: str, work) -> None:
        await work
        order.append(name)

    async def main() -> None:
        await asyncio.gather(run("large", large), run("small", small))

    asyncio.run(main())
    return order


async def one_step() -> None:
    await asyncio.sleep(0)


@pytest.fixture
def every_image_a_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "TURN_S", 0.0)


def test_a_large_request_decodes_its_images_in_turns_with_other_requests(mnist_test, every_image_a_turn) -> None:
    pngs = [encode(Image.fromarray(d)) for d in mnist_test[0][:64]]
    assert len(pngs) > decode.FEW_IMAGES
    assert first_done(decode_images_in_turns(pngs, GREY), one_step()) == ["small", "large"]
    np.testing.assert_array_equal(asyncio.run(decode_images_in_turns(pngs, GREY)), decode_images(pngs, GREY))


def test_within_its_turn_a_request_keeps_the_event_loop(mnist_test) -> None:
    pngs = [encode(Image.fromarray(d)) for d in mnist_test[0][:8]]  # more than FEW_IMAGES, far less than TURN_S of work
    assert len(pngs) > decode.FEW_IMAGES
    assert first_done(decode_images_in_turns(pngs, GREY), one_step()) == ["large", "small"]


def test_a_multipart_body_that_came_whole_is_parsed_in_pieces_taking_turns(mnist_test, every_image_a_turn) -> None:
    pngs = [encode(Image.fromarray(d)) for d in mnist_test[0][:256]]
    sent = httpx.Request("POST", "http://x/", files=[("files", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs)])
    body = sent.read()
    assert len(body) > 4 * MULTIPART_PIECE

    def request() -> PiecewiseRequest:
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive() -> dict:
            return next(messages)

        scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
                 "headers": [(b"content-type", sent.headers["content-type"].encode())]}
        return PiecewiseRequest(scope, receive)

    async def form(request: PiecewiseRequest):
        return await request.form(max_files=1000)

    assert first_done(form(request()), one_step()) == ["small", "large"]
    form = asyncio.run(form(request()))
    assert [asyncio.run(f.read()) for f in form.getlist("files")] == pngs


def test_a_turn_ends_by_letting_go_of_the_gil_and_of_the_event_loop(mnist_test, every_image_a_turn, monkeypatch) -> None:
    """The event loop yielding to its other requests keeps the GIL; a batch thread needing it
    between two calls into onnxruntime took up to 129 ms for a one-image batch while the loop
    decoded a large request (docs/server.md, "Large requests"). So each turn's end also sleeps for
    no time, which lets go of it: once per image here, and not at all within a turn."""
    pngs = [encode(Image.fromarray(d)) for d in mnist_test[0][:8]]
    sleeps: list[float] = []
    monkeypatch.setattr(decode.time, "sleep", sleeps.append)
    asyncio.run(decode_images_in_turns(pngs, GREY))
    assert sleeps == [0] * len(pngs)
    monkeypatch.setattr(decode, "TURN_S", 60.0)
    sleeps.clear()
    asyncio.run(decode_images_in_turns(pngs, GREY))
    assert sleeps == []
