"""The benchmark suite runs end to end in its quick mode and writes well-formed results.

Behaviour only: no assertion here is about speed (a benchmark measures, tests check behaviour).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the benchmarks export models with torch (the [train] extra)")

from bench import report  # noqa: E402
from bench.load import LoadResult  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("bench")
    docs = out / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    docs.write_text("# Benchmarks\n\nHand-written text above.\n\n" + report.BEGIN + "\nold\n" + report.END
                    + "\n\nHand-written text below.\n")
    command = [sys.executable, "-m", "bench.run", "--quick", "--random-weights", "--no-peers", "--client", "python",
               "--concurrency", "1,2", "--duration", "1", "--out", str(out), "--docs", str(docs),
               "--note", "smoke test"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, docs, done


@pytest.mark.e2e
def test_quick_mode_writes_results_json(quick_run) -> None:
    out, _, _ = quick_run
    results = json.loads((out / "benchmarks.json").read_text())
    assert results["quick"] is True and results["note"] == "smoke test"
    assert results["machine"]["cores"] >= 1 and results["machine"]["cpu"]
    assert results["command"].startswith("python -m bench.run --quick")
    (overhead,) = results["overhead"]
    assert [r["batch"] for r in overhead["rows"]] == [1, 32]
    assert all(r["head_us"] > 0 and r["logits_only_us"] > 0 and r["ratio"] > 0 for r in overhead["rows"])
    serving = results["serving"]["mnist"]
    assert serving["weights"] == "random (seed 0)"
    assert set(serving["targets"]) == {"a", "a2", "w2", "b"}  # --no-peers: only gloro-serve's own modes
    for target in serving["targets"].values():
        assert "error" not in target, target
        assert target["label_answered"] == serving["expected_label"]
        assert [r["connections"] for r in target["rows"]] == [1, 2]
        for row in target["rows"]:
            cpu, client_cpu = row.pop("server_cpu_cores"), row.pop("client_cpu_cores")
            assert cpu >= 0 and client_cpu > 0  # the load generator cannot send requests for free
            busy, idle = row.pop("machine_busy_cores"), row.pop("machine_idle_cores")
            assert busy >= 0 and idle >= 0 and busy + idle <= os.cpu_count() * 1.1
            LoadResult(**row)  # every field present, nothing extra
            assert row["successes"] > 0 and row["errors"] == {} and row["responses"] == row["successes"]
            assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert all(c["req_per_s"] > 0 for c in serving["ceiling"]["rows"])
    assert {c["threads"] for c in serving["ceiling"]["rows"]} == {1, 2}  # one and several batches at once
    side = results["headline"]["mnist"]
    assert side["connections"] == 8 and len(side["rounds"]) == 1
    assert set(side["rounds"][0]) == {"a", "a2", "w2", "b", "e"} and side["rounds"][0]["a"]["errors"] == {}
    assert side["rounds"][0]["w2"]["errors"] == {} and side["ratios"]["w2/a"] > 0
    assert side["ratios"]["a2/a"] > 0 and side["ratios"]["a/b"] > 0 and side["ratios"]["a/e"] > 0 and side["ratios"]["a/c"] is None
    training = results["training"]
    assert training["epoch"]["gloro_step_s"] > 0 and training["epoch"]["plain_step_s"] > 0
    assert training["certify"]["images_per_second"] > 0 and training["certify"]["n"] == 500
    names = {v["target"] for v in results["verdicts"]}
    assert "GloRo / plain cross-entropy training step (2C2F)" in names
    assert all(v["met"] in (True, False, None) for v in results["verdicts"])


@pytest.mark.e2e
def test_quick_mode_writes_plots_and_keeps_hand_written_docs(quick_run) -> None:
    out, docs, _ = quick_run
    for name in ("overhead.png", "serving-mnist.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written text above.")
    assert text.rstrip().endswith("Hand-written text below.")
    assert "\nold\n" not in text and text.count(report.BEGIN) == 1
    assert "| (a) gloro-serve (batching, max 32) | 2 |" in text
    assert "![serving mnist](../serving-mnist.png)" in text
    assert "Not run: this machine has no GPU" in text
    assert "### Side by side at 8 connections: mnist-2c2f" in text


@pytest.mark.unit
def test_verdicts_compare_at_64_connections() -> None:
    def rows(rps: float, p99: float) -> dict:
        return {"rows": [{"connections": 64, "req_per_s": rps, "p99_ms": p99}]}

    results = {"serving": {"mnist": {"targets": {"a": rows(1300, 50), "c": rows(1000, 60), "d": rows(600, 40)}},
                           "cifar": {"targets": {"a": rows(950, 90)}, "ceiling": {"req_per_s": 1000}}}}
    got = {v["target"]: v["met"] for v in report.verdicts(results)}
    assert got == {
        "MNIST at 64 connections: gloro-serve / plain FastAPI (req/s)": True,
        "MNIST at 64 connections: gloro-serve / LitServe (req/s)": True,
        "MNIST at 64 connections: gloro-serve p99 / LitServe p99": False,
        "6C2F at 64 connections: gloro-serve / in-process ceiling": True,
    }


@pytest.mark.unit
def test_on_a_gpu_the_batching_target_is_judged_side_by_side() -> None:
    """Serving on CUDA adds the issue's GPU target: batching at least 10x the unbatched server."""
    side = {"connections": 64, "ratios": {"a/e": 0.3, "a/b": 4.25}}
    results = {"serving": {"cifar": {"device": "cuda", "targets": {}}}, "headline": {"cifar": side}}
    got = {v["target"]: (v["value"], v["met"]) for v in report.verdicts(results)}
    assert got["GPU: 6C2F at 64 connections: batching / unbatched"] == (4.25, False)
    assert not any("--workers 2 each" in name for name in got)  # a run without the two-worker pair
    side["ratios"]["w2/bw2"] = 10.5
    got = {v["target"]: (v["value"], v["met"]) for v in report.verdicts(results)}
    assert got["GPU: 6C2F at 64 connections: batching / unbatched, --workers 2 each"] == (10.5, True)
    results["serving"]["cifar"]["device"] = "cpu"
    assert not any(v["target"].startswith("GPU") for v in report.verdicts(results))


@pytest.mark.unit
def test_on_a_gpu_the_unbatched_server_also_runs_with_as_many_workers_as_the_batching_one() -> None:
    from bench.models import ModelCase
    from bench.serving import targets

    case = ModelCase("cifar", "cifar-6c2f", "6C2F", Path("repo"), Path("m.onnx"), Path("l.onnx"), (3, 32, 32),
                     "random (seed 0)", b"")
    on_gpu = {t.key: t.command for t in targets(case, "torch", "cuda", 64, peers=False)}
    assert on_gpu["bw2"][-5:] == ["--max-batch-size", "1", "--workers", "2", "--reuse-port"]
    assert on_gpu["w2"][-5:] == ["--max-batch-size", "64", "--workers", "2", "--reuse-port"]
    assert "bw2" not in {t.key for t in targets(case, "onnxruntime", "cpu", 64, peers=False)}
