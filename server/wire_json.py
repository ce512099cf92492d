"""Fields of a JSON object simdjson has parsed, without making every value Python objects.

simdjson's `items()` and `values()` convert each value whole (a `data` array of 7 MiB included), and
its lookup of a missing key costs about 3 us (an exception); a key holding a NUL character cannot
be looked up at all. So the keys are read first and checked against the names a wire model allows,
and only those are looked up.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

import simdjson


def known_fields(document: Any, allowed: Set[str]) -> dict[str, Any] | None:
    """`document`'s fields (nested objects and arrays left as simdjson proxies), or None when it is
    not an object, has a field not in `allowed`, or repeats one (pydantic reads the last of two,
    simdjson's lookup the first): bodies to leave to pydantic."""
    if type(document) is not simdjson.Object:
        return None
    keys = list(document.keys())
    if not allowed.issuperset(keys) or len(set(keys)) != len(keys):
        return None
    return {key: document[key] for key in keys}


def plain(value: Any) -> Any:
    """A value as the Python objects a JSON parser makes of it."""
    if type(value) is simdjson.Object:
        return value.as_dict()
    return value.as_list() if type(value) is simdjson.Array else value
