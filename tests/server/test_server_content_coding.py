"""ContentDecoding: a compressed body reaches the route decompressed, piece by piece, bounded and
counted; an uncompressed one passes untouched. (Through a real server: test_server_hostile.py's
corpus and test_server_e2e.py's tritonclient requests.)"""

from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest

from server.budget import Hold, InFlightBytes
from server.errors import BadRequest, PayloadTooLarge
from server.middleware import ContentDecoding

pytestmark = pytest.mark.unit


def read_through(body_pieces: list[bytes], coding: str | None, max_bytes: int) -> tuple[bytes, Hold]:
    """What a route reading the whole body sees behind ContentDecoding, and the request's Hold."""
    messages = [{"type": "http.request", "body": piece, "more_body": i < len(body_pieces) - 1}
                for i, piece in enumerate(body_pieces)]
    hold = Hold(InFlightBytes(1 << 30))
    seen: list[bytes] = []

    async def route(scope, receive, send) -> None:
        while True:
            message = await receive()
            seen.append(message["body"])
            if not message["more_body"]:
                return

    async def receive() -> dict:
        return messages.pop(0)

    headers = [(b"content-type", b"image/png")] + ([(b"content-encoding", coding.encode())] if coding else [])
    scope = {"type": "http", "headers": headers, "gloro.hold": hold}
    asyncio.run(ContentDecoding(route, max_bytes)(scope, receive, None))
    return b"".join(seen), hold


def pieces(data: bytes, n: int) -> list[bytes]:
    step = -(-len(data) // n)
    return [data[i: i + step] for i in range(0, len(data), step)]


@pytest.mark.parametrize(("coding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress),
                                                  ("GZip ", gzip.compress)])
def test_a_compressed_body_arrives_decompressed_and_counted(coding, compress) -> None:
    body = bytes(range(256)) * 400
    seen, hold = read_through(pieces(compress(body), 3), coding, max_bytes=len(body))
    assert seen == body
    assert hold.bytes == len(body)  # the decompressed bytes; BodyLimit counts the compressed ones


@pytest.mark.parametrize("coding", [None, "identity"])
def test_an_uncompressed_body_passes_untouched(coding) -> None:
    seen, hold = read_through([b"abc", b"def"], coding, max_bytes=2)  # the limit is BodyLimit's job here
    assert seen == b"abcdef" and hold.bytes == 0


def test_a_body_that_decompresses_past_the_limit_is_refused_at_the_first_byte_over() -> None:
    body = b"\0" * 10_000
    assert read_through([gzip.compress(body)], "gzip", max_bytes=10_000)[0] == body
    with pytest.raises(PayloadTooLarge, match="body decompressed exceeds the limit of 9999 bytes"):
        read_through([gzip.compress(body)], "gzip", max_bytes=9_999)


def test_a_second_gzip_member_is_refused() -> None:
    with pytest.raises(BadRequest, match="bytes after the end of the gzip body"):
        read_through([gzip.compress(b"a") + gzip.compress(b"b")], "gzip", max_bytes=100)
    with pytest.raises(BadRequest, match="bytes after the end of the gzip body"):
        read_through([gzip.compress(b"a"), gzip.compress(b"b")], "gzip", max_bytes=100)
