"""Fast JSON encoding for every answer (orjson; numpy arrays serialised without a Python loop)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, option=OPTIONS)


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)
