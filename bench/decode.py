"""`python -m bench.decode`: microseconds to decode one PNG, Pillow's path against libspng's, and
its base64 (as a JSON request carries it), the standard library's decoder against pybase64's.

The PNG paths are the server's own in `server.decode` (`_pixels_pillow`, `_pixels_png`), timed on
the same bytes: a real MNIST test digit (28 x 28 grey), a random 32 x 32 RGB image and a random
224 x 224 RGB one, each as Pillow saves a PNG by default; base64 is decoded with validation, as
`server.decode.decode_base64` does. Each figure is the best of `--repeats` timings of `--number`
decodes.

    python -m bench.decode [--number 20000] [--repeats 5] [--out bench/results/decode.json]
"""

from __future__ import annotations

import base64
import sys
import timeit
from typing import Any

import pybase64

from bench import microbench
from bench.models import mnist_digit, png_bytes, random_rgb
from server.decode import _pixels_pillow, _pixels_png, _png_fast_path
from server.repository import InputSpec

PROG = "python -m bench.decode"
CASES = {
    "mnist digit, 28 x 28 grey": (InputSpec(shape=(1, 28, 28), color_mode="L"), lambda: mnist_digit(0)),
    "random 32 x 32 RGB": (InputSpec(shape=(3, 32, 32), color_mode="RGB"), lambda: random_rgb((32, 32))),
    "random 224 x 224 RGB": (InputSpec(shape=(3, 224, 224), color_mode="RGB"), lambda: random_rgb((224, 224))),
}


def measure(number: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name, (spec, pixels) in CASES.items():
        data = png_bytes(pixels())
        if not _png_fast_path(data, spec):
            raise RuntimeError(f"{name}: not a PNG the libspng path takes")
        text = base64.b64encode(data).decode()
        timings = {}
        for path, decode in (("pillow", lambda: _pixels_pillow(data, spec, "")), ("libspng", lambda: _pixels_png(data, "")),
                             ("b64_stdlib", lambda: base64.b64decode(text, validate=True)),
                             ("b64_pybase64", lambda: pybase64.b64decode(text, validate=True))):
            timings[path] = min(timeit.repeat(decode, number=number, repeat=repeats)) / number * 1e6
        rows.append({"image": name, "png_bytes": len(data), "pillow_us": timings["pillow"],
                     "libspng_us": timings["libspng"], "speedup": timings["pillow"] / timings["libspng"],
                     "b64_chars": len(text), "b64_stdlib_us": timings["b64_stdlib"],
                     "b64_pybase64_us": timings["b64_pybase64"],
                     "b64_speedup": timings["b64_stdlib"] / timings["b64_pybase64"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = microbench.parser(PROG, __doc__, number=20000, repeats=5, out_name="decode.json").parse_args(argv)
    result = microbench.write(args.out, PROG, argv, {"rows": measure(args.number, args.repeats)})
    for r in result["rows"]:
        print(f"bench: {r['image']}: Pillow {r['pillow_us']:.1f} us, libspng {r['libspng_us']:.1f} us "
              f"({r['speedup']:.1f}x); its base64: stdlib {r['b64_stdlib_us']:.2f} us, pybase64 "
              f"{r['b64_pybase64_us']:.2f} us ({r['b64_speedup']:.1f}x)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
