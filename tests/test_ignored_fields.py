"""Ignored input is reported, and a JSON body is read as JSON whatever its Content-Type: in
process, on v1 and v2, with a recording runner."""

from __future__ import annotations

import json
import time
from urllib.parse import unquote

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.runner_client import RunnerClient
from gateway.schemas.ignored_fields import MAX_HEADER_CHARS, ignored_fields_headers
from settings import Settings
from tests.helpers import RecordingRunner, assert_error, b64, scene_image

MODEL = "sd1.5-controlnet-depth"


def make_client(recorder: RecordingRunner) -> TestClient:
    runner = RunnerClient("sd15_depth", recorder, 30.0)
    return TestClient(create_app(Settings(), runners={MODEL: runner}))


def body(**fields) -> dict:
    return {"image": b64(scene_image(96, 64)), "prompt": "a house", **fields}


def test_v1_names_unknown_fields_and_still_answers():
    recorder = RecordingRunner()
    with make_client(recorder) as client:
        response = client.post(f"/v1/{MODEL}", json=body(num_steps=30, colour="red"))
        assert response.status_code == 200, response.text
        assert response.headers["x-ignored-fields"] == "num_steps,colour"
        assert recorder.jobs[0].num_inference_steps == 20  # the default, as the hosted API does
        clean = client.post(f"/v1/{MODEL}", json=body(num_inference_steps=30))
        assert clean.status_code == 200 and "x-ignored-fields" not in clean.headers


def test_v2_submit_names_unknown_fields():
    with make_client(RecordingRunner()) as client:
        submitted = client.post(f"/v2/{MODEL}", json=body(num_steps=30))
        assert submitted.status_code == 200, submitted.text
        assert submitted.headers["x-ignored-fields"] == "num_steps"
        assert submitted.json()["ignored_fields"] == ["num_steps"]
        clean = client.post(f"/v2/{MODEL}", json=body())
        assert "ignored_fields" not in clean.json() and "x-ignored-fields" not in clean.headers
        deadline = time.monotonic() + 30
        while client.get(clean.json()["status_url"]).json()["status"] != "COMPLETED":
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_header_encodes_any_name_and_stays_short():
    [value] = ignored_fields_headers(["a,b", "prompt é"]).values()
    assert [unquote(name) for name in value.split(",")] == ["a,b", "prompt é"]
    value.encode("latin-1")
    many = [f"field_{i:04d}" for i in range(500)]
    [value] = ignored_fields_headers(many).values()
    assert len(value) <= MAX_HEADER_CHARS + len(",+500 more")
    named = value.split(",")[:-1]
    assert named == many[: len(named)] and value.endswith(f",+{500 - len(named)} more")
    assert ignored_fields_headers(["x" * 2000]) == {"x-ignored-fields": "+1 more"}


def test_json_body_sent_as_a_form_or_without_content_type_is_json():
    recorder = RecordingRunner()
    raw = json.dumps(body()).encode()
    with make_client(recorder) as client:
        for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
            headers = {"content-type": content_type} if content_type else {}
            for route in (f"/v1/{MODEL}", f"/v2/{MODEL}"):
                response = client.post(route, content=raw, headers=headers)
                assert response.status_code == 200, (content_type, route, response.text)


def test_a_body_that_is_not_json_says_what_was_expected():
    with make_client(RecordingRunner()) as client:
        form = client.post(f"/v1/{MODEL}", data={"prompt": "a house"})
        error = assert_error(form, 400)["error"]
        assert "malformed JSON body" in error and "takes a JSON object" in error
        assert "sent as application/x-www-form-urlencoded" in error
        sent_as_json = client.post(
            f"/v1/{MODEL}", content=b"prompt=x", headers={"content-type": "application/json"}
        )
        error = assert_error(sent_as_json, 400)["error"]
        assert "takes a JSON object" in error and "sent as" not in error
