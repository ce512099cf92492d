"""The bytes of request data one server process holds at once (`--max-bytes-in-flight`): request
bodies as their bytes arrive, and the input arrays decoded from them, summed over the requests it
is reading or answering.

A body alone does not bound what a request holds: 1.4 MB of base64 PNGs decode to 12.8 MB of
float32 for the 28 x 28 MNIST model, and a uniform 224 x 224 RGB PNG of 675 bytes to 602,112.
So a route reserves what it will decode before it allocates it (`Hold.inputs`); a request that
would pass the limit gets 503 (Retry-After) while others hold it, or 413 if it would pass it alone.
"""

from __future__ import annotations

import math

from server.errors import PayloadTooLarge, Unavailable
from server.repository import InputSpec

FLOAT32_BYTES = 4


class InFlightBytes:
    """The process's count, touched only on the event loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int, what: str) -> None:
        if self.held + n > self.limit:
            raise Unavailable(
                f"this server process holds {self.held} bytes of requests (bodies and the inputs decoded from them); "
                f"another {n} ({what}) would pass its limit of {self.limit} (--max-bytes-in-flight)"
            )
        self.held += n

    def give(self, n: int) -> None:
        self.held -= n


class Hold:
    """What one request holds of the count: taken as it reads and decodes, given back at its end."""

    __slots__ = ("budget", "bytes")

    def __init__(self, budget: InFlightBytes) -> None:
        self.budget = budget
        self.bytes = 0

    def take(self, n: int, what: str) -> None:
        self.budget.take(n, what)
        self.bytes += n

    def inputs(self, count: int, spec: InputSpec) -> None:
        """Reserve the float32 batch that `count` inputs of `spec` decode to, before it exists."""
        n = count * math.prod(spec.shape) * FLOAT32_BYTES
        if n > self.budget.limit:
            raise PayloadTooLarge(
                f"{count} images of {'x'.join(map(str, spec.shape))} decode to {n} bytes, more than a server process "
                f"holds at once ({self.budget.limit}, --max-bytes-in-flight); send fewer images a request"
            )
        self.take(n, "decoded images")

    def release(self) -> None:
        self.budget.give(self.bytes)
        self.bytes = 0
