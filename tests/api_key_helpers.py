"""Shared by the API key, credit and rate-limit tests: keys files, apps with keys, runners."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.runner_client import RunnerClient
from gateway.tenancy.api_keys import hash_key
from settings import Settings
from tests.helpers import RecordingRunner, b64, scene_image

SD15 = "sd1.5-controlnet-depth"
FLUX = "flux-depth-pro"
SD15_DEFAULT_COST = 20  # 1 sample × 20 steps (the schema's default) × 1 credit per step


def entry(name: str, **fields: Any) -> dict:
    """A keys-file entry for the key `key-of-<name>` (see `key_of`)."""
    return {"name": name, "sha256": hash_key(key_of(name)), **fields}


def key_of(name: str) -> str:
    return f"did_test-key-of-{name}"


def headers(name: str) -> dict[str, str]:
    return {"x-api-key": key_of(name)}


def write_keys(directory: Path, *entries: dict) -> Path:
    path = directory / "api-keys.json"
    path.write_text(json.dumps({"keys": list(entries)}))
    return path


def make_client(
    keys_file: Path | None,
    runners: dict[str, Any] | None = None,
    deadline_s: float = 30.0,
    **overrides: Any,
) -> TestClient:
    """An in-process app (as `with make_client(...) as client`, so its worker runs) serving
    `runners` (default: one RecordingRunner for sd1.5-controlnet-depth)."""
    settings = Settings(
        api_keys_file=keys_file, job_workers=1, job_visibility_timeout_s=1.0, shutdown_grace_s=1,
        **overrides,
    )  # fmt: skip
    calls = runners if runners is not None else {SD15: RecordingRunner()}
    clients = {model: RunnerClient(model, call, deadline_s) for model, call in calls.items()}
    return TestClient(create_app(settings, runners=clients), raise_server_exceptions=False)


def sd15_body(**fields: Any) -> dict:
    return {"image": b64(scene_image(96, 64)), "prompt": "a house", **fields}


def flux_body(**fields: Any) -> dict:
    return {"control_image": b64(scene_image(96, 64)), "prompt": "a house", **fields}


class HeldRunner(RecordingRunner):
    """A RecordingRunner that holds every call until `release` is set."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = threading.Event()
        self.started = threading.Event()

    async def __call__(self, jobs: list[Any]) -> list[Any]:
        self.started.set()
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        return await super().__call__(jobs)


def status_of(client: TestClient, request_id: str, name: str) -> str:
    return client.get(f"/v2/requests/{request_id}/status", headers=headers(name)).json()["status"]
