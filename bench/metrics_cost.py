"""`python -m bench.metrics_cost`: microseconds of the metric updates the event loop makes for one
predict request (`server.metrics`), in one process and in prometheus_client's multiprocess mode,
which `--workers` uses (each update also written to a memory-mapped file).

prometheus_client picks its mode when it is imported, so each mode is timed in a child process of
its own. Each figure is the best of `--repeats` timings of `--number` requests.

    python -m bench.metrics_cost [--number 100000] [--repeats 7] [--out bench/results/metrics_cost.json]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from bench import microbench
from bench.models import ROOT
from server.metrics import MULTIPROCESS_DIR_VARIABLE

PROG = "python -m bench.metrics_cost"

# The updates of one answered request on the event loop: enqueued, predictions counted, request
# counted and timed (server.batcher.Batcher.submit, ModelService.predict, RequestMetrics).
CHILD = """
import sys, timeit
from prometheus_client import CollectorRegistry
from server.metrics import Metrics, multiprocess_mode
metrics = Metrics(CollectorRegistry())
model = metrics.for_model("m")
def one_request():
    model.queue_depth.inc()
    model.record_predictions(1, 1)
    metrics.record_request("m", "/v1/predict", 200, 0.004)
number, repeats = int(sys.argv[1]), int(sys.argv[2])
assert multiprocess_mode() == (sys.argv[3] == "multiprocess")
print(min(timeit.repeat(one_request, number=number, repeat=repeats)) / number * 1e6)
"""


def measure(mode: str, number: int, repeats: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != MULTIPROCESS_DIR_VARIABLE}
    with tempfile.TemporaryDirectory(prefix="gloro-metrics-cost-") as folder:
        if mode == "multiprocess":
            env[MULTIPROCESS_DIR_VARIABLE] = folder
        done = subprocess.run([sys.executable, "-c", CHILD, str(number), str(repeats), mode], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True)
    return float(done.stdout)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = microbench.parser(PROG, __doc__, number=100_000, repeats=7, out_name="metrics_cost.json").parse_args(argv)
    us = {mode: measure(mode, args.number, args.repeats) for mode in ("one process", "multiprocess")}
    result = microbench.write(args.out, PROG, argv,
                              {"us_per_request": us, "extra_us": us["multiprocess"] - us["one process"]})
    print(f"bench: metric updates of one request: {us['one process']:.2f} us in one process, "
          f"{us['multiprocess']:.2f} us in multiprocess mode (+{result['extra_us']:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
