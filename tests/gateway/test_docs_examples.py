"""/docs works on the first click: every generation route's example answers 200 as it stands
(in process here; on the tiny runners in tests/e2e/test_predict_cli.py), v2 is documented per model
and the document says which profile this server runs."""

from __future__ import annotations

from gateway.http import examples
from gateway.schemas.registry import MODEL_SPECS
from tests.support.gateway_client import make_client
from tests.support.helpers import RecordingRunner


def documented_examples(spec: dict) -> list[tuple[str, dict]]:
    """(path, example body) of every POST operation of the document."""
    found = []
    for path, operations in spec["paths"].items():
        if "requestBody" not in operations.get("post", {}):
            continue  # not a POST, or one without a body (cancel)
        content = operations["post"]["requestBody"]["content"]["application/json"]
        [example] = content["examples"].values()
        found.append((path, example["value"]))
    return found


def test_every_example_answers_200_with_no_ignored_field():
    recorder = RecordingRunner()
    with make_client(recorder, MODEL_SPECS) as client:
        examples = documented_examples(client.get("/openapi.json").json())
        paths = sorted(path for path, _ in examples)
        assert paths == sorted(f"/{v}/{model}" for v in ("v1", "v2") for model in MODEL_SPECS)
        for path, body in examples:
            response = client.post(path, json=body)
            assert response.status_code == 200, (path, response.text)
            assert "x-ignored-fields" not in response.headers, path
        assert {type(job).__name__ for job in recorder.jobs} >= {"SD15DepthJob", "FluxDepthJob"}


def test_v2_is_documented_per_model_with_its_own_schema():
    with make_client(RecordingRunner(), MODEL_SPECS) as client:
        spec = client.get("/openapi.json").json()
    assert "/v2/{model}" not in spec["paths"]
    for model, model_spec in MODEL_SPECS.items():
        operation = spec["paths"][f"/v2/{model}"]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model_spec.request.__name__}"}
        assert model in operation["summary"]
    operation_ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))


def test_the_document_names_the_profile():
    with make_client(RecordingRunner(), MODEL_SPECS) as client:
        tiny = client.get("/openapi.json").json()["info"]["description"]
    assert "**tiny** profile" in tiny and "noise" in tiny
    with make_client(RecordingRunner(), MODEL_SPECS, profile="full") as client:
        full = client.get("/openapi.json").json()["info"]["description"]
    assert "**full** profile" in full


def test_without_the_pictures_the_docs_still_build(monkeypatch, tmp_path):
    monkeypatch.setattr(examples, "PAYLOADS", tmp_path)
    examples.picture.cache_clear()
    try:
        with make_client(RecordingRunner(), MODEL_SPECS) as client:
            response = client.get("/openapi.json")
        assert response.status_code == 200
        operation = response.json()["paths"]["/v2/instantid"]["post"]
        assert "examples" not in operation["requestBody"]["content"]["application/json"]
    finally:
        examples.picture.cache_clear()
