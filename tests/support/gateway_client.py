"""The Gateway's FastAPI app in this process (create_app) with runner doubles, behind a TestClient:
what every in-process gateway test drives."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.runner_client import GenerateCall, RunnerClient
from settings import Settings
from tests.support.helpers import RecordingRunner

SD15 = "sd1.5-controlnet-depth"
# For tests that watch v2 jobs: one worker, a job whose worker stopped is taken again after 1 s,
# and leaving the `with` block waits at most 1 s for running jobs.
QUICK_JOBS = {"job_workers": 1, "job_visibility_timeout_s": 1.0, "shutdown_grace_s": 1}


def make_client(
    call: GenerateCall | None = None,
    models: Iterable[str] = (SD15,),
    *,
    runners: dict[str, GenerateCall] | None = None,
    deadline_s: float = 30.0,
    quick_jobs: bool = False,
    **overrides: Any,
) -> TestClient:
    """An app serving each of `models` through `call` (default: a RecordingRunner), or each model
    of `runners` through its own call; `overrides` are Settings fields (after QUICK_JOBS when
    `quick_jobs`). Use it as `with make_client(...) as client` where the v2 worker must run (the
    app's lifespan starts it). A server error is answered as the client would see it (a 500),
    not raised."""
    if runners is None:
        runners = dict.fromkeys(models, call if call is not None else RecordingRunner())
    settings = Settings(**{**(QUICK_JOBS if quick_jobs else {}), **overrides})
    clients = {model: RunnerClient(model, each, deadline_s) for model, each in runners.items()}
    return TestClient(create_app(settings, runners=clients), raise_server_exceptions=False)
