"""Fixtures of every tier: the tiny models (built once, cached in the model store) and settings,
a redis-server, and the one served instance; a tier's own fixtures are in its conftest.py.

Tests are marked `served` (a real server process: `bentoml serve`, the Gateway on a port) or
`slow` (other long work: bento and image builds, the full store, redis restarts); `make
test-fast` runs the rest (`-m "not served and not slow"`)."""

from __future__ import annotations

import subprocess

import pytest
import redis

from settings import DEFAULT_SAFETY_THRESHOLDS, Settings
from tests.support.redis_server import redis_server
from tests.support.served import serve_process

SERVED_MAX_BODY_BYTES = 1_000_000
# One served instance (`bentoml serve service:Gateway`, every runner), shared by the tests
# that ask for `served_url` or `served_process`.
SERVED_ENV = {
    "DEPTHID_MAX_BODY_BYTES": str(SERVED_MAX_BODY_BYTES),
    # The URL test fetches from a server on loopback, which is refused unless allowed.
    "DEPTHID_URL_ALLOWED_NETWORKS": "127.0.0.0/8",
    # flux-depth-pro: tolerance 1 blocks every image (threshold 0), 2..6 keep their defaults,
    # so the safety checker's decision can be driven from outside the process.
    "DEPTHID_SAFETY_THRESHOLDS": ",".join(str(t) for t in (0.0, *DEFAULT_SAFETY_THRESHOLDS[1:])),
}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A redis-server of the module's own (tests/support/redis_server.py), on a free port."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(params=["memory", "redis"])
def backend(request) -> dict:
    """Settings overrides for each job store: in-process memory, and Redis (emptied first)."""
    if request.param == "memory":
        return {}
    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushall()
    return {"job_store_url": url}


@pytest.fixture(autouse=True)
def quick_worker_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-process app's v2 worker stops within 0.05 s instead of gateway/jobs/worker.py's
    TAKE_WAIT_S (1 s): leaving each `with TestClient(app)` waited for its idle take() to end,
    about a second per test. Served processes keep their own value."""
    from gateway.jobs import worker

    monkeypatch.setattr(worker, "TAKE_WAIT_S", 0.05)


@pytest.fixture(scope="session")
def tiny_settings() -> Settings:
    """The default store with the tiny profile on CPU, its models built if missing."""
    from models.build import build_tiny

    settings = Settings(profile="tiny", device="cpu")
    build_tiny(settings)
    return settings


@pytest.fixture(scope="session")
def served_process(tiny_settings) -> tuple[str, subprocess.Popen]:
    """The one served instance: its base URL and its process (whose stdout is its log)."""
    with serve_process(env=SERVED_ENV) as served:
        yield served


@pytest.fixture(scope="session")
def served_url(served_process) -> str:
    return served_process[0]


SERVED_FIXTURES = {"served_url", "served_process"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on the served instance must be marked `served`, or `make test-fast` would start it."""
    unmarked = [
        item.nodeid
        for item in items
        if SERVED_FIXTURES & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("served") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests on the served instance not marked `served`: " + ", ".join(unmarked)
        )
