"""`python -m bench.json_bodies`: milliseconds to read the large JSON bodies of `bench.fairness`
(7 MiB of numbers for the MNIST model) each way the server can, on the event loop.

What holds the event loop is the work done in one call (docs/server.md, "Large requests"). `/v1`
pixel arrays: orjson alone (the server's reader until 2026-12-04), the server's reader
(`server.wire_v1.read_predict_body`: simdjson, one call), the reader and the conversion to float32
together (`decode_pixel_arrays_in_turns`, which lets other requests run between images; the total
of its turns), and pydantic (`PredictRequest`, which reads the bodies the reader leaves to it). The
v2 `data` body: orjson alone, pydantic (`InferRequest`, the v2 route's reader until 2026-12-04),
the route's reader (`read_infer_request`: simdjson, one call), and the reader and conversion
together (`tensor_from_array_in_turns`). Each figure is the best of `--repeats` timings of
`--number` reads.

    python -m bench.json_bodies [--number 1] [--repeats 5] [--out bench/results/json_bodies.json]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench import microbench
from bench.fairness import large_bodies
from bench.models import prepare
from server.decode import decode_pixel_arrays_in_turns, tensor_from_array_in_turns
from server.errors import InvalidInput, parse_wire
from server.repository import InputSpec
from server.routes.v2 import read_infer_request
from server.wire_v1 import PredictRequest, read_predict_body
from server.wire_v2 import InferRequest

PROG = "python -m bench.json_bodies"


def measure(number: int, repeats: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="gloro-bench-") as work:
        case = prepare("mnist", Path(work))
        bodies = large_bodies(case)
    pixels, v2 = bodies["pixels"][1], bodies["v2-json"][1]
    spec = InputSpec(shape=case.input_shape, color_mode="L")

    def pixels_converted() -> np.ndarray:
        read = read_predict_body(pixels)
        assert read is not None, "the server's reader left the pixel body to pydantic"
        return asyncio.run(decode_pixel_arrays_in_turns(read[0], spec))

    def v2_converted() -> np.ndarray:
        tensor = read_infer_request(v2).inputs[0]
        return asyncio.run(tensor_from_array_in_turns(tensor.data, tensor.shape, spec))

    ways = [
        ("pixels", "orjson", lambda: orjson.loads(pixels)),
        ("pixels", "read_predict_body", lambda: read_predict_body(pixels)),
        ("pixels", "read_predict_body + decode_pixel_arrays_in_turns", pixels_converted),
        ("pixels", "pydantic PredictRequest", lambda: parse_wire(PredictRequest, pixels, "body", InvalidInput)),
        ("v2-json", "orjson", lambda: orjson.loads(v2)),
        ("v2-json", "pydantic InferRequest", lambda: parse_wire(InferRequest, v2, "body", InvalidInput)),
        ("v2-json", "read_infer_request", lambda: read_infer_request(v2)),
        ("v2-json", "read_infer_request + tensor_from_array_in_turns", v2_converted),
    ]
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
