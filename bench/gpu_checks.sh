#!/usr/bin/env bash
# The GPU checks in one short run, on a machine whose python3 has CUDA torch: the CUDA tests, then
# the GPU benchmark suite cut to fit a short lease (6C2F, 1 and 64 connections, 3 s a level).
# Optional, for a bare machine with no package index: WHEELS (a folder of the server's wheels,
# installed with --no-deps into /tmp/site), TOOLS (bin/ with wrk, lib/ with its libluajit) and
# MNIST (the IDX files, copied to ../shared/datasets/mnist where the tests look); SUITE=0 stops
# before the benchmark suite (its last run: bench/results/gpu/benchmarks.json). On the H200 image
# (Python 3.12, torch, numpy, onnxruntime, prometheus-client, pillow, uvloop, h11, anyio, httpx
# already there) the wheels carried on 2026-12-04 were fastapi, starlette, uvicorn, pydantic,
# pydantic-core, pydantic-settings, python-dotenv, annotated-types, typing-inspection,
# typing-extensions, opentelemetry-api (fastapi 0.165 imports it), orjson, python-multipart,
# httptools, pyspng, pybase64 and py-spy, each the version this project's venv has. (Since
# 2026-12-05 the server also depends on grpcio and protobuf, imported only with --grpc-port,
# which these checks do not set: carry them too if a check ever does.)
# Results go to $OUT (default /tmp/gpu-checks): gpu.txt, cuda-tests.log, compare-gpu.json and
# compare.log, compare-gpu-mps.json and compare-mps.log (MPS),
# bench.log and benchmarks.json (`python -m bench.report benchmarks.json
# docs/benchmarks-gpu.md` draws the plots beside it and writes the page). The whole script took
# 453 s on an H200 host (2026-12-04, third lease, with eight servers in the comparison): tests
# 15 s, the comparison about 3 minutes, the suite 251 s. (`python -m bench.spy --backend torch
# --device cuda` ran there once, with CUDA graphs: bench/results/gpu/spy-graphs.json.)
set -u -o pipefail
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PYTHONPATH" PATH="/tmp/site/bin:$PATH"  # py-spy's binary lands in bin/
fi
if [ -n "${TOOLS:-}" ]; then export PATH="$TOOLS/bin:$PATH" LD_LIBRARY_PATH="$TOOLS/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
if [ -n "${MNIST:-}" ]; then mkdir -p ../shared/datasets && cp -r "$MNIST" ../shared/datasets/mnist; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
wrk --version 2>&1 | head -1
python3 -m pytest -q -p no:cacheprovider tests/server/test_server_cuda.py tests/models/test_training_cuda.py \
  tests/bench/test_overhead.py 2>&1 \
  | tee "$OUT/cuda-tests.log"
# One process against six and eight (six served the most of 4-8 on the H200 host, 2026-12-04,
# bench/results/gpu/compare-gpu*.json, eight doubling the CPU a request), batching and not, with the
# batch threads spinning while the GPU works (CUDA's default) or sleeping (--cuda-wait block), and
# six each with a socket of its own (--reuse-port). Copied to $OUT as soon as it is done, so a run
# cut short still brings back what finished.
python3 -m bench.compare --model cifar --backend torch --device cuda --duration 3 --rounds 3 \
  --server 'a=--max-batch-size 64' --server 'b=--max-batch-size 1' \
  --server 'a-w6=--max-batch-size 64 --workers 6' --server 'a-w6-block=--max-batch-size 64 --workers 6 --cuda-wait block' \
  --server 'a-w8-block=--max-batch-size 64 --workers 8 --cuda-wait block' \
  --server 'a-w6-rp=--max-batch-size 64 --workers 6 --reuse-port' \
  --server 'b-w6=--max-batch-size 1 --workers 6' --server 'b-w6-block=--max-batch-size 1 --workers 6 --cuda-wait block' \
  --out /tmp/gpubench/compare-gpu.json 2>&1 | tee "$OUT/compare.log"
cp /tmp/gpubench/compare-gpu.json "$OUT"/ 2>/dev/null
# The same six-worker servers again with NVIDIA's Multi-Process Service running, which lets the
# workers' CUDA contexts share the GPU at once instead of taking turns (the unbatched servers stopped
# near 3,500 req/s with 4 to 8 workers). Skipped where the daemon is missing or will not start.
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
  python3 -m bench.compare --model cifar --backend torch --device cuda --duration 3 --rounds 3 \
    --server 'a-w6=--max-batch-size 64 --workers 6' --server 'a-w6-block=--max-batch-size 64 --workers 6 --cuda-wait block' \
    --server 'b-w6=--max-batch-size 1 --workers 6' --server 'b-w6-block=--max-batch-size 1 --workers 6 --cuda-wait block' \
    --out /tmp/gpubench/compare-gpu-mps.json 2>&1 | tee "$OUT/compare-mps.log"
  echo quit | nvidia-cuda-mps-control
  cp /tmp/gpubench/compare-gpu-mps.json "$OUT"/ 2>/dev/null
else
  echo "MPS: nvidia-cuda-mps-control missing or not started; skipped" | tee "$OUT/compare-mps.log"
fi
[ "${SUITE:-1}" = 0 ] && { ls "$OUT"; exit 0; }
python3 -m bench.run --backend torch --device cuda --only overhead,serving --models cifar --concurrency 1,64 \
  --duration 3 --max-batch-size 64 --out /tmp/gpubench --docs /tmp/gpubench/benchmarks-gpu.md \
  --note "${NOTE:-GPU lease: torch backend on CUDA, load generator and servers on one host, 3 s per load level}" \
  2>&1 | tee "$OUT/bench.log"
cp /tmp/gpubench/benchmarks.json "$OUT"/ 2>/dev/null
ls "$OUT"
