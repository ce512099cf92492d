"""The serving image, built from ./Dockerfile with buildah and run: the real thing, end to end.

Builds on the local stand-in for python:3.11-slim (../shared/tools/make-base-image.sh), runs the
image's own ENTRYPOINT + CMD, waits for /readyz, classifies real MNIST test images, and checks
what docs/deploy.md promises: non-root, no torch, a working HEALTHCHECK, a model repository
mounted at /models, SIGTERM answering what was queued and exiting 0.
Needs root and buildah (Debian packages buildah, debootstrap); skips with the reason otherwise.
"""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from proc_tree import children, parent_pid, spawned_worker

from .support import REPO, SHARED, free_port, mnist_test_pngs, predict, wait_ready

# the first test also pays for the base image (about 1.5 min) and the build (about 1.5 min)
pytestmark = [pytest.mark.e2e, pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1800)]

BUILDAH = ["buildah", "--storage-driver", "vfs"]
RUN = [*BUILDAH, "run", "--isolation", "chroot"]
MAKE_BASE = SHARED / "tools" / "make-base-image.sh"
# A regression guard, not a target: the image measured 521 MB on the local base (docs/deploy.md).
# torch alone would add several hundred MB.
SIZE_BUDGET_MB = 650


def require_buildah() -> None:
    if os.geteuid() != 0:
        pytest.skip("container tests need root (buildah --isolation chroot)")
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed (apt-get install buildah debootstrap)")
    if not MAKE_BASE.is_file():
        pytest.skip(f"{MAKE_BASE} is missing (the shared tools are not beside the repository)")


def sh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


@dataclass
class Image:
    tag: str
    config: dict  # the Docker-format image config (Entrypoint, Cmd, User, Healthcheck, ...)
    size_bytes: int


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    require_buildah()
    base = sh(str(MAKE_BASE), timeout=900)
    assert base.returncode == 0, base.stderr
    tag = f"localhost/gloro-serve:test-{uuid.uuid4().hex[:8]}"
    build = sh(
        *BUILDAH, "bud", "--isolation", "chroot", "--format", "docker",
        "--build-arg", f"BASE_IMAGE={base.stdout.strip()}", "-t", tag, str(REPO),
        timeout=1800,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    try:
        inspect = json.loads(sh(*BUILDAH, "inspect", "--type", "image", tag).stdout)
        # as `buildah images` shows it: decimal units, e.g. "519 MB"
        size = json.loads(sh(*BUILDAH, "images", "--json", tag).stdout)[0]["size"]
        number, unit = re.fullmatch(r"([\d.]+)\s*([kMG]?B)", size).groups()
        size_bytes = int(float(number) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[unit])
        print(f"\n{tag}: {size}")
        yield Image(tag, inspect["Docker"]["config"], size_bytes)
    finally:
        sh(*BUILDAH, "rmi", "--force", tag)


@dataclass
class Running:
    process: subprocess.Popen
    port: int
    base_url: str
    grpc_port: int


def listener(port: int) -> tuple[int, int, str]:
    """(pid, uid, local address) of the server process listening on TCP `port` (IPv4): the one
    process, or with GLORO_WORKERS the supervisor above the workers."""
    inodes: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, hex_port = fields[1].split(":")
        if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(fields[9])
            uid, address = int(fields[7]), local
    if not inodes:
        raise AssertionError(f"nothing listens on port {port}")
    holders = set()
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            if os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes:
                holders.add(int(fd.split("/")[2]))
        except OSError:
            continue
    # Workers listen on sockets of their own (SO_REUSEPORT), or on the supervisor's shared one
    # (which the supervisor holds too): either way the server is the first holder or parent of
    # holders that is not a spawned worker.
    tops = {parent_pid(pid) if spawned_worker(pid) else pid for pid in holders}
    servers = {pid for pid in tops if pid is not None and parent_pid(pid) not in tops}
    if len(servers) != 1:
        raise AssertionError(f"no one server process holds the sockets of port {port}: {holders}")
    return servers.pop(), uid, address


@pytest.fixture(scope="module")
def container(image: Image) -> Iterator[str]:
    ctr = sh(*BUILDAH, "from", image.tag).stdout.strip()
    assert ctr
    try:
        yield ctr
    finally:
        sh(*BUILDAH, "rm", ctr)


def start(image: Image, container: str, *, env: dict[str, str] = {}, volumes: tuple[str, ...] = ()) -> Running:
    """The image's default command (ENTRYPOINT + CMD) with the given environment, on free ports
    (the container shares the host's network)."""
    port, grpc_port = free_port(), free_port()
    command = [*image.config["Entrypoint"], *image.config["Cmd"]]
    args = [*RUN, "-e", f"GLORO_PORT={port}", "-e", f"GLORO_GRPC_PORT={grpc_port}"]
    args += [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    args += [a for v in volumes for a in ("-v", v)]
    process = subprocess.Popen(
        [*args, container, "--", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    running = Running(process, port, f"http://127.0.0.1:{port}", grpc_port)
    wait_ready(running.base_url, process, timeout_s=120)
    return running


def stop(running: Running) -> tuple[int, str]:
    """SIGTERM to the server inside the container; buildah run returns its exit code."""
    if running.process.poll() is None:
        pid, _, _ = listener(running.port)
        os.kill(pid, signal.SIGTERM)
    output, _ = running.process.communicate(timeout=60)
    return running.process.returncode, output


@pytest.fixture(scope="module")
def server(image: Image, container: str) -> Iterator[Running]:
    running = start(image, container)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            stop(running)


def test_image_size_within_budget(image: Image) -> None:
    assert image.size_bytes < SIZE_BUDGET_MB * 1e6, f"{image.size_bytes / 1e6:.0f} MB"


def test_no_torch_in_image(image: Image, container: str) -> None:
    run = sh(*RUN, container, "--", "python", "-c", "import torch")
    assert run.returncode != 0 and "No module named 'torch'" in run.stderr, run.stderr
    run = sh(*RUN, container, "--", "python", "-c", "import onnxruntime, server.cli")
    assert run.returncode == 0, run.stderr
    run = sh(*RUN, container, "--", "sh", "-c", "command -v gcc cc g++ pip || true")
    assert run.stdout.strip() == "", f"build tools in the serving image: {run.stdout}"


def test_serves_the_shipped_model_as_non_root_on_all_interfaces(server: Running) -> None:
    pid, uid, address = listener(server.port)
    assert uid != 0
    status = Path(f"/proc/{pid}/status").read_text()
    real_uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert real_uid == uid == 10001
    assert address == "00000000", "the image listens on 0.0.0.0 (GLORO_HOST)"


def test_certified_mnist_predictions(server: Running) -> None:
    images = mnist_test_pngs(10)
    answer = predict(server.base_url, [png for png, _ in images])
    assert answer["model"] == "mnist-2c2f"
    eps = answer["epsilon"]
    assert eps == pytest.approx(0.3)
    predictions = answer["predictions"]
    assert len(predictions) == 10
    certified_correct = 0
    for (_, label), p in zip(images, predictions):
        assert p["certified"] == (p["radius"] > eps)
        certified_correct += p["certified"] and p["label"] == label
    # the shipped model certifies ~96% of the test set at 0.3; the first ten are easy digits
    assert certified_correct >= 9, predictions
    (first, label), = images[:1]
    one = predict(server.base_url, [first])["predictions"][0]
    assert one["label"] == label and one["certified"] is True


def test_grpc_answers_tritons_client(image: Image, server: Running) -> None:
    """The image serves the Open Inference Protocol over gRPC too (GLORO_GRPC_PORT, 8081 by default)."""
    import io

    import numpy as np
    import tritonclient.grpc as grpcclient
    from PIL import Image as PILImage

    assert "GLORO_GRPC_PORT=8081" in image.config["Env"] and "8081/tcp" in image.config["ExposedPorts"]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    assert client.is_server_ready() and client.is_model_ready("mnist-2c2f")
    images = mnist_test_pngs(4)
    answer = predict(server.base_url, [png for png, _ in images])["predictions"]
    pixels = np.stack([np.asarray(PILImage.open(io.BytesIO(png))) for png, _ in images])
    pixels = pixels.astype(np.float32).reshape(4, 1, 28, 28) / 255
    tensor = grpcclient.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    result = client.infer("mnist-2c2f", [tensor])
    assert result.as_numpy("label").tolist() == [p["label"] for p in answer] == [label for _, label in images]
    assert result.as_numpy("certified").tolist() == [p["certified"] for p in answer]


def test_healthcheck_command(image: Image, container: str, server: Running) -> None:
    kind, *command = image.config["Healthcheck"]["Test"]
    assert kind == "CMD"
    up = sh(*RUN, "-e", f"GLORO_PORT={server.port}", container, "--", *command)
    assert up.returncode == 0, up.stderr
    down = sh(*RUN, "-e", f"GLORO_PORT={free_port()}", container, "--", *command)
    assert down.returncode != 0, "the probe must fail where nothing listens"


def test_metrics_exported(server: Running) -> None:
    import httpx

    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert 'gloro_predictions_total{model="mnist-2c2f",outcome="certified"}' in text


def test_mounted_model_repository(image: Image, container: str, tmp_path: Path) -> None:
    """A repository mounted at /models with GLORO_REPOSITORY=/models replaces the shipped one."""
    shipped = REPO / "server" / "model_repository" / "mnist-2c2f" / "1"
    mounted = tmp_path / "repository" / "mnist-2c2f" / "7"
    shutil.copytree(shipped, mounted)
    manifest = json.loads((mounted / "gloro.json").read_text())
    manifest["version"] = "7"
    (mounted / "gloro.json").write_text(json.dumps(manifest))
    running = start(image, container, env={"GLORO_REPOSITORY": "/models"},
                    volumes=(f"{tmp_path / 'repository'}:/models:ro",))
    try:
        (png, label), = mnist_test_pngs(1)
        answer = predict(running.base_url, [png])
        assert answer["version"] == "7"
        assert answer["predictions"][0]["label"] == label
    finally:
        code, output = stop(running)
    assert code == 0, output


def test_sigterm_answers_queued_requests_and_exits_0(image: Image, container: str) -> None:
    """Requests waiting in the batcher when SIGTERM arrives still get their answers."""
    running = start(image, container, env={"GLORO_MAX_BATCH_SIZE": "256", "GLORO_MAX_DELAY_MS": "5000"})
    images = [png for png, _ in mnist_test_pngs(8)]
    with concurrent.futures.ThreadPoolExecutor(len(images)) as pool:
        futures = [pool.submit(predict, running.base_url, [png]) for png in images]
        # The batch waits up to 5 s to fill (256 images); 1.5 s is ample for eight local
        # requests to reach it.
        time.sleep(1.5)
        assert not any(f.done() for f in futures), "answered before the signal: the test proves nothing"
        code, output = stop(running)
        answers = [f.result(timeout=30) for f in futures]
    assert code == 0, output
    assert [len(a["predictions"]) for a in answers] == [1] * len(images)



def test_workers_share_the_port_and_one_set_of_metrics(image: Image, container: str) -> None:
    """GLORO_WORKERS=2 in the image: two worker processes, /metrics counts every request whichever
    worker answers it (its files under the image's /tmp), and SIGTERM still exits 0."""
    import httpx

    running = start(image, container, env={"GLORO_WORKERS": "2", "GLORO_THREADS": "1"})
    try:
        supervisor, _, _ = listener(running.port)
        workers = [p for p in children(supervisor) if spawned_worker(p)]
        assert len(workers) == 2, workers
        pngs = mnist_test_pngs(8)
        for png, label in pngs:
            assert predict(running.base_url, [png])["predictions"][0]["label"] == label
        for _ in range(4):  # each scrape lands on either worker
            text = httpx.get(f"{running.base_url}/metrics", timeout=10).text
            assert re.search(r'gloro_predictions_total\{model="mnist-2c2f",outcome="(certified|abstained)"\} ', text)
            counted = sum(float(v) for v in re.findall(
                r'^gloro_predictions_total\{model="mnist-2c2f",outcome="\w+"\} (\S+)$', text, re.M))
            assert counted == len(pngs), text
    finally:
        code, output = stop(running)
    assert code == 0, output
