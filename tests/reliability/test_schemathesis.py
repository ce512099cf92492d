"""Fuzzing (issue 7, item 2): schemathesis against the real server's own OpenAPI document.

A real server process serves the shipped model; schemathesis generates requests for every operation
of /openapi.json (valid and invalid ones) and checks each answer: never a 5xx, a documented status
code, a documented content type, and a body that conforms to the documented response schema.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server_support import ServerProcess

pytestmark = [pytest.mark.e2e]
CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def server():
    with ServerProcess() as process:
        yield process
        assert process.process.poll() is None, "the server died under fuzzing"


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_within_its_schema(case, server):
    case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=30)


def test_the_schema_covers_the_inference_routes(api_schema):
    """The fuzzing above only means something if the document lists the routes that take input."""
    paths = {operation.path for operation in (result.ok() for result in api_schema.get_all_operations())}
    for path in ("/v1/predict", "/v1/models/{name}/predict", "/v2/models/{name}/infer"):
        assert path in paths
