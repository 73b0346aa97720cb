"""Every answer the API gives matches the schema its OpenAPI document states for that status
(the document is generated from the answer models of gateway/responses.py): successes of every
route, v1 and v2, for every model, with the optional fields present (a prompt used and cut, a
webhook, ignored fields, base64), and the errors each route documents. A body that grows a field
its model lacks fails here (the models forbid unknown fields)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import schemathesis

from gateway.http.openapi import request_examples
from gateway.schemas.registry import MODEL_SPECS
from gateway.tenancy.api_keys import new_webhook_secret
from tests.support.api_key_helpers import entry, headers, write_keys
from tests.support.gateway_client import make_client
from tests.support.helpers import RecordingRunner
from tests.support.webhook_receiver import receiver

MODELS = list(MODEL_SPECS)
TAKES_SAMPLES = [m for m in MODELS if "samples" in MODEL_SPECS[m].request.model_fields]


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> list[tuple[str, str, Any]]:
    """(method, documented path, response) of a session that takes every route and most of
    their documented errors."""
    runner = RecordingRunner(prompt_used="a better prompt", prompt_truncated=True)
    keys = write_keys(
        tmp_path_factory.mktemp("keys"),
        entry("team-a", credits=10_000, concurrent_jobs=5, webhook_secret=new_webhook_secret()),
        entry("team-b", models=["instantid"], credits=1),
    )
    examples = {model: example["value"] for model, example in request_examples().items()}
    got: list[tuple[str, str, Any]] = []
    a, b = headers("team-a"), headers("team-b")
    # Webhooks to a loopback receiver, as tests/gateway/test_webhooks.py sends them.
    loopback = {"url_allowed_networks": ["127.0.0.0/8"]}
    with (
        receiver() as hook,
        make_client(runner, MODELS, quick_jobs=True, api_keys_file=keys, **loopback) as client,
    ):

        def post(path: str, template: str, **kwargs: Any) -> Any:
            response = client.post(path, **kwargs)
            got.append(("POST", template, response))
            return response

        def get(path: str, template: str) -> Any:
            response = client.get(path, headers=a)
            got.append(("GET", template, response))
            return response

        for model in MODELS:
            body = {**examples[model], "seed": 7, "unknown_field": 1}
            for route in ("v1", "v2"):
                path = f"/{route}/{model}"
                post(path, path, json=body, headers=a)
                post(path, path, json={**body, "seed": "seven"}, headers=a)  # 400
                post(path, path, json=body)  # 401
                post(path, path, json=body, headers=b)  # 403 or 406
            if model in TAKES_SAMPLES:
                post(f"/v1/{model}", f"/v1/{model}", json={**body, "samples": 2}, headers=a)
                post(f"/v1/{model}", f"/v1/{model}", json={**body, "base64": True}, headers=a)
            webhook = {"webhook": hook.url}
            submitted = post(f"/v2/{model}", f"/v2/{model}", json={**body, **webhook}, headers=a)
            job = submitted.json()["request_id"]
            deadline = time.monotonic() + 30
            while client.get(f"/v2/requests/{job}/status", headers=a).json()["status"] not in (
                "COMPLETED",
                "FAILED",
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            get(f"/v2/requests/{job}/status", "/v2/requests/{request_id}/status")
            get(f"/v2/requests/{job}", "/v2/requests/{request_id}")
            get(f"/v2/requests/{job}/output/0", "/v2/requests/{request_id}/output/{index}")
            get(f"/v2/requests/{job}/output/9", "/v2/requests/{request_id}/output/{index}")
            post(f"/v2/requests/{job}/cancel", "/v2/requests/{request_id}/cancel", headers=a)
        get("/v2/requests/nope", "/v2/requests/{request_id}")
        post("/v2/requests/nope/cancel", "/v2/requests/{request_id}/cancel", headers=a)
        document = client.get("/openapi.json").json()
    return [(method, template, response) for method, template, response in got] + [
        ("DOC", "", document)
    ]


def test_every_answer_matches_its_documented_schema(answers):
    *responses, (_, _, document) = answers
    schema = schemathesis.openapi.from_dict(document)
    statuses = set()
    for method, template, response in responses:
        operation = schema[template][method]
        documented = operation.definition.raw["responses"]
        assert str(response.status_code) in documented, (method, template, response.status_code)
        operation.validate_response(response)  # raises, naming the mismatch
        statuses.add(response.status_code)
    # The session reached the successes and the errors it means to check.
    assert {200, 400, 401, 403, 404, 406, 409} <= statuses


def test_a_completed_v2_result_documents_the_prompt_fields(answers):
    """The fields the worker writes into a result (prompt_used, prompt_truncated) are in the
    documented result schema, and the body holds them."""
    *responses, (_, _, document) = answers
    result = document["components"]["schemas"]["V2Result"]
    assert {"prompt_used", "prompt_truncated"} <= set(result["properties"])
    bodies = [
        r.json()
        for method, template, r in responses
        if template == "/v2/requests/{request_id}" and r.status_code == 200
    ]
    assert bodies and all(b["prompt_used"] == "a better prompt" for b in bodies)
    assert all(b["prompt_truncated"] is True for b in bodies)
