"""Faults and shutdown in real server processes: a failing batch, a hanging model, clients that
leave, SIGTERM under load. The backend is the real one wrapped by fault_server.py."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from fault_server import FAIL_PIXEL, HANG_PIXEL
from server_support import TESTS, ServerProcess, burst, metric_samples, png_bytes

pytestmark = pytest.mark.e2e
PNG = {"Content-Type": "image/png"}


def fault_server(tiny_repo: Path, *args: str) -> ServerProcess:
    return ServerProcess(argv=[sys.executable, str(TESTS / "fault_server.py"), "--repository", str(tiny_repo),
                               "--default-model", "tiny", *args])


def pixels(value: float) -> dict:
    return {"json": {"instances": [np.full((1, 28, 28), value).tolist()]}}


def queue_depth(process: ServerProcess) -> float:
    return metric_samples(process.metrics(), "gloro_queue_depth")[(("model", "tiny"),)]


def wait_for_empty_queue(process: ServerProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while queue_depth(process) != 0:
        assert time.monotonic() < deadline, "queue did not drain"
        time.sleep(0.1)


def test_a_failing_batch_fails_only_its_own_requests(tiny_repo: Path, mnist_test) -> None:
    png = png_bytes(mnist_test[0][0])
    with fault_server(tiny_repo, "--max-batch-size", "4", "--max-delay-ms", "20") as process:
        url = process.url + "/v1/predict"

        async def main():
            async with httpx.AsyncClient(timeout=30) as client:
                good = [client.post(url, content=png, headers=PNG) for _ in range(15)]
                return await asyncio.gather(client.post(url, **pixels(FAIL_PIXEL)), *good)

        poison, *good = asyncio.run(main())
        assert poison.status_code == 500
        assert "inference failed for the batch" in poison.json()["error"] and "injected backend fault" in poison.json()["error"]
        failed = [r for r in good if r.status_code != 200]
        assert all(r.status_code == 500 and "inference failed for the batch" in r.json()["error"] for r in failed)
        assert len(failed) <= 3  # at most the poison's batch-mates
        assert [r.status_code for r in burst(url, 4, content=png, headers=PNG)] == [200] * 4


def hang_then_three(url: str, png: bytes) -> list[httpx.Response]:
    """A request that hangs the model, then three good ones sent while it hangs."""

    async def main():
        async with httpx.AsyncClient(timeout=30) as client:
            hang = asyncio.ensure_future(client.post(url, **pixels(HANG_PIXEL)))
            await asyncio.sleep(0.3)  # a worker is now stuck on it
            return await asyncio.gather(hang, *(client.post(url, content=png, headers=PNG) for _ in range(3)))

    return asyncio.run(main())


HANGING = ("--hang-s", "3", "--request-timeout-s", "1", "--max-batch-size", "1")


def test_a_hanging_model_gives_504_then_recovers(tiny_repo: Path, mnist_test) -> None:
    png = png_bytes(mnist_test[0][0])
    # One instance: the requests queued behind the stuck batch cannot run either.
    with fault_server(tiny_repo, *HANGING, "--instances", "1") as process:
        url = process.url + "/v1/predict"
        answers = hang_then_three(url, png)
        assert [r.status_code for r in answers] == [504] * 4
        assert all("did not answer within 1 s" in r.json()["error"] for r in answers)
        wait_for_empty_queue(process)
        deadline = time.monotonic() + 10
        while (r := httpx.post(url, content=png, headers=PNG, timeout=10)).status_code != 200:
            assert time.monotonic() < deadline and r.status_code == 504
        assert r.json()["predictions"][0]["label"] == mnist_test[1][0]


def test_with_two_instances_a_hanging_batch_costs_only_its_own_request(tiny_repo: Path, mnist_test) -> None:
    png = png_bytes(mnist_test[0][0])
    with fault_server(tiny_repo, *HANGING, "--instances", "2") as process:
        hung, *others = hang_then_three(process.url + "/v1/predict", png)
        assert hung.status_code == 504 and "did not answer within 1 s" in hung.json()["error"]
        assert [r.status_code for r in others] == [200] * 3
        assert all(r.json()["predictions"][0]["label"] == mnist_test[1][0] for r in others)


def test_clients_that_leave_leak_nothing(tiny_repo: Path, mnist_test) -> None:
    png = png_bytes(mnist_test[0][0])
    with fault_server(tiny_repo, "--delay-ms", "100", "--max-batch-size", "1") as process:
        url = process.url + "/v1/predict"
        gone = burst(url, 10, timeout=0.05, content=png, headers=PNG)
        assert all(isinstance(a, httpx.TimeoutException) for a in gone)
        for _ in range(3):  # and some that leave in the middle of their body
            with socket.create_connection(("127.0.0.1", process.port)) as s:
                s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n" + png[:100])
        wait_for_empty_queue(process)
        assert httpx.post(url, content=png, headers=PNG).status_code == 200
        statuses = {dict(k)["status"] for k in metric_samples(process.metrics(), "gloro_requests_total")}
        assert "500" not in statuses


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_one_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length, however the server's writes were split."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n")
                  if line.startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("earlier_requests", [0, 1], ids=["just connected", "kept alive"])
def test_a_connection_open_at_sigterm_gets_its_next_request_answered(tiny_repo: Path, mnist_test,
                                                                      earlier_requests: int) -> None:
    """As the server starts draining it stops accepting; a connection with no request in progress,
    whether just accepted or kept alive after an answer, is given time to send its next request,
    which is answered with Connection: close."""
    png = png_bytes(mnist_test[0][0])
    request = (b"POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
               b"Content-Length: %d\r\n\r\n" % len(png) + png)
    process = ServerProcess(["--repository", str(tiny_repo), "--default-model", "tiny", "--drain-s", "5"]).wait_ready()
    address = ("127.0.0.1", process.port)
    conn = socket.create_connection(address, timeout=10)
    try:
        for _ in range(earlier_requests):
            conn.sendall(request)
            assert read_one_response(conn).startswith(b"HTTP/1.1 200")  # answered, kept alive
        time.sleep(0.2)  # accepted by the server
        process.terminate()
        deadline = time.monotonic() + 10
        while True:  # until the server stops accepting: it has begun draining
            assert time.monotonic() < deadline, process.output()
            try:
                socket.create_connection(address, timeout=1).close()
            except ConnectionRefusedError:
                break
            time.sleep(0.005)
        conn.sendall(request)
        answer = read_until_closed(conn)
    finally:
        conn.close()
    assert process.process.wait(15) == 0
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.lower().startswith(b"http/1.1 200") and b"connection: close" in head.lower(), answer[:300]
    assert json.loads(body)["predictions"][0]["label"] == int(mnist_test[1][0])


def test_sigterm_answers_accepted_requests_and_exits_0(tiny_repo: Path, mnist_test) -> None:
    png = png_bytes(mnist_test[0][0])
    process = fault_server(tiny_repo, "--delay-ms", "200", "--max-batch-size", "4", "--drain-s", "10").wait_ready()
    url = process.url + "/v1/predict"
    answers: list = []
    load = threading.Thread(target=lambda: answers.extend(burst(url, 20, content=png, headers=PNG)))
    load.start()
    deadline = time.monotonic() + 10
    while queue_depth(process) < 2:  # requests are accepted and waiting
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.terminate()
    signalled = time.monotonic()
    time.sleep(0.2)
    with pytest.raises(httpx.TransportError):  # new connections are refused while draining
        httpx.post(url, content=png, headers=PNG, timeout=2)
    load.join()
    code = process.process.wait(15)
    took = time.monotonic() - signalled
    log = process.output()
    assert [getattr(a, "status_code", a) for a in answers] == [200] * 20, log
    assert code == 0 and took < 10, log
