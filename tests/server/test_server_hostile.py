"""Hostile input: a corpus of malformed requests across the image, JSON and v2 APIs, sent to a real
server while a well-behaved client keeps working. Each must get a 4xx JSON error naming the problem."""

from __future__ import annotations

import base64
import io
import gzip
import json
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from server_support import ServerProcess, png_bytes

pytestmark = pytest.mark.e2e

FORMATS = ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM"]
MAX_BODY = 1 << 20
READ_TIMEOUT_S = 1.0


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG that declares a huge size (its IDAT would inflate to gigabytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def v2(shape: list[int], blob: bytes, datatype: str = "FP32", size: int | None = None, extra: dict | None = None,
       header_length: str | None = None) -> dict:
    tensor = {"name": "input", "shape": shape, "datatype": datatype,
              "parameters": {"binary_data_size": len(blob) if size is None else size}}
    header = json.dumps({"inputs": [tensor], **(extra or {})}).encode()
    length = str(len(header)) if header_length is None else header_length
    return {"content": header + blob, "headers": {"Inference-Header-Content-Length": length,
                                                  "Content-Type": "application/octet-stream"}}


def coded(data: bytes, coding: str, spoil=lambda z: z) -> dict:
    """A raw PNG request whose body is compressed (then, optionally, spoilt)."""
    compressed = {"gzip": gzip.compress, "deflate": zlib.compress}.get(coding, lambda d: d)(data)
    return {"content": spoil(compressed), "headers": {"Content-Type": "image/png", "Content-Encoding": coding}}


def corpus(digit: np.ndarray) -> list[tuple[str, str, dict, int, str]]:
    """(case, path, httpx request arguments, expected status, text the error must contain)."""
    image = Image.fromarray(digit)
    good = {fmt: encode(image, fmt) for fmt in FORMATS}
    raw = lambda data, ctype="image/png": {"content": data, "headers": {"Content-Type": ctype}}  # noqa: E731
    as_json = lambda text: {"content": text.encode() if isinstance(text, str) else text,  # noqa: E731
                            "headers": {"Content-Type": "application/json"}}
    x = (digit.astype(np.float32) / 255).reshape(1, 1, 28, 28)
    cases: list[tuple[str, str, dict, int, str]] = []
    predict = "/v1/predict"
    for fmt, data in good.items():
        cases.append((f"truncated {fmt}", predict, raw(data[: len(data) // 2]), 422, "image 0:"))
        corrupt = data[:2] + bytes(b ^ 0xFF for b in data[2:12]) + data[12:]
        cases.append((f"corrupt {fmt} header", predict, raw(corrupt), 422, "image 0:"))
    animated = io.BytesIO()
    image.save(animated, format="GIF", save_all=True, append_images=[Image.fromarray(255 - digit)])
    cases += [
        ("decompression bomb", predict, raw(png_bomb(100_000, 100_000)), 422, "decompression bomb"),
        ("large declared size", predict, raw(png_bomb(5000, 5000)), 422, "5000x5000 pixels, but model expects 28x28"),
        ("wrong size", predict, raw(png_bytes(np.zeros((32, 32), np.uint8))), 422, "expects 28x28"),
        ("16-bit depth", predict, raw(encode(Image.fromarray(digit.astype(np.uint16) * 256), "PNG")), 422, "mode I"),
        ("CMYK channels", predict, raw(encode(image.convert("CMYK"), "JPEG"), "image/jpeg"), 422, "mode CMYK is not supported"),
        ("animated GIF", predict, raw(animated.getvalue(), "image/gif"), 422, "animated (more than one frame)"),
        ("GIF ending inside an extension", predict, raw(good["GIF"][:-1] + b"!", "image/gif"), 422, "corrupt or truncated"),
        ("image file over its limit", predict, raw(png_bytes(digit)[:-12] + b"\0" * 600_000), 422, "may take at most 524288"),
        ("text as image/png", predict, raw(b"hello, world"), 422, "not an image in an accepted format"),
        ("empty raw body", predict, raw(b""), 422, "empty body"),
        ("wrong content type", predict, raw(good["PNG"], "text/plain"), 415, "'text/plain' is not accepted"),
        ("missing content type", predict, {"content": good["PNG"]}, 415, "'(none)' is not accepted"),
        ("oversized body", predict, raw(b"\0" * (MAX_BODY + 1)), 413, "exceeds the limit"),
        ("empty multipart", predict, {"content": b"--b--\r\n", "headers": {"Content-Type": "multipart/form-data; boundary=b"}}, 422, "holds no file"),
        ("empty file part", predict, {"files": {"files": ("a.png", b"", "image/png")}}, 422, "image 0: empty file"),
        ("multipart without files", predict, {"content": b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--b--\r\n",
                                              "headers": {"Content-Type": "multipart/form-data; boundary=b"}}, 422, "holds no file"),
        ("multipart without boundary", predict, raw(b"garbage", "multipart/form-data"), 400, "boundary"),
        ("invalid JSON", predict, as_json("{\"instances\": ["), 400, "not valid JSON"),
        ("deeply nested JSON", predict, as_json("[" * 100_000), 400, "not valid JSON"),
        ("huge JSON of the wrong shape", predict, as_json(json.dumps({"instances": [[0.5] * 100_000]})), 422, "shape [100000]"),
        ("JSON without instances", predict, as_json("{}"), 422, "instances: Field required"),
        ("JSON empty instances", predict, as_json('{"instances": []}'), 422, "instances"),
        ("JSON wrong shape", predict, as_json('{"instances": [[[1, 2, 3]]]}'), 422, "model expects [1, 28, 28]"),
        ("JSON ragged array", predict, as_json('{"instances": [[[1, 2], [3]]]}'), 422, "not a rectangular array"),
        ("JSON pixels as text", predict, as_json(json.dumps({"instances": [[["0.5"] * 28] * 28]})), 422, "instance 0: not a rectangular array of numbers"),
        ("JSON booleans as pixels", predict, as_json(json.dumps({"instances": [[[True] * 28] * 28]})), 422, "instance 0: not a rectangular array of numbers"),
        ("JSON NaN pixel", predict, as_json(json.dumps({"instances": [np.where(x[0] > 0.5, np.nan, 0.0).tolist()]})), 422, "finite and in [0, 1]"),
        ("JSON infinite pixel", predict, as_json(json.dumps({"instances": [np.where(x[0] > 0.5, np.inf, 0.0).tolist()]})), 422, "finite and in [0, 1]"),
        ("JSON pixel out of range", predict, as_json(json.dumps({"instances": [(x[0] * 255).tolist()]})), 422, "got min 0.0, max 255.0"),
        ("JSON bad base64", predict, as_json('{"instances": [{"b64": "***"}]}'), 422, "not valid base64"),
        ("JSON non-ASCII base64", predict, as_json('{"instances": [{"b64": "YWJj\u00e9"}]}'), 422, "not valid base64"),
        ("JSON mixed instances", predict, as_json(json.dumps({"instances": [{"b64": ""}, x[0].tolist()]})), 422, "not a mix"),
        ("JSON unknown key", predict, as_json('{"instances": [{"b64": ""}], "eps": 1}'), 422, "eps: Extra inputs are not permitted"),
        ("NaN eps", predict + "?epsilon=nan", raw(good["PNG"]), 422, "epsilon must be a finite number >= 0"),
        ("negative eps", predict + "?epsilon=-0.1", raw(good["PNG"]), 422, "epsilon must be a finite number >= 0"),
        ("infinite eps in JSON", predict, as_json(json.dumps({"instances": [x[0].tolist()], "epsilon": float("inf")})), 422, "epsilon must be a finite"),
        ("text eps", predict + "?epsilon=lots", raw(good["PNG"]), 422, "epsilon"),
        ("unknown model", "/v1/models/nope/predict", raw(good["PNG"]), 404, "model 'nope' is not served"),
        ("path trick model", "/v1/models/..%2F..%2Fetc%2Fpasswd/predict", raw(good["PNG"]), 404, "no route"),
        ("dot-dot model", "/v1/models/%2e%2e/predict", raw(good["PNG"]), 404, "'..' is not served"),
        ("huge model name", "/v1/models/" + "a" * 2000 + "/predict", raw(good["PNG"]), 404, "is not served"),
        ("v2 unknown model", "/v2/models/nope/infer", v2([1, 1, 28, 28], x.tobytes()), 404, "not served"),
        ("v2 unknown version", "/v2/models/tiny/versions/9/infer", v2([1, 1, 28, 28], x.tobytes()), 404, "version '9'"),
        ("v2 wrong datatype", "/v2/models/tiny/infer", v2([1, 1, 28, 28], x.astype(np.float64).tobytes(), "FP64"), 400, "'FP64': this model takes FP32"),
        ("v2 wrong shape", "/v2/models/tiny/infer", v2([1, 3, 28, 28], np.zeros(3 * 784, np.float32).tobytes()), 422, "model expects [-1, 1, 28, 28]"),
        ("v2 empty batch", "/v2/models/tiny/infer", v2([0, 1, 28, 28], b""), 422, "at least one image"),
        ("v2 byte count short", "/v2/models/tiny/infer", v2([2, 1, 28, 28], x.tobytes()), 400, "needs 6272"),
        ("v2 size disagrees", "/v2/models/tiny/infer", v2([1, 1, 28, 28], x.tobytes(), size=10), 400, "binary_data_size 10"),
        ("v2 header length too big", "/v2/models/tiny/infer", v2([1, 1, 28, 28], x.tobytes(), header_length="999999"), 400, "does not fit"),
        ("v2 header length not a number", "/v2/models/tiny/infer", v2([1, 1, 28, 28], x.tobytes(), header_length="ten"), 400, "not an integer"),
        ("v2 NaN tensor", "/v2/models/tiny/infer", v2([1, 1, 28, 28], np.full((1, 1, 28, 28), np.nan, np.float32).tobytes()), 422, "finite"),
        ("v2 unknown output", "/v2/models/tiny/infer", v2([1, 1, 28, 28], x.tobytes(), extra={"outputs": [{"name": "secrets"}]}), 400, "unknown output 'secrets'"),
        ("v2 invalid JSON", "/v2/models/tiny/infer", as_json('{"inputs": ['), 400, "inference header is not valid JSON"),
        ("v2 without inputs", "/v2/models/tiny/infer", as_json("{}"), 400, "inference request: inputs: Field required"),
        ("v2 unknown input", "/v2/models/tiny/infer", as_json(json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1]}]})), 400, "named 'input'"),
        ("v2 data count", "/v2/models/tiny/infer", as_json(json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 10}]})), 400, "holds 10 values"),
        ("v2 numbers as text", "/v2/models/tiny/infer", as_json(json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": ["0.5"] * 784}]})), 400, "must be a flat or nested list of numbers"),
        ("v2 booleans as pixels", "/v2/models/tiny/infer", as_json(json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [True] * 784}]})), 400, "must be a flat or nested list of numbers"),
        ("v2 shape as text", "/v2/models/tiny/infer", as_json(json.dumps({"inputs": [{"name": "input", "shape": ["1", 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}]})), 400, "inputs.0.shape.0: Input should be a valid integer"),
        ("v2 shape of fractions", "/v2/models/tiny/infer", as_json(json.dumps({"inputs": [{"name": "input", "shape": [1.0, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}]})), 400, "inputs.0.shape.0: Input should be a valid integer"),
        ("v2 no data", "/v2/models/tiny/infer", as_json(json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32"}]})), 400, "neither data nor"),
        ("v2 trailing bytes", "/v2/models/tiny/infer", {"content": json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}]}).encode() + b"junk",
                                                           "headers": {"Content-Type": "application/json", "Inference-Header-Content-Length": str(len(json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}]})))}}, 400, "no input has binary_data_size"),
        ("v2 negative eps", "/v2/models/tiny/infer", v2([1, 1, 28, 28], x.tobytes(), extra={"parameters": {"epsilon": -1}}), 422, "epsilon must be"),
        ("v2 eps past float range", "/v2/models/tiny/infer", v2([1, 1, 28, 28], x.tobytes(), extra={"parameters": {"epsilon": 10**400}}), 422, "epsilon must be a number"),
        ("v2 wrong JSON", "/v2/models/tiny/infer", as_json('{"inputs": "all of them"}'), 400, "inputs"),
        ("header abuse: huge content type", predict, raw(good["PNG"], "text/" + "x" * 4000), 415, "is not accepted"),
        ("header abuse: bearer junk", predict, {"content": good["PNG"], "headers": {"Content-Type": "image/png", "Authorization": ("Bearer " + "\u00e9" * 10).encode("latin-1")}}, 200, ""),
        ("wrong method", predict, {"method": "PUT"}, 405, "not allowed"),
        ("gzip body", predict, coded(good["PNG"], "gzip"), 200, ""),
        ("deflate body", predict, coded(good["PNG"], "deflate"), 200, ""),
        ("gzip bomb", predict, coded(b"\0" * (20 * MAX_BODY), "gzip"), 413, "body decompressed exceeds the limit of 1048576"),
        ("corrupt gzip", predict, coded(good["PNG"], "gzip", lambda z: z[:10] + bytes(b ^ 0xFF for b in z[10:])), 400, "not valid gzip"),
        ("truncated gzip", predict, coded(good["PNG"], "gzip", lambda z: z[: len(z) // 2]), 400, "truncated"),
        ("bytes after gzip", predict, coded(good["PNG"], "gzip", lambda z: z + b"junk"), 400, "bytes after the end"),
        ("unknown coding", predict, coded(good["PNG"], "br"), 415, "Content-Encoding 'br' is not accepted"),
    ]
    return cases


def lying_content_length(port: int) -> list[str]:
    """A declared Content-Length far over the limit with a short body: 413 at once, no waiting."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  + f"Content-Length: {MAX_BODY * 8}\r\n\r\n".encode() + b"\0" * 10)
        answer = ""
        while "}" not in answer and (chunk := s.recv(65536)):
            answer += chunk.decode(errors="replace")
    if not answer.startswith("HTTP/1.1 413") or "exceeds the limit" not in answer:
        return [f"lying Content-Length: {answer[:200]!r}"]
    return []


def tiny_server(tiny_repo: Path, *flags: str) -> Iterator[ServerProcess]:
    """The tiny model served with `flags`; the server must exit 0 when stopped."""
    with ServerProcess(["--repository", str(tiny_repo), "--default-model", "tiny", *flags]) as process:
        yield process
    assert process.process.returncode == 0, process.output()


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[ServerProcess]:
    yield from tiny_server(tiny_repo, "--max-body-bytes", str(MAX_BODY))


def test_corpus_gets_4xx_json_errors_while_good_clients_get_200(server, mnist_test) -> None:
    digit = mnist_test[0][0]
    cases = corpus(digit)
    assert len(cases) >= 30 and len({c[0] for c in cases}) == len(cases)
    good_codes: list[int] = []
    stop = threading.Event()

    def good_client() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                r = client.post(server.url + "/v1/predict", content=png_bytes(digit), headers={"Content-Type": "image/png"})
                good_codes.append(r.status_code)

    thread = threading.Thread(target=good_client)
    thread.start()
    failures = []
    try:
        with httpx.Client(timeout=30) as client:
            for name, path, request, status, needle in cases:
                request = dict(request)
                method = request.pop("method", "POST")
                r = client.request(method, server.url + path, **request)
                if status == 200:  # abuse the server must shrug off
                    if r.status_code != 200:
                        failures.append(f"{name}: {r.status_code} {r.text[:100]!r}")
                    continue
                try:
                    error = r.json()["error"]
                except (ValueError, KeyError, TypeError):
                    failures.append(f"{name}: {r.status_code} not a JSON error: {r.text[:100]!r}")
                    continue
                if r.status_code != status or needle not in error:
                    failures.append(f"{name}: {r.status_code} {error!r} (wanted {status} with {needle!r})")
    finally:
        stop.set()
        thread.join()
    failures += lying_content_length(server.port)
    assert not failures, "\n".join(failures)
    assert good_codes and set(good_codes) == {200}
    assert server.process.poll() is None
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert 'status="500"' not in server.metrics()


def send_head(port: int, parts: list[bytes], pause_s: float = 0.0) -> tuple[str, int]:
    """Send a request head in `parts` (one write each), stopping if the server closes the
    connection; return its answer (up to 4 KiB) and how many bytes went out."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            for part in parts:
                s.sendall(part)
                sent += len(part)
                if pause_s:
                    time.sleep(pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = s.recv(4096).decode(errors="replace")
        except ConnectionResetError:
            answer = ""
    return answer, sent


ENDLESS = 64 << 20  # bytes: what a head without end sends before giving up


@pytest.mark.parametrize("start, filler", [
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * 65536, id="one header without end"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-A: b\r\n" * 8192, id="headers without end"),
    pytest.param(b"GET /", b"a" * 65536, id="a path without end"),
])
def test_a_request_head_over_64_KiB_gets_431_and_is_not_read_further(server, start, filler) -> None:
    answer, sent = send_head(server.port, [start] + [filler] * (ENDLESS // len(filler)))
    assert answer.startswith("HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert answer.endswith('{"error":"request head (request line and headers) over the limit of 65536 bytes"}')
    assert sent < ENDLESS // 8, f"the server read {sent} bytes of the head"
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_a_head_just_under_the_limit_is_served_even_when_it_comes_in_pieces(server) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 60_000 + b"\r\n\r\n"
    assert send_head(server.port, [head])[0].startswith("HTTP/1.1 200 OK\r\n")
    pieces = [head[i:i + 4096] for i in range(0, len(head), 4096)]
    assert send_head(server.port, pieces, pause_s=0.005)[0].startswith("HTTP/1.1 200 OK\r\n")


def test_a_request_that_is_not_http_gets_a_json_400(server) -> None:
    answer, _ = send_head(server.port, [b"HELLO\r\n\r\n"])
    head, body = answer.split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 400 Bad Request\r\n") and "content-type: application/json" in head
    assert json.loads(body) == {"error": "Invalid HTTP request received."}
    assert httpx.get(server.url + "/readyz").status_code == 200


def one_answer(port: int, request: bytes) -> tuple[str, bytes]:
    """Send `request` and read one answer: its head, and a body of the declared content-length."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += s.recv(4096)
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head).group(1))
        while len(body) < length:
            body += s.recv(4096)
    return head.decode(), body


@pytest.mark.parametrize(("path", "status"), [("/healthz", 200), ("/no/such/route", 404), ("/v1/predict", 405)])
def test_a_websocket_upgrade_is_answered_as_plain_http_in_json_and_logs_nothing(server, path, status) -> None:
    """No route takes WebSockets: the Upgrade header is ignored, as HTTP lets a server do (uvicorn's
    WebSocket layer answered a bare 403), and no warning per request reaches the log."""
    head, body = one_answer(server.port, (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    assert head.startswith(f"HTTP/1.1 {status} ") and "content-type: application/json" in head, head
    assert json.loads(body)
    assert "upgrade" not in server.output().lower()


def test_head_is_answered_as_get_without_a_body(server) -> None:
    with httpx.Client(timeout=10) as client:
        for path in ("/healthz", "/readyz", "/v1/models", "/v1/models/tiny", "/", "/static/demo.js", "/metrics"):
            got, head = client.get(server.url + path), client.head(server.url + path)
            assert (got.status_code, head.status_code) == (200, 200), path
            assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"], path
        assert client.head(server.url + "/v1/predict").status_code == 405  # a POST route
        assert client.head(server.url + "/no/such/route").status_code == 404


@pytest.mark.parametrize("asked", ["bytes=abc", "bytes=50-10", "bytes=99999999-", "bytes=0-9"])
def test_the_demo_files_are_sent_whole_whatever_range_asks(server, asked: str) -> None:
    """Starlette answered a malformed or unsatisfiable Range in plain text; the files are a few KB."""
    with httpx.Client(timeout=10) as client:
        for path in ("/", "/static/demo.js", "/static/demo.css"):
            whole = client.get(server.url + path)
            r = client.get(server.url + path, headers={"Range": asked})
            assert r.status_code == 200 and r.content == whole.content and whole.content, (path, asked)


@pytest.fixture(scope="module")
def impatient_server(tiny_repo: Path) -> Iterator[ServerProcess]:
    """A server that gives a request READ_TIMEOUT_S to arrive."""
    yield from tiny_server(tiny_repo, "--read-timeout-s", str(READ_TIMEOUT_S))


def read_until_closed(s: socket.socket, drip: bytes = b"", limit_s: float = 30) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, sending `drip` every 50 ms meanwhile;
    and the seconds that took."""
    began = time.monotonic()
    s.setblocking(False)
    answer = b""
    while time.monotonic() - began < limit_s:
        try:
            if drip:
                s.send(drip)
            chunk = s.recv(4096)
        except BlockingIOError:
            time.sleep(0.05)
            continue
        except (BrokenPipeError, ConnectionResetError):
            break
        if not chunk:
            break
        answer += chunk
    return answer, time.monotonic() - began


def json_error(answer: bytes, status_line: str) -> str:
    head, _, body = answer.decode().partition("\r\n\r\n")
    assert head.startswith(status_line + "\r\n") and "connection: close" in head, head
    return json.loads(body)["error"]


def test_a_connection_that_sends_nothing_is_closed_at_the_read_timeout(impatient_server) -> None:
    with socket.create_connection(("127.0.0.1", impatient_server.port), timeout=30) as s:
        answer, waited = read_until_closed(s)
    assert answer == b""  # nothing to say to a connection that said nothing
    assert READ_TIMEOUT_S * 0.9 <= waited < READ_TIMEOUT_S + 10
    assert httpx.get(impatient_server.url + "/readyz").status_code == 200


def test_a_head_sent_a_byte_at_a_time_gets_408_at_the_read_timeout(impatient_server) -> None:
    with socket.create_connection(("127.0.0.1", impatient_server.port), timeout=30) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        answer, waited = read_until_closed(s, drip=b"a")
    error = json_error(answer, "HTTP/1.1 408 Request Timeout")
    assert error == "request not received in full within 1 s (--read-timeout-s)"
    assert READ_TIMEOUT_S * 0.9 <= waited < READ_TIMEOUT_S + 10


def test_a_body_that_stops_halfway_gets_408_and_frees_its_connection(impatient_server, mnist_test) -> None:
    png = png_bytes(mnist_test[0][0])
    with socket.create_connection(("127.0.0.1", impatient_server.port), timeout=30) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  + f"Content-Length: {len(png)}\r\n\r\n".encode() + png[: len(png) // 2])
        answer, waited = read_until_closed(s)
    assert "within 1 s" in json_error(answer, "HTTP/1.1 408 Request Timeout")
    assert READ_TIMEOUT_S * 0.9 <= waited < READ_TIMEOUT_S + 10
    r = httpx.post(impatient_server.url + "/v1/predict", content=png, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and 'status="500"' not in impatient_server.metrics()


def test_a_request_that_comes_in_pieces_within_the_read_timeout_is_answered(impatient_server, mnist_test) -> None:
    png = png_bytes(mnist_test[0][0])
    request = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
               + f"Content-Length: {len(png)}\r\n\r\n".encode() + png)
    pieces = [request[i:i + 64] for i in range(0, len(request), 64)]
    answer, _ = send_head(impatient_server.port, pieces, pause_s=READ_TIMEOUT_S / 10 / len(pieces))
    assert answer.startswith("HTTP/1.1 200 OK\r\n") and '"label"' in answer


@pytest.fixture(scope="module")
def frugal_server(tiny_repo: Path) -> Iterator[ServerProcess]:
    """A server that holds at most two largest bodies at once, and gives a request 5 s to arrive."""
    yield from tiny_server(tiny_repo, "--max-body-bytes", str(MAX_BODY), "--max-bytes-in-flight", str(2 * MAX_BODY),
                           "--read-timeout-s", "5")


def test_bodies_in_flight_past_the_limit_get_503_until_the_stalled_ones_time_out(frugal_server, mnist_test) -> None:
    pixels = json.dumps({"instances": [(mnist_test[0][0] / 255.0)[None].tolist()]}).encode()
    padded = pixels + b" " * (300_000 - len(pixels))  # valid JSON of 300,000 bytes
    small = {"content": png_bytes(mnist_test[0][0]), "headers": {"Content-Type": "image/png"}}
    url = frugal_server.url + "/v1/predict"
    stalled = [socket.create_connection(("127.0.0.1", frugal_server.port), timeout=30) for _ in range(2)]
    try:
        for s in stalled:  # 0.9 of the largest body each, then nothing more
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Content-Length: {MAX_BODY}\r\n\r\n".encode() + b" " * (MAX_BODY * 9 // 10))
        deadline = time.monotonic() + 4
        while (r := httpx.post(url, content=padded, headers={"Content-Type": "application/json"})).status_code == 200:
            assert time.monotonic() < deadline, "the stalled bodies were never counted"
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert "(--max-bytes-in-flight)" in r.json()["error"]
        assert httpx.post(url, **small).status_code == 200  # a small body still fits
        for s in stalled:  # the read timeout ends them, and frees what they held
            answer, _ = read_until_closed(s)
            assert "within 5 s" in json_error(answer, "HTTP/1.1 408 Request Timeout")
    finally:
        for s in stalled:
            s.close()
    r = httpx.post(url, content=padded, headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] >= 0


def test_what_images_decode_to_counts_toward_the_bytes_in_flight(frugal_server, mnist_test) -> None:
    """A small body can decode to many times its bytes (1,000 MNIST PNGs: 0.3 MB of base64, 3.1 MB
    of float32); the process's limit counts the decoded inputs too."""
    url = frugal_server.url + "/v1/predict"

    def images(n: int) -> dict:
        b64 = [{"b64": base64.b64encode(png_bytes(mnist_test[0][i % 50])).decode()} for i in range(n)]
        return {"content": json.dumps({"instances": b64}).encode(), "headers": {"Content-Type": "application/json"}}

    too_many = images(1000)
    assert len(too_many["content"]) < MAX_BODY  # the body alone is allowed
    r = httpx.post(url, **too_many)
    assert r.status_code == 413 and r.json()["error"] == (
        f"1000 images of 1x28x28 decode to 3136000 bytes, more than a server process holds at once ({2 * MAX_BODY}, "
        "--max-bytes-in-flight); send fewer images a request")
    r = httpx.post(url, **images(500))  # 1.6 MB decoded, 0.2 MB of body: fits while nothing else is held
    assert r.status_code == 200 and len(r.json()["predictions"]) == 500
    with socket.create_connection(("127.0.0.1", frugal_server.port), timeout=30) as stalled:
        stalled.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {MAX_BODY}\r\n\r\n".encode() + b" " * (MAX_BODY // 2))
        deadline = time.monotonic() + 4
        while (r := httpx.post(url, **images(500))).status_code == 200:  # until the stalled half is counted
            assert time.monotonic() < deadline, "the stalled body was never counted"
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert f"another {500 * 28 * 28 * 4} (decoded images) would pass its limit" in r.json()["error"]
    deadline = time.monotonic() + 4  # the stalled request ends when the server sees the close
    while (r := httpx.post(url, **images(500))).status_code == 503:
        assert time.monotonic() < deadline, "what the stalled request held was never given back"
    assert r.status_code == 200
