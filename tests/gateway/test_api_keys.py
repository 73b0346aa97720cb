"""API keys, in process: 401 and 403 exactly when they should, open routes, each key seeing
only its own v2 jobs (memory and Redis), the keys file's start-up errors, and the CLI."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging

import pytest

from gateway.app import create_app
from gateway.tenancy.api_keys import ApiKeysFileError, main
from settings import Settings
from tests.support.api_key_helpers import (
    FLUX,
    SD15,
    entry,
    flux_body,
    headers,
    key_of,
    make_client,
    sd15_body,
    status_of,
    write_keys,
)
from tests.support.helpers import RecordingRunner, assert_error, wait_until


def test_keys_are_off_by_default():
    assert Settings().api_keys_file is None
    recorder = RecordingRunner()
    with make_client(None, {SD15: recorder}) as client:
        assert client.post(f"/v1/{SD15}", json=sd15_body()).status_code == 200
        submitted = client.post(f"/v2/{SD15}", json=sd15_body())
        assert submitted.status_code == 200
        assert "x-remaining-credits" not in submitted.headers


@pytest.mark.parametrize(
    "sent",
    [{}, {"x-api-key": ""}, {"x-api-key": "did_not-a-known-key"}],
    ids=["none", "empty", "unknown"],
)
def test_missing_or_unknown_key_is_401_before_anything_else(tmp_path, sent):
    recorder = RecordingRunner()
    keys = write_keys(tmp_path, entry("team-a"))
    with make_client(keys, {SD15: recorder}) as client:
        for path in (f"/v1/{SD15}", f"/v2/{SD15}"):
            assert_error(client.post(path, json=sd15_body(), headers=sent), 401)
            # The key is checked before the body: a bad field is still a 401.
            bad = sd15_body(num_inference_steps=5)
            assert_error(client.post(path, json=bad, headers=sent), 401)
        for path in ("/status", "", "/output/0"):
            assert_error(client.get(f"/v2/requests/abc{path}", headers=sent), 401)
        assert recorder.jobs == []


def test_known_key_is_served(tmp_path):
    keys = write_keys(tmp_path, entry("team-a"))
    with make_client(keys) as client:
        answer = client.post(f"/v1/{SD15}", json=sd15_body(), headers=headers("team-a"))
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"


def test_a_key_limited_to_some_models_is_403_on_the_others(tmp_path):
    sd15, flux = RecordingRunner(), RecordingRunner()
    keys = write_keys(tmp_path, entry("sd-only", models=[SD15]), entry("all"))
    with make_client(keys, {SD15: sd15, FLUX: flux}) as client:
        for path in (f"/v1/{FLUX}", f"/v2/{FLUX}"):
            refused = client.post(path, json=flux_body(), headers=headers("sd-only"))
            payload = assert_error(refused, 403)
            assert FLUX in payload["error"] and SD15 in payload["error"]
        assert flux.jobs == []
        ok = client.post(f"/v1/{SD15}", json=sd15_body(), headers=headers("sd-only"))
        assert ok.status_code == 200
        everything = client.post(f"/v1/{FLUX}", json=flux_body(), headers=headers("all"))
        assert everything.status_code == 200 and len(flux.jobs) == 1


def test_docs_and_openapi_stay_open(tmp_path):
    keys = write_keys(tmp_path, entry("team-a"))
    with make_client(keys) as client:
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json")
        assert spec.status_code == 200
        schemes = spec.json()["components"]["securitySchemes"]
        assert any(s.get("name") == "x-api-key" and s["in"] == "header" for s in schemes.values())


def test_each_key_sees_only_its_own_v2_jobs(tmp_path, backend):
    keys = write_keys(tmp_path, entry("team-a"), entry("team-b"))
    with make_client(keys, **backend) as client:
        submitted = client.post(f"/v2/{SD15}", json=sd15_body(), headers=headers("team-a"))
        request_id = submitted.json()["request_id"]
        assert wait_until(lambda: status_of(client, request_id, "team-a") == "COMPLETED", 10)
        for path in ("/status", "", "/output/0"):
            url = f"/v2/requests/{request_id}{path}"
            assert client.get(url, headers=headers("team-a")).status_code == 200
            other = client.get(url, headers=headers("team-b"))
            unknown = client.get(f"/v2/requests/{'f' * 32}{path}", headers=headers("team-b"))
            # Exactly the answer to an unknown id: nothing tells the other key the job exists.
            assert_error(other, 404)
            assert other.json()["error"] == unknown.json()["error"].replace("f" * 32, request_id)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot be read"),
        ("{not json", "not valid JSON"),
        ({"keys": []}, "keys"),
        ([{"name": "a"}], "object"),
        ({"keys": [{"name": "a"}]}, "sha256"),
        ({"keys": [{"name": "a", "sha256": "abc"}]}, "sha256"),
        ({"keys": [{**entry("a"), "models": ["nope"]}]}, "nope"),
        ({"keys": [{**entry("a"), "credit": 5}]}, "credit"),
        ({"keys": [{**entry("a"), "credits": -1}]}, "credits"),
        ({"keys": [{**entry("a"), "name": "two words"}]}, "name"),
        ({"keys": [{**entry("a"), "name": "anonymous"}]}, "reserved"),
        ({"keys": [entry("a"), {**entry("b"), "name": "a"}]}, "the same name twice"),
        ({"keys": [entry("a"), {**entry("a"), "name": "b"}]}, "the same sha256 twice"),
    ],
)
def test_a_bad_keys_file_stops_the_start_with_a_clear_error(tmp_path, content, expected):
    path = tmp_path / "api-keys.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ApiKeysFileError) as error:
        create_app(Settings(api_keys_file=path), runners={})
    assert str(path) in str(error.value) and expected in str(error.value)


def test_the_setting_is_read_from_its_documented_variable(tmp_path, monkeypatch):
    path = write_keys(tmp_path, entry("team-a"))
    monkeypatch.setenv("DEPTHID_API_KEYS_FILE", str(path))
    assert Settings().api_keys_file == path


def test_keys_never_reach_the_logs(tmp_path, caplog):
    keys = write_keys(tmp_path, entry("team-a"))
    caplog.set_level(logging.DEBUG)
    with make_client(keys) as client:
        client.post(f"/v1/{SD15}", json=sd15_body(), headers=headers("team-a"))
        client.post(f"/v1/{SD15}", json=sd15_body(), headers={"x-api-key": "did_wrong-secret"})
        refused = client.post(f"/v1/{SD15}", json={}, headers={"x-api-key": "did_wrong-secret"})
    assert "did_wrong-secret" not in refused.text
    assert caplog.records  # the requests were logged; the keys were not
    assert key_of("team-a") not in caplog.text and "did_wrong-secret" not in caplog.text


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_cli_makes_a_key_that_its_entry_admits(tmp_path):
    code, out, _ = run_cli("new", "--name", "team-a", "--models", SD15, "--credits", "40")
    assert code == 0
    lines = out.splitlines()
    key = next(line for line in lines if line.startswith("did_"))
    new_entry = json.loads(next(line for line in lines if line.startswith("{")))
    # Its webhook signing secret is shown once too, and is in the entry (the Gateway signs).
    [secret] = [word for line in lines for word in line.split() if word.startswith("whsec_")]
    assert new_entry == {
        "name": "team-a",
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "webhook_secret": secret,
        "models": [SD15],
        "credits": 40,
    }
    assert len(key) >= 40  # 32 random bytes, url-safe base64, after the prefix
    assert run_cli("new", "--name", "team-a")[1] != out  # a fresh key every time

    sd15, flux = RecordingRunner(), RecordingRunner()
    with make_client(write_keys(tmp_path, new_entry), {SD15: sd15, FLUX: flux}) as client:
        answer = client.post(f"/v1/{SD15}", json=sd15_body(), headers={"x-api-key": key})
        assert answer.status_code == 200 and answer.headers["x-remaining-credits"] == "20"
        assert_error(client.post(f"/v1/{FLUX}", json=flux_body(), headers={"x-api-key": key}), 403)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--name", "bad name"], "--name"),
        (["--name", "a", "--models", "nope"], "--models"),
        (["--name", "a", "--credits", "-3"], "--credits"),
    ],
)
def test_cli_refuses_what_the_file_would_refuse(args, option):
    code, out, err = run_cli("new", *args)
    assert code == 2 and out == "" and option in err
