"""Structured logs (log_format.py): one JSON object per line, each naming the request it was
written for; in process through the app and the v2 worker, in a process where BentoML has
configured its logging, and on the served Gateway's own output."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry import baggage, propagate
from opentelemetry import context as otel_context

import log_format
from gateway.app import create_app
from gateway.runner_client import RunnerClient
from log_format import JsonFormatter, request_id_var
from settings import PROJECT_ROOT, Settings
from tests.support.helpers import RecordingRunner, b64, scene_image, wait_until
from tests.support.jobs import sd15_job

MODEL = "sd1.5-controlnet-depth"


def body(**fields: object) -> dict:
    return {"image": b64(scene_image(96, 64)), "prompt": "a house", **fields}


async def broken(jobs: list) -> list:
    raise RuntimeError("the runner broke")


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the gateway logs meanwhile, formatted as served (JsonFormatter)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    gateway_logger = logging.getLogger("gateway")
    gateway_logger.addHandler(handler)
    try:
        yield stream
    finally:
        gateway_logger.removeHandler(handler)


def parsed(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_has_time_level_logger_message_and_request_id() -> None:
    record = logging.LogRecord("gateway.x", logging.WARNING, __file__, 1, "hi %s", ("you",), None)
    token = request_id_var.set("abc-1")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["message"] == "hi you"
    assert (line["level"], line["logger"], line["request_id"]) == ("WARNING", "gateway.x", "abc-1")
    assert line["time"].endswith("+00:00")
    assert "exception" not in line


def test_every_line_of_a_request_names_it(json_lines: io.StringIO) -> None:
    app = create_app(Settings(), runners={MODEL: RunnerClient("sd15", broken, 30)})
    client = TestClient(app, raise_server_exceptions=False)
    response = client.post(f"/v1/{MODEL}", json=body(), headers={"x-request-id": "trace-me-1"})
    assert response.status_code == 500
    lines = parsed(json_lines)
    assert lines  # the fault was logged
    assert {line["request_id"] for line in lines} == {"trace-me-1"}
    assert "the runner broke" in lines[-1]["exception"]  # the trace is in the log only
    assert "the runner broke" not in response.text
    assert request_id_var.get() is None  # nothing left behind for the next request


def test_v2_worker_lines_name_the_jobs_request_id(json_lines: io.StringIO) -> None:
    app = create_app(Settings(), runners={MODEL: RunnerClient("sd15", broken, 30)})
    with TestClient(app, raise_server_exceptions=False) as client:
        request_id = client.post(f"/v2/{MODEL}", json=body()).json()["request_id"]
        status_url = f"/v2/requests/{request_id}/status"
        assert wait_until(lambda: client.get(status_url).json()["status"] == "FAILED", 10)
    job_lines = [line for line in parsed(json_lines) if "failed" in line["message"]]
    assert job_lines and all(line["request_id"] == request_id for line in job_lines)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )


# In a fresh process, as a BentoML worker does: BentoML configures its logging first, then
# imports the service (whose import calls configure_logging).
UNDER_BENTOML = """
import logging, warnings
from bentoml._internal.log import configure_server_logging
configure_server_logging()
from log_format import configure_logging, request_id_var
configure_logging("{log_format}")
request_id_var.set("sub-1")
logging.getLogger("gateway.jobs.worker").info("our line %s", 1)
logging.getLogger("bentoml.access").info("127.0.0.1:5 (path=/v1) (status=200) 3ms")
warnings.warn("a library warning")
"""


def test_under_bentoml_every_line_is_json_with_the_request_id() -> None:
    output = run_python(UNDER_BENTOML.format(log_format="json")).stdout
    lines = [json.loads(line) for line in output.splitlines()]
    assert [line["logger"] for line in lines] == [
        "gateway.jobs.worker",
        "bentoml.access",
        "py.warnings",
    ]
    assert lines[0]["message"] == "our line 1" and lines[0]["level"] == "INFO"
    assert {line["request_id"] for line in lines} == {"sub-1"}


def test_text_format_keeps_the_request_id() -> None:
    output = run_python(UNDER_BENTOML.format(log_format="text")).stdout
    lines = [line for line in output.splitlines() if line]  # the warning ends with a newline
    assert len(lines) == 3 and all("[request_id=sub-1]" in line for line in lines)
    assert "INFO gateway.jobs.worker" in lines[0]


def test_outside_bentoml_logging_is_left_alone() -> None:
    code = (
        "import logging; from log_format import configure_logging; configure_logging('json'); "
        "print(len(logging.getLogger().handlers))"
    )
    assert run_python(code).stdout.strip() == "0"


# --- served ---------------------------------------------------------------------------------


@pytest.mark.served
def test_served_lines_are_json_and_name_the_request(
    served_process: tuple[str, subprocess.Popen],
) -> None:
    base_url, process = served_process
    log = Path(os.readlink(f"/proc/{process.pid}/fd/1"))  # the server's stdout
    start = log.stat().st_size
    request_id = f"log-check-{uuid.uuid4().hex[:8]}"
    response = httpx.post(
        f"{base_url}/v1/{MODEL}", json=body(), headers={"x-request-id": request_id}, timeout=120
    )
    assert response.status_code == 200 and response.headers["x-request-id"] == request_id

    def request_lines() -> list[dict]:
        with log.open("rb") as file:
            file.seek(start)
            text = file.read().decode()
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [line for line in lines if line["request_id"] == request_id]

    # The access lines, written last.
    assert wait_until(
        lambda: {line["service"] for line in request_lines()} >= {"gateway", "sd15_depth"}, 10
    )
    time.sleep(0.5)
    lines = request_lines()  # parses every line written meanwhile: all of them are JSON
    access = {line["service"] for line in lines if line["logger"] == "bentoml.access"}
    # The Gateway's access line, and the runner's for the call that ran this request's job.
    assert access == {"gateway", "sd15_depth"}
    assert {line["service"] for line in lines} == {"gateway", "sd15_depth"}


# --- runners ----------------------------------------------------------------------------------


# A runner's scheduler names each call's requests in its lines: tests/runners/test_scheduler.py.


def test_a_runner_call_carries_its_request_ids_to_the_runner() -> None:
    """The call's propagation headers (BentoML's client injects them) hold the ids as baggage,
    and on the runner's side, with that context, every line names them."""
    sent: list[dict[str, str]] = []

    async def runner(jobs: list) -> list:
        headers: dict[str, str] = {}
        propagate.inject(headers)  # what BentoML's client does for each call
        sent.append(headers)
        return await RecordingRunner()(jobs)

    client = RunnerClient("sd15", runner, 30)
    job = sd15_job(request_id="req-7", samples=2)
    asyncio.run(client.generate([job], model=MODEL))
    [headers] = sent
    assert "depthid.request_id=req-7" in headers["baggage"]  # once, though two samples

    received = propagate.extract(headers)  # the runner's BentoML middleware does this
    token = otel_context.attach(received)
    try:
        record = logging.LogRecord("runners.x", logging.INFO, __file__, 1, "hi", (), None)
        assert json.loads(JsonFormatter().format(record))["request_id"] == "req-7"
    finally:
        otel_context.detach(token)
    assert log_format.current_request_id() is None


@pytest.mark.parametrize("carried", ["req-1", "req-1,req-2"])
def test_carried_ids_of_our_shape_are_believed(carried: str) -> None:
    token = otel_context.attach(baggage.set_baggage(log_format.REQUEST_ID_BAGGAGE, carried))
    try:
        assert log_format.current_request_id() == carried
    finally:
        otel_context.detach(token)


@pytest.mark.parametrize("forged", ["", "a b", "x" * 129, "a,,b", "a\nfake line"])
def test_a_forged_baggage_id_is_not(forged: str) -> None:
    token = otel_context.attach(baggage.set_baggage(log_format.REQUEST_ID_BAGGAGE, forged))
    try:
        assert log_format.current_request_id() is None
    finally:
        otel_context.detach(token)
