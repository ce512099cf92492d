"""Triton's own tools against a real gloro-serve: tritonclient reads the model configuration and
statistics extensions, and NVIDIA's perf_analyzer (installed by bench/install_perf_analyzer.sh,
skipped where it is not) measures the server, its server-side numbers read from those extensions."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from server_support import GrpcServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workers(tiny_repo: Path):
    """Two server processes on one port, the kernel spreading connections between them."""
    with GrpcServer(["--repository", str(tiny_repo), "--default-model", "tiny", "--workers", "2",
                     "--reuse-port", "--max-batch-size", "16"]) as process:
        yield process


def statistics(url: str) -> dict:
    """The tiny model's statistics, asked on a new connection (so of whichever worker takes it)."""
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    try:
        (stats,) = client.get_inference_statistics("tiny")["model_stats"]
    finally:
        client.close()
    return stats


def test_tritonclient_reads_the_config_and_every_workers_statistics(workers, mnist_test) -> None:
    client = triton.InferenceServerClient(workers.url.removeprefix("http://"))
    config = client.get_model_config("tiny")
    assert config["max_batch_size"] == 16 and config["input"][0]["dims"] == [1, 28, 28]
    before = statistics(workers.url)["inference_stats"]["success"]["count"]
    x = (mnist_test[0][:3] / 255).astype(np.float32).reshape(3, 1, 28, 28)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    sent = 40
    for _ in range(sent):  # a new connection each: both workers answer some
        one = triton.InferenceServerClient(workers.url.removeprefix("http://"))
        assert one.infer("tiny", [tensor]).as_numpy("label").shape == (3,)
        one.close()
    # every worker answers with the sum over both, however the connections fell
    for _ in range(6):
        stats = statistics(workers.url)
        assert stats["inference_stats"]["success"]["count"] - before == sent
        assert stats["inference_count"] >= 3 * sent and stats["inference_stats"]["fail"]["count"] == 0


def perf_analyzer_input(images: np.ndarray, path: Path) -> Path:
    """perf_analyzer's --input-data file: real digits, one a request, in [0, 1] as the model takes them."""
    data = [{"input": {"content": (im / 255).astype(np.float32).ravel().tolist(), "shape": [1, 28, 28]}}
            for im in images]
    path.write_text(json.dumps({"data": data}))
    return path


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_measures_the_server_with_server_side_numbers(workers, mnist_test, tmp_path, protocol) -> None:
    exe = shutil.which("perf_analyzer")
    if exe is None:
        pytest.skip("perf_analyzer is not installed (bash bench/install_perf_analyzer.sh)")
    fails_before = statistics(workers.url)["inference_stats"]["fail"]["count"]
    report = tmp_path / "report.csv"
    run = subprocess.run(
        [exe, "-m", "tiny", "-u", workers.url.removeprefix("http://") if protocol == "http" else workers.target,
         "-i", protocol,
         "--input-data", str(perf_analyzer_input(mnist_test[0][:8], tmp_path / "digits.json")),
         "--concurrency-range", "1:4:3", "--measurement-interval", "1000", "-f", str(report),
         "--stability-percentage", "500"],  # behaviour, not figures: a busy machine must not fail it
        capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {int(row["Concurrency"]): row for row in csv.DictReader(report.open())}
    assert set(rows) == {1, 4}
    for row in rows.values():
        assert float(row["Inferences/Second"]) > 0 and int(row["p99 latency"]) > 0
        assert int(row["Server Compute Infer"]) > 0  # from the statistics extension
    served = [int(n) for n in re.findall(r"Successful request count: (\d+)", run.stdout)]
    assert len(served) == 2 and min(served) > 0, run.stdout
    # every request perf_analyzer sent (binary tensors, batch 1) was answered 200
    assert statistics(workers.url)["inference_stats"]["fail"]["count"] == fails_before
    assert httpx.get(workers.url + "/readyz").status_code == 200
