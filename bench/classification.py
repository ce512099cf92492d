"""`python -m bench.classification`: what Triton's classification extension costs the event loop,
which formats its strings: the top k classes of N images' logits (`open_inference.top_classes`)
and their BYTES encoding (`OutputTensor.raw`), a string at a time, for a few shapes of request.

    python -m bench.classification --out bench/results/classification.json
"""

from __future__ import annotations

import sys
import timeit

import numpy as np

from bench import microbench
from server.open_inference import OutputTensor, top_classes

PROG = "python -m bench.classification"
# (images, classes, k): MNIST-sized answers, and a 1,000-class model asked for its top 5 and for all
CASES = [(32, 10, 10), (1000, 10, 10), (256, 1000, 5), (100, 1000, 1000)]


def time_case(images: int, classes: int, k: int, number: int, repeats: int) -> dict[str, float]:
    logits = np.random.default_rng(0).standard_normal((images, classes)).astype(np.float32)
    names = [str(i) for i in range(classes)]
    top = top_classes(logits, names, k)
    tensor = OutputTensor("logits", "BYTES", top)

    def best_ms(call) -> float:
        return min(timeit.repeat(call, number=number, repeat=repeats)) / number * 1e3

    ranked, encoded = best_ms(lambda: top_classes(logits, names, k)), best_ms(tensor.raw)
    return {"strings": top.size, "top_classes_ms": ranked, "raw_ms": encoded,
            "us_a_string": (ranked + encoded) * 1e3 / top.size}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = microbench.parser(PROG, __doc__, number=5, repeats=5, out_name="classification.json").parse_args(argv)
    cases = {}
    for images, classes, k in CASES:
        cases[f"{images} images, {classes} classes, k={k}"] = row = time_case(images, classes, k, args.number,
                                                                           args.repeats)
        print(f"bench: {images} images, {classes} classes, k={k}: {row['top_classes_ms']:.2f} + {row['raw_ms']:.2f} ms, "
              f"{row['us_a_string']:.2f} us a string", flush=True)
    microbench.write(args.out, PROG, argv, {"cases": cases})
    return 0


if __name__ == "__main__":
    sys.exit(main())
