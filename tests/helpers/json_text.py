"""JSON text of generated values, for the property tests of the JSON readers."""

from __future__ import annotations

import json
from typing import Any

import orjson


def json_bytes(value: Any) -> bytes:
    """`value` as JSON; integers past 64 bits, which orjson does not write, by the stdlib's writer."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(value).encode()
