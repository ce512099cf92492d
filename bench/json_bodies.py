"""`python -m bench.json_bodies`: milliseconds to read the large JSON bodies of `bench.fairness`
(7 MiB of numbers for the MNIST model) each way the server can, on the event loop, in one call.

A JSON body of numbers is parsed in one call that holds the event loop throughout (docs/server.md,
"Large requests"): this says how long. `/v1` pixel arrays: orjson alone, the server's reader
(`server.wire_v1.read_predict_body`, orjson and its checks) and pydantic (`PredictRequest`, which
reads the bodies the reader leaves to it); the v2 `data` body: orjson alone and pydantic
(`InferRequest`, which the v2 route uses). Each figure is the best of `--repeats` timings of
`--number` reads.

    python -m bench.json_bodies [--number 1] [--repeats 5] [--out bench/results/json_bodies.json]
"""

from __future__ import annotations

import sys
import tempfile
import timeit
from pathlib import Path
from typing import Any

import orjson

from bench import microbench
from bench.fairness import large_bodies
from bench.models import prepare
from server.errors import InvalidInput, parse_wire
from server.wire_v1 import PredictRequest, read_predict_body
from server.wire_v2 import InferRequest

PROG = "python -m bench.json_bodies"


def measure(number: int, repeats: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="gloro-bench-") as work:
        bodies = large_bodies(prepare("mnist", Path(work)))
    pixels, v2 = bodies["pixels"][1], bodies["v2-json"][1]
    ways = [
        ("pixels", "orjson", lambda: orjson.loads(pixels)),
        ("pixels", "read_predict_body", lambda: read_predict_body(pixels)),
        ("pixels", "pydantic PredictRequest", lambda: parse_wire(PredictRequest, pixels, "body", InvalidInput)),
        ("v2-json", "orjson", lambda: orjson.loads(v2)),
        ("v2-json", "pydantic InferRequest", lambda: parse_wire(InferRequest, v2, "body", InvalidInput)),
    ]
    if read_predict_body(pixels) is None:
        raise RuntimeError("the server's reader left the pixel body to pydantic")
    return [{"body": kind, "bytes": len(bodies[kind][1]), "images": bodies[kind][3], "way": way,
             "ms": min(timeit.repeat(read, number=number, repeat=repeats)) / number * 1000}
            for kind, way, read in ways]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = microbench.parser(PROG, __doc__, number=1, repeats=5, out_name="json_bodies.json").parse_args(argv)
    result = microbench.write(args.out, PROG, argv, {"rows": measure(args.number, args.repeats)})
    for r in result["rows"]:
        print(f"bench: {r['body']} ({r['bytes'] / 2**20:.1f} MiB, {r['images']} images): {r['way']} {r['ms']:.0f} ms",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
