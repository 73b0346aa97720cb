"""Fuzz the served API from its own OpenAPI document (schemathesis), and hold every answer to
the contract.

schemathesis generates requests from `/openapi.json` of a real `bentoml serve` (tiny profile):
examples, boundary and invalid values (its coverage phase), random valid and invalid ones
(fuzzing), wrong methods. Every answer must be no 5xx, a status the operation documents, a body
that matches the documented schema, and, for errors, the contract's `{"error": ...}` body with
no trace or internal path. The run is deterministic (fixed seed, derandomized) and bounded
(a few examples per operation).

Image fields cannot say in a schema that they must hold a decodable picture (or a face), so
random ones answer 400; half the generated bodies get real pictures instead (and the default,
cheap step counts), so that the success answers are fuzzed too.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events

from gateway.http.json_limits import IMAGE_FIELDS
from settings import PROJECT_ROOT

pytestmark = pytest.mark.served  # the shared `bentoml serve` of tests/conftest.py

MAX_EXAMPLES = 10  # per operation and phase: the whole run takes seconds, a generation 0.3 s
# The answers CONTRACT.md names (its error table, and the 409 of "Beyond the hosted API": a
# cancel of a request that has already ended), and the successes.
CONTRACT_STATUSES = {200, 202, 400, 401, 403, 404, 405, 406, 409, 413, 422, 429, 500, 502, 504}
# What an answer must never show: a Python trace or a path on the server.
LEAKS = ("Traceback (most recent call last)", str(PROJECT_ROOT), "site-packages")
# A picture every image field accepts (the tiny face detector finds a face in it).
FACE_URI = "data:image/png;base64," + base64.b64encode(
    (PROJECT_ROOT / "loadtests" / "payloads" / "face.png").read_bytes()
).decode("ascii")
# Fields a runnable body leaves to their defaults, so each generation stays cheap.
COST_FIELDS = ("samples", "num_inference_steps", "steps")

CONFIG = {
    "seed": 8,
    # Runnable bodies (the documented examples, and `runnable` below) queue real generations,
    # v2 ones per model: on a shared CPU a v1 answer may wait behind them longer than
    # schemathesis's default 10 s. A time limit is not what this test holds the API to.
    "request-timeout": 120,
    "generation": {
        "max-examples": MAX_EXAMPLES,
        "deterministic": True,
        "database": "none",
        "mode": "all",  # valid and invalid requests
        # The served instance runs with API keys off (every caller is let in), so a missing
        # key is no error here; the keys have tests of their own.
        "with-security-parameters": False,
    },
    # Stateful links between operations are not declared: nothing to chain.
    "phases": {"stateful": {"enabled": False}},
    "checks": {
        # A schema-valid body may still answer 400 (an image that does not decode, no face, a
        # body of another model for /v2/{model}), 404 (a request id that names nothing) or
        # 422: the documented examples carry real pictures, and the served instance blocks
        # every flux image at safety_tolerance 1 (conftest.SERVED_ENV), a valid value; or 409:
        # a cancel of a request that has already ended.
        "positive_data_acceptance": {"expected-statuses": ["2XX", "400", "404", "409", "422"]},
        # Keys off (above): no key is refused.
        "ignored_auth": {"enabled": False},
    },
}


@schemathesis.check
def contract_status(ctx: Any, response: Any, case: Any) -> bool | None:
    """Only the statuses of CONTRACT.md's table."""
    assert response.status_code in CONTRACT_STATUSES, f"status {response.status_code}"
    return None


@schemathesis.check
def contract_error_body(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error answers `{"error": str, optional "details": [{"field", "message"}]}`, and
    no answer shows a trace or a server path."""
    for leak in LEAKS:
        assert leak.encode() not in response.content, f"the answer shows {leak!r}"
    if response.status_code < 400:
        return None
    # Headers come lower-cased, each with the list of its values.
    assert response.headers.get("content-type", [""])[0].startswith("application/json")
    body = json.loads(response.content)
    assert isinstance(body, dict), "the error body is not an object"
    assert isinstance(body.get("error"), str) and body["error"], "no 'error' text"
    for detail in body.get("details", []):
        assert isinstance(detail.get("field"), str) and isinstance(detail.get("message"), str)
    return None


def runnable(body: Any) -> Any:
    """`body` with real pictures in its image fields and cost fields left to their defaults."""
    if not isinstance(body, dict):
        return body
    images = {name: FACE_URI for name in IMAGE_FIELDS if isinstance(body.get(name), str)}
    if not images:
        return body
    kept = {name: value for name, value in body.items() if name not in COST_FIELDS}
    return {**kept, **images}


def fuzz(base_url: str) -> tuple[list[str], dict[int, int], set[str]]:
    """Run schemathesis against `base_url`: (failures described, answers per status,
    operations tested)."""
    schema = schemathesis.openapi.from_url(
        f"{base_url}/openapi.json", config=SchemathesisConfig.from_dict(CONFIG)
    )

    @schema.hook
    def before_generate_body(context: Any, strategy: Any) -> Any:
        # sampled_from, not booleans: Hypothesis starts from the first choice, so the first
        # bodies it tries are runnable ones (booleans would start from False).
        choice = st.sampled_from([True, False])
        return st.tuples(strategy, choice).map(
            lambda pair: runnable(pair[0]) if pair[1] else pair[0]
        )

    failures: list[str] = []
    statuses: dict[int, int] = {}
    operations: set[str] = set()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.FatalError | events.NonFatalError):
            failures.append(f"schemathesis error: {event}")
        if not isinstance(event, events.ScenarioFinished) or event.status == Status.SKIP:
            continue
        recorder = event.recorder
        operations.add(recorder.label)
        for interaction in recorder.interactions.values():
            if interaction.response is not None:
                code = interaction.response.status_code
                statuses[code] = statuses.get(code, 0) + 1
        for case_id, checks in recorder.checks.items():
            for check in checks:
                if check.status == Status.FAILURE:
                    failures.append(describe(event, check, recorder.interactions.get(case_id)))
    return failures, statuses, operations


def describe(event: Any, check: Any, interaction: Any) -> str:
    failure = check.failure_info.failure if check.failure_info else None
    line = f"[{event.phase}] {event.recorder.label}: {check.name}"
    if failure is not None:
        line += f": {failure.title}: {failure.message}"
    if interaction is not None:
        request, response = interaction.request, interaction.response
        sent = (request.body or b"")[:300]
        line += f"\n    {request.method} {request.uri} {sent!r}"
        if response is not None:
            line += f"\n    -> {response.status_code} {response.content[:300]!r}"
    return line


def test_served_api_answers_by_its_openapi_and_the_contract(served_url: str) -> None:
    failures, statuses, operations = fuzz(served_url)

    assert not failures, "\n".join(failures)
    spec = httpx.get(f"{served_url}/openapi.json").json()
    documented = {f"{m.upper()} {path}" for path, ops in spec["paths"].items() for m in ops}
    assert operations == documented  # every operation was fuzzed
    # The runnable bodies reached the runners: success answers were held to the schema too.
    assert statuses.get(200, 0) >= len(documented) // 2, statuses
    assert statuses.get(400, 0) > 0 and statuses.get(405, 0) > 0, statuses
