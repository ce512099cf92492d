"""`python -m bench.ratios FILE X/Y [X/Y ...]`: ratios between two servers of a side-by-side
result (`bench.compare`'s JSON), each the median over rounds of X's req/s over Y's in one round,
with each round's ratio.

bench.compare prints each server against the first and the ceiling; a ratio between two others
(batching over unbatched at the same worker count, say) is read back from its file with this,
the same way (`bench.serving.median_ratio`).

    python -m bench.ratios bench/results/gpu/compare-gpu.json a/b a-w4/b-w4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.serving import median_ratio, round_ratios

PROG = "python -m bench.ratios"


class RatioError(Exception):
    """An unreadable file or a pair it does not hold: one line, exit 2."""


def read_rounds(path: Path) -> list[dict[str, Any]]:
    try:
        rounds = json.loads(path.read_text())["rounds"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RatioError(f"{path}: not a bench.compare result ({type(exc).__name__}: {exc})") from None
    if not isinstance(rounds, list) or not all(isinstance(r, dict) for r in rounds):
        raise RatioError(f"{path}: not a bench.compare result ('rounds' is not a list of rounds)")
    return rounds


def labels_of(pair: str) -> tuple[str, str]:
    x, slash, y = pair.partition("/")
    if not slash or not x or not y:
        raise RatioError(f"{pair!r}: expected X/Y, two server labels")
    return x, y


def ratio(rounds: list[dict[str, Any]], pair: str) -> tuple[float, list[float]]:
    """X/Y's median over rounds, and each round's ratio."""
    x, y = labels_of(pair)
    labels = sorted(set().union(*rounds)) if rounds else []
    for label in (x, y):
        if label not in labels:
            raise RatioError(f"{pair!r}: no server {label!r} in the rounds (they hold {', '.join(labels)})")
    value = median_ratio(rounds, x, y)
    if value is None:
        raise RatioError(f"{pair!r}: no round where {y!r} served anything")
    return value, round_ratios(rounds, x, y)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("file", type=Path, help="a bench.compare JSON result")
    p.add_argument("pairs", nargs="+", metavar="X/Y", help="server labels, as in the file")
    args = p.parse_args(argv)
    try:
        rounds = read_rounds(args.file)
        values = [(pair, ratio(rounds, pair)) for pair in args.pairs]
    except RatioError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for pair, (value, each) in values:
        print(f"{pair}: {value:.3f} (median of the rounds' ratios: {', '.join(f'{r:.3f}' for r in each)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
