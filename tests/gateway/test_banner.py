"""The Gateway's ready banner (gateway/banner.py): its text, and that it comes once every
runner is ready, with a progress line while they load."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from fastapi.testclient import TestClient

from gateway import banner
from gateway.app import create_app
from gateway.runner_client import RunnerClient
from settings import Settings
from tests.support.helpers import RecordingRunner, wait_until


def test_tiny_banner_says_where_what_and_that_outputs_are_noise():
    text = banner.ready_banner(Settings(profile="tiny", device="cpu", port=3123), keys=None)
    assert text.startswith("DepthID is ready: http://127.0.0.1:3123\n")
    assert "docs:     http://127.0.0.1:3123/docs" in text
    assert "profile:  tiny" in text and "device:   cpu" in text and "API keys: off" in text
    assert "noise, by design" in text and "DEPTHID_PROFILE=full" in text and "make pull" in text


def test_full_banner_names_keys_and_the_public_url():
    settings = Settings(profile="full", device="auto", public_base_url="https://api.example.com/")
    text = banner.ready_banner(settings, keys=3)
    assert text.startswith("DepthID is ready: https://api.example.com\n")
    assert "profile:  full" in text and "API keys: on, 3 keys" in text
    assert "device:   auto" in text and "noise" not in text


def test_the_banner_waits_for_every_runner_and_reports_progress(caplog, monkeypatch):
    monkeypatch.setattr(banner, "READY_POLL_S", 0.01)
    monkeypatch.setattr(banner, "PROGRESS_EVERY_S", 0.0)
    probes = {"n": 0}

    async def slow_ready() -> bool:
        probes["n"] += 1
        if probes["n"] < 4:
            raise TimeoutError  # the client logs "runner ... not ready": replaced meanwhile
        return True

    runners = {
        "a": RunnerClient("sd15_depth", RecordingRunner(), 5.0),
        "b": RunnerClient("instantid", RecordingRunner(), 5.0, ready=slow_ready),
    }
    caplog.set_level(logging.INFO)
    asyncio.run(banner.announce_when_ready(runners, Settings(), keys=None))
    messages = [record.getMessage() for record in caplog.records]
    assert messages[-1].startswith("DepthID is ready")
    assert sum(m.startswith("DepthID is ready") for m in messages) == 1
    assert "waiting for the runners to load their models: instantid (0 s)" in messages
    assert not any("not ready" in m for m in messages)
    # Once ready, the runner client's own lines are back.
    runners["b"] = RunnerClient("flux_depth", RecordingRunner(), 5.0, ready=_refuse)
    asyncio.run(runners["b"].is_ready())
    assert "runner flux_depth not ready: ConnectionError" in caplog.records[-1].getMessage()


async def _refuse() -> bool:
    raise ConnectionError


def test_the_served_app_logs_the_banner_at_start(caplog):
    caplog.set_level(logging.INFO, logger="gateway.banner")
    runner = RunnerClient("sd15_depth", RecordingRunner(), 5.0)
    app = create_app(Settings(), runners={"sd1.5-controlnet-depth": runner})
    with TestClient(app):
        assert wait_until(lambda: "DepthID is ready" in caplog.text, 10), caplog.text


class _Listening:
    def __init__(self, *addresses: tuple[str, int]) -> None:
        self.addresses = addresses

    def net_connections(self, kind: str) -> list:
        return [
            SimpleNamespace(laddr=SimpleNamespace(ip=ip, port=port), status=psutil.CONN_LISTEN)
            for ip, port in self.addresses
        ]


def test_the_url_is_the_socket_bentoml_gave_this_process(monkeypatch):
    settings = Settings(port=3000)
    monkeypatch.setattr(banner.psutil, "Process", lambda: _Listening(("127.0.0.1", 4321)))
    assert banner.served_url(settings) == "http://127.0.0.1:4321"
    monkeypatch.setattr(banner.psutil, "Process", lambda: _Listening(("0.0.0.0", 4321)))
    assert banner.served_url(settings) == "http://127.0.0.1:4321"
    monkeypatch.setattr(banner.psutil, "Process", lambda: _Listening(("::1", 4321)))
    assert banner.served_url(settings) == "http://[::1]:4321"
    monkeypatch.setattr(banner.psutil, "Process", lambda: _Listening())  # not under BentoML
    assert banner.served_url(settings) == "http://127.0.0.1:3000"
    public = Settings(public_base_url="https://api.example.com")
    assert banner.served_url(public) == "https://api.example.com"


@pytest.mark.served
def test_a_served_gateway_logs_the_banner_with_its_own_url(served_process):
    url, process = served_process
    log = Path(
        f"/proc/{process.pid}/fd/1"
    ).resolve()  # tests/support/served.py: the server's log file
    assert wait_until(lambda: f"DepthID is ready: {url}" in log.read_text(), 30), url
    assert "every image is" in log.read_text()  # tiny: noise, by design
