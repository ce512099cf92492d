"""A real gloro-serve process whose backend misbehaves on purpose, for the fault tests.

    python fault_server.py [--delay-ms N] [--hang-s S] [gloro-serve serve flags...]

The backend is the real onnxruntime one, wrapped: every batch takes at least --delay-ms; a batch
holding a pixel equal to FAIL_PIXEL raises; a batch holding HANG_PIXEL sleeps --hang-s first.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from server.backends.base import Backend, BatchOutput
from server.backends.ort import OnnxRuntimeBackend
from server.cli import parse_settings, serve
from server.repository import ModelSpec

FAIL_PIXEL = 0.125
HANG_PIXEL = 0.375


class FaultyBackend(Backend):
    def __init__(self, spec: ModelSpec, delay_s: float, hang_s: float) -> None:
        super().__init__(spec)
        self.inner = OnnxRuntimeBackend(spec, "cpu")
        self.delay_s = delay_s
        self.hang_s = hang_s

    def load(self) -> None:
        self.inner.load()

    def _forward(self, batch: np.ndarray) -> BatchOutput:
        if (batch == HANG_PIXEL).any():
            time.sleep(self.hang_s)
        if (batch == FAIL_PIXEL).any():
            raise RuntimeError("injected backend fault")
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.inner.run(batch)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--hang-s", type=float, default=0.0)
    ours, rest = parser.parse_known_args(argv)
    settings = parse_settings(rest)
    return serve(settings, backends=lambda spec: FaultyBackend(spec, ours.delay_ms / 1000, ours.hang_s))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
