"""Request headers read straight from the ASGI scope (the server gives their names in lower case),
without the Headers object Starlette builds first: about 3 us of event-loop CPU a predict request
(docs/benchmarks.md, item 17)."""

from __future__ import annotations

from starlette.types import Scope


def scope_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header `name` (lower case), or None."""
    for found, value in scope["headers"]:
        if found == name:
            return value
    return None
