"""The REST API fuzzed from its own OpenAPI schema (schemathesis) against the running gateway.

Every operation gets requests that fit its schema and requests that do not, as a signed-in
user: no answer is a 5xx, every status code and content type is one the schema declares,
and every body matches its declared schema. Offline: the schema is the gateway's own
/openapi.json. Schemathesis's pytest plugin does not run under this pytest, so each
operation's strategy is driven with Hypothesis directly, and every failing operation is
reported (with schemathesis's reproduction) rather than only the first.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.client import auth_headers

pytestmark = [pytest.mark.e2e, pytest.mark.engine]

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 50
"""Per operation and mode: a run of seconds, not minutes, on a 2-core machine."""


def _fuzz(operation, mode: GenerationMode, headers: dict) -> str | None:
    """The failure report for one operation in one mode, or None."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    try:
        run()
    except (Exception, BaseExceptionGroup) as exc:  # failed checks, after Hypothesis shrank them
        return f"{operation.label} ({mode.value}): {exc}"
    return None


def test_the_rest_api_answers_every_request_as_its_schema_says(stack):
    schema = schemathesis.openapi.from_url(f"{stack['http_url']}/openapi.json", timeout=10)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14, [op.label for op in operations]
    headers = auth_headers("fuzzer")
    failures = [
        report
        for operation in operations
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if (report := _fuzz(operation, mode, headers)) is not None
    ]
    assert failures == [], "\n\n".join(failures)
    assert httpx.get(f"{stack['http_url']}/readyz", timeout=5).status_code == 200
    assert stack["procs"]["gateway"].proc.poll() is None


async def test_text_holding_nul_is_kept_not_a_500(stack):
    """Found by fuzzing: Postgres refuses U+0000, so such a field was a 500; it is stored as U+FFFD."""
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        made = await http.post("/v1/api-keys", json={"name": "a\x00b"}, headers=auth_headers("fuzzer-nul"))
        assert made.status_code == 201, made.text
        listed = await http.get("/v1/api-keys", headers=auth_headers("fuzzer-nul"))
    assert [k["name"] for k in listed.json()] == ["a\ufffdb"]


async def test_a_lone_surrogate_in_a_json_body_is_a_422_not_a_500(stack):
    """Found by fuzzing: FastAPI's default 422 handler could not encode the echoed input."""
    async with httpx.AsyncClient(base_url=stack["http_url"], trust_env=False) as http:
        resp = await http.post(
            "/v1/api-keys",
            content=b'{"name": "\\ud800"}',
            headers={**auth_headers("fuzzer"), "Content-Type": "application/json"},
        )
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["body", "name"]
