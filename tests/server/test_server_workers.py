"""`--workers 2`: two real uvicorn worker processes behind one port, one set of metrics."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from proc_tree import children, spawned_worker

from server_support import ServerProcess, metric_samples, png_bytes, promtool_check_metrics
from tiny_model import write_model

pytestmark = pytest.mark.e2e

PNG = {"Content-Type": "image/png"}
PREDICTED = (("model", "tiny"), ("route", "/v1/predict"), ("status", "200"))


def sockets(pid: int) -> int:
    """Open sockets of a process: its listening socket, pipes aside, plus one per accepted connection."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:  # closed meanwhile
            continue
    return count


def workers_of(process: ServerProcess, n: int, timeout: float = 60.0) -> list[int]:
    """The supervisor's worker processes, once there are `n` of them (a dead one, a zombie until
    the supervisor reaps it, has no command line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in children(process.process.pid) if spawned_worker(p)]
        if len(pids) == n:
            return pids
        time.sleep(0.2)
    raise AssertionError(f"expected {n} workers, found {children(process.process.pid)}")


def all_serving(process: ServerProcess, n: int, timeout: float = 60.0) -> list[int]:
    """The `n` workers once each has taken a connection: each has loaded its models (a worker
    accepts only after its start-up), so none still reads the repository."""
    pids = workers_of(process, n)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = {pid: sockets(pid) for pid in pids}
        clients = [httpx.Client(base_url=process.url) for _ in range(16)]
        try:
            for c in clients:
                c.get("/healthz")
            if all(sockets(pid) > before[pid] for pid in pids):
                return pids
        finally:
            for c in clients:
                c.close()
        time.sleep(0.2)
    raise AssertionError(f"not every worker of {pids} took a connection")


def write_broken_version(repository: Path, breakage: str) -> None:
    """Version 3 of tiny that cannot be served: a file that is not its manifest's ("sha256", found
    when the repository is read), or a manifest that matches a file that is no ONNX graph ("not
    onnx", found only when the model loads)."""
    folder = write_model(repository, "tiny", "3")
    onnx = folder / "model.onnx"
    if breakage == "sha256":
        onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
        return
    garbage = b"not an onnx graph"
    onnx.write_bytes(garbage)
    manifest = json.loads((folder / "gloro.json").read_text())
    manifest["onnx"]["sha256"] = hashlib.sha256(garbage).hexdigest()
    (folder / "gloro.json").write_text(json.dumps(manifest))


def predict_on_new_connections(url: str, png: bytes, n: int) -> list[int]:
    """n predictions, each on a connection of its own."""
    return [httpx.post(url + "/v1/predict", content=png, headers=PNG).status_code for _ in range(n)]


@pytest.fixture(scope="module")
def two_workers(tiny_repo: Path):
    with ServerProcess(["--repository", str(tiny_repo), "--default-model", "tiny", "--workers", "2"]) as process:
        yield process
    assert process.process.returncode == 0, process.output()


def test_both_workers_answer_and_metrics_count_every_request_whoever_is_scraped(two_workers, mnist_test) -> None:
    pids = workers_of(two_workers, 2)
    counted_before = metric_samples(two_workers.metrics(), "gloro_requests_total").get(PREDICTED, 0.0)
    time.sleep(0.2)  # the scrape's connection closes in its worker
    before = {pid: sockets(pid) for pid in pids}
    png = png_bytes(mnist_test[0][0])
    clients = [httpx.Client(base_url=two_workers.url) for _ in range(16)]  # 16 connections, held open
    try:
        codes = [c.post("/v1/predict", content=png, headers=PNG).status_code for c in clients]
        accepted = {pid: sockets(pid) - before[pid] for pid in pids}
    finally:
        for c in clients:
            c.close()
    assert codes == [200] * 16
    assert min(accepted.values()) >= 1, accepted  # each worker holds some of the connections
    # A scrape lands on either worker; each must count all 16 predictions.
    for _ in range(6):
        text = two_workers.metrics()
        assert metric_samples(text, "gloro_requests_total")[PREDICTED] - counted_before == 16
        assert metric_samples(text, "gloro_queue_depth")[(("model", "tiny"),)] == 0


def test_with_reuse_port_connections_opened_at_once_are_spread_over_both_workers(tiny_repo: Path) -> None:
    """With --reuse-port each worker listens on a socket of its own (SO_REUSEPORT), so the kernel
    spreads connections by their addresses; with one shared socket the worker that wins the
    accept() race takes most (splits of 64 such as 1/63 and 0/64 were measured)."""
    with ServerProcess(["--repository", str(tiny_repo), "--default-model", "tiny", "--workers", "2",
                        "--reuse-port"]) as process:
        pids = all_serving(process, 2)
        check_connections_spread(pids, int(process.url.rsplit(":", 1)[1]))
    assert process.process.returncode == 0, process.output()


def settled_sockets(pids: list[int]) -> dict[int, int]:
    """Each worker's open sockets once two reads 0.1 s apart agree (connections closed a moment
    ago, the last burst's or a readiness probe's, may still be leaving)."""
    counts = {pid: sockets(pid) for pid in pids}
    for _ in range(20):
        time.sleep(0.1)
        again = {pid: sockets(pid) for pid in pids}
        if again == counts:
            break
        counts = again
    return counts


def check_connections_spread(pids: list[int], port: int) -> None:
    for _ in range(5):
        before = settled_sockets(pids)
        connections = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(64)]
        try:
            for c in connections:
                c.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            for c in connections:
                assert c.recv(4096).startswith(b"HTTP/1.1 200")  # accepted and answered: counted below
            taken = {pid: sockets(pid) - before[pid] for pid in pids}
        finally:
            for c in connections:
                c.close()
        # Binomial(64, 1/2) falls under 16 with probability 2e-5; measured splits were 24/40 at worst.
        assert sum(taken.values()) == 64 and min(taken.values()) >= 16, taken


def test_workers_never_load_torch(two_workers) -> None:
    """Spawned workers are fresh interpreters the supervisor's import guard does not reach: no
    torch library may be mapped into them (onnxruntime's is)."""
    for pid in workers_of(two_workers, 2):
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "onnxruntime" in maps and "libtorch" not in maps


def test_metrics_of_workers_pass_promtool(two_workers) -> None:
    promtool_check_metrics(two_workers.metrics())


def test_a_killed_worker_is_replaced_and_the_other_keeps_answering(two_workers, mnist_test) -> None:
    victim = workers_of(two_workers, 2)[0]
    png = png_bytes(mnist_test[0][1])
    subprocess.run(["kill", "-9", str(victim)], check=True)
    assert predict_on_new_connections(two_workers.url, png, 20) == [200] * 20
    deadline = time.monotonic() + 60
    while victim in (pids := workers_of(two_workers, 2)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert victim not in pids, "the killed worker was not replaced"
    # The replacement loads its models and joins in; every request still gets its answer.
    assert predict_on_new_connections(two_workers.url, png, 20) == [200] * 20


def test_sigterm_stops_every_worker_and_exits_zero(tiny_repo: Path) -> None:
    process = ServerProcess(["--repository", str(tiny_repo), "--default-model", "tiny", "--workers", "2"]).wait_ready()
    pids = workers_of(process, 2)
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(30) == 0, process.output()
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_a_repository_that_cannot_be_served_is_one_line_before_any_worker_starts(tmp_path: Path) -> None:
    process = ServerProcess(["--repository", str(tmp_path), "--workers", "2"])
    assert process.process.wait(60) == 2
    lines = process.output().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gloro-serve: error: cannot serve:"), lines


@pytest.mark.parametrize("keep_alive", [False, True], ids=["a connection a request", "one kept-alive connection"])
def test_sighup_serves_a_new_model_version_without_a_failed_request(tiny_repo: Path, tmp_path: Path,
                                                                      mnist_test, keep_alive: bool) -> None:
    """SIGHUP replaces the workers one at a time: the repository's new version is served, and a
    client posting throughout sees only 200s, whether it opens a connection for each request or
    keeps one (a retiring worker answers the request that comes on it, with Connection: close)."""
    repository = tmp_path / "repository"
    shutil.copytree(tiny_repo / "tiny" / "1", repository / "tiny" / "1")
    png = png_bytes(mnist_test[0][4])
    with ServerProcess(["--repository", str(repository), "--default-model", "tiny", "--workers", "2"]) as process:
        old = all_serving(process, 2)
        write_model(repository, "tiny", "3")
        codes: list[int | str] = []
        stop = threading.Event()

        def post_until_stopped() -> None:
            with httpx.Client(base_url=process.url) as pooled:
                post = pooled.post if keep_alive else (lambda path, **kw: httpx.post(process.url + path, **kw))
                while not stop.is_set():
                    try:
                        codes.append(post("/v1/predict", content=png, headers=PNG).status_code)
                    except httpx.TransportError as exc:  # a refused or dropped connection
                        codes.append(type(exc).__name__)

        client = threading.Thread(target=post_until_stopped)
        client.start()
        try:
            process.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while set(old) & set(children(process.process.pid)) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            stop.set()
            client.join()
        assert not set(old) & set(workers_of(process, 2)), "the old workers are still there"
        versions = {httpx.get(process.url + "/v1/models/tiny").json()["version"] for _ in range(8)}
        assert versions == {"3"}
        assert len(codes) > 10 and set(codes) == {200}, (len(codes), set(codes))


@pytest.mark.parametrize("flags", [[], ["--workers", "2"]], ids=["one process", "workers"])
def test_a_port_in_use_is_refused_with_a_line_that_says_so(tiny_repo: Path, flags: list[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        process = ServerProcess(["--repository", str(tiny_repo), "--default-model", "tiny", *flags],
                                env={"GLORO_PORT": port})
        assert process.process.wait(60) == 3
    assert "address already in use" in process.output().lower()


def test_sighup_with_a_version_that_cannot_load_keeps_the_old_workers(tiny_repo: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    shutil.copytree(tiny_repo / "tiny" / "1", repository / "tiny" / "1")
    with ServerProcess(["--repository", str(repository), "--default-model", "tiny", "--workers", "2"]) as process:
        old = all_serving(process, 2)
        write_broken_version(repository, "not onnx")
        process.process.send_signal(signal.SIGHUP)
        time.sleep(5)  # the replacement fails its start at once; nothing else may change
        assert sorted(workers_of(process, 2)) == sorted(old)
        versions = {httpx.get(process.url + "/v1/models/tiny").json()["version"] for _ in range(8)}
        assert versions == {"1"}
    assert process.process.returncode == 0
    assert "aborting the restart" in process.output()


@pytest.mark.parametrize("breakage", ["sha256", "not onnx"])
def test_a_dead_worker_that_cannot_be_replaced_stops_the_server_with_one_line(tiny_repo: Path, tmp_path: Path,
                                                                             breakage: str) -> None:
    """The repository changed under the server into one that cannot load: the replacement says so
    once and the server exits 3 (every restart would fail alike), not a loop of tracebacks."""
    repository = tmp_path / "repository"
    shutil.copytree(tiny_repo / "tiny" / "1", repository / "tiny" / "1")
    process = ServerProcess(["--repository", str(repository), "--default-model", "tiny", "--workers", "2"]).wait_ready()
    victim = all_serving(process, 2)[0]
    write_broken_version(repository, breakage)
    subprocess.run(["kill", "-9", str(victim)], check=True)
    try:
        code = process.process.wait(60)
    except subprocess.TimeoutExpired:
        code = None
    process.stop()
    output = process.output()
    assert code == 3, output
    assert output.count("cannot start: ") == 1 and "Traceback" not in output, output
