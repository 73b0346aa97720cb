"""`python -m gateway.tenancy.api_keys add` / `check`, and the Gateway's start-up line about
keys."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import stat

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.tenancy.api_keys import main
from settings import Settings
from tests.support.api_key_helpers import SD15, entry, make_client, sd15_body, write_keys
from tests.support.helpers import RecordingRunner


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def key_in(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("did_"))


def test_add_creates_then_appends_and_the_keys_are_served(tmp_path):
    path = tmp_path / "keys" / "api-keys.json"
    path.parent.mkdir()
    code, out, _ = run_cli("add", "--file", str(path), "--name", "team-a", "--credits", "40")
    assert code == 0 and "(1 keys)" in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    code, out_b, _ = run_cli("add", "--file", str(path), "--name", "team-b", "--models", SD15)
    assert code == 0 and "(2 keys)" in out_b
    names = [item["name"] for item in json.loads(path.read_text())["keys"]]
    assert names == ["team-a", "team-b"]
    assert run_cli("check", "--file", str(path))[:2] == (0, f"{path}: ok, 2 keys\n")

    with make_client(path, {SD15: RecordingRunner()}) as client:
        for key in (key_in(out), key_in(out_b)):
            answer = client.post(f"/v1/{SD15}", json=sd15_body(), headers={"x-api-key": key})
            assert answer.status_code == 200, answer.text


def test_add_refuses_what_the_gateway_would_refuse_and_leaves_the_file(tmp_path):
    path = write_keys(tmp_path, entry("team-a"))
    before = path.read_text()
    code, out, err = run_cli("add", "--file", str(path), "--name", "team-a")
    assert code == 1 and out == ""
    assert "the same name twice: ['team-a']" in err and "unchanged" in err
    assert path.read_text() == before
    broken = '{"keys": [{"name": "x", "sha256": "abc"}]}'
    path.write_text(broken)
    code, _, err = run_cli("add", "--file", str(path), "--name", "team-b")
    assert code == 1 and "keys.0.sha256" in err
    assert path.read_text() == broken


def test_check_names_the_problem(tmp_path):
    path = write_keys(tmp_path, entry("team-a", modles=[SD15]))
    code, out, err = run_cli("check", "--file", str(path))
    assert code == 1 and out == "" and "keys.0.modles" in err
    code, _, err = run_cli("check", "--file", str(tmp_path / "absent.json"))
    assert code == 1 and "cannot be read" in err


def test_the_gateway_says_at_start_whether_keys_are_on(tmp_path, caplog):
    path = write_keys(tmp_path, entry("team-a"), entry("team-b"))
    caplog.set_level(logging.INFO, logger="gateway.app")
    with TestClient(create_app(Settings(api_keys_file=path), runners={})):
        pass
    with TestClient(create_app(Settings(), runners={})):
        pass
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("API keys")]
    assert lines[0] == f"API keys: on, 2 keys ({path})"
    assert lines[1].startswith("API keys: off")
