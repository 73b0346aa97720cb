"""POST /v2/requests/{id}/cancel on both job stores: a queued job ends CANCELLED at once, a
running one too and its runner is told to stop; credits come back; a finished job is a 409,
another key's a 404; a cancel racing the job's end settles it exactly once."""

from __future__ import annotations

import asyncio
import threading

from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.runner_client import RunnerClient
from settings import Settings
from tests.support.api_key_helpers import (
    SD15,
    SD15_DEFAULT_COST,
    HeldRunner,
    entry,
    headers,
    make_client,
    sd15_body,
    status_of,
    write_keys,
)
from tests.support.gateway_client import QUICK_JOBS
from tests.support.helpers import RecordingRunner, assert_error, wait_until

TEAM = headers("team-a")


def submit(client: TestClient) -> str:
    response = client.post(f"/v2/{SD15}", json=sd15_body(), headers=TEAM)
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def remaining(client: TestClient, request_id: str) -> int:
    answer = client.get(f"/v2/requests/{request_id}", headers=TEAM)
    return int(answer.headers["x-remaining-credits"])


def test_a_queued_job_is_cancelled_at_once_and_refunded(backend, tmp_path):
    runner = HeldRunner()
    keys = write_keys(tmp_path, entry("team-a", credits=1000, concurrent_jobs=2))
    with make_client(keys, {SD15: runner}, **backend) as client:
        running = submit(client)
        assert runner.started.wait(10)
        queued = submit(client)  # one worker: it waits behind the first
        assert status_of(client, queued, "team-a") == "QUEUED"

        cancelled = client.post(f"/v2/requests/{queued}/cancel", headers=TEAM)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json() == {"request_id": queued, "status": "CANCELLED"}
        assert cancelled.headers["x-remaining-credits"] == str(1000 - SD15_DEFAULT_COST)
        assert status_of(client, queued, "team-a") == "CANCELLED"
        # Cancelled twice: the second is a 409, and refunds nothing more.
        again = client.post(f"/v2/requests/{queued}/cancel", headers=TEAM)
        assert "CANCELLED" in assert_error(again, 409)["error"]
        result = client.get(f"/v2/requests/{queued}", headers=TEAM)
        assert result.status_code == 200 and result.json()["status"] == "CANCELLED"
        # Its concurrency slot is free again: a third job fits beside the running one.
        third = submit(client)

        runner.release.set()
        assert wait_until(lambda: status_of(client, third, "team-a") == "COMPLETED", 10)
        assert status_of(client, running, "team-a") == "COMPLETED"
        assert status_of(client, queued, "team-a") == "CANCELLED"
        assert remaining(client, running) == 1000 - 2 * SD15_DEFAULT_COST
    assert len(runner.jobs) == 2  # the cancelled job never ran


class CancellableRunner:
    """A runner that works until told to stop through its cancel API, as the real ones do."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled_tokens: list[str] = []
        self.sent_tokens: list[str] = []

    async def generate(self, jobs):
        self.sent_tokens += [job.token for job in jobs]
        self.started.set()
        await asyncio.sleep(3600)

    async def cancel(self, tokens: list[str]) -> int:
        self.cancelled_tokens += tokens
        return len(tokens)


def test_a_running_job_is_cancelled_and_its_runner_told_to_stop(backend, tmp_path):
    runner = CancellableRunner()
    keys = write_keys(tmp_path, entry("team-a", credits=1000))
    settings = Settings(**QUICK_JOBS, api_keys_file=keys, **backend)
    clients = {SD15: RunnerClient(SD15, runner.generate, 300.0, cancel=runner.cancel)}
    app = create_app(settings, runners=clients)
    with TestClient(app, raise_server_exceptions=False) as client:
        request_id = submit(client)
        assert runner.started.wait(10)
        assert status_of(client, request_id, "team-a") == "PROCESSING"
        cancelled = client.post(f"/v2/requests/{request_id}/cancel", headers=TEAM)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.headers["x-remaining-credits"] == "1000"
        assert wait_until(lambda: runner.cancelled_tokens == runner.sent_tokens, 10)
        assert status_of(client, request_id, "team-a") == "CANCELLED"
        # The worker is free again: the next job runs.
        runner.started.clear()
        submit(client)
        assert runner.started.wait(10)


def test_a_finished_job_is_409_and_another_keys_job_404(backend, tmp_path):
    keys = write_keys(tmp_path, entry("team-a", credits=1000), entry("team-b"))
    with make_client(keys, {SD15: RecordingRunner()}, **backend) as client:
        request_id = submit(client)
        assert wait_until(lambda: status_of(client, request_id, "team-a") == "COMPLETED", 10)
        finished = client.post(f"/v2/requests/{request_id}/cancel", headers=TEAM)
        assert "COMPLETED" in assert_error(finished, 409)["error"]
        assert remaining(client, request_id) == 1000 - SD15_DEFAULT_COST  # no refund
        other = client.post(f"/v2/requests/{request_id}/cancel", headers=headers("team-b"))
        assert_error(other, 404)
        assert_error(client.post("/v2/requests/nope/cancel", headers=TEAM), 404)


def test_a_cancel_racing_the_jobs_end_settles_it_once(backend, tmp_path):
    """Jobs that end as fast as they can, each cancelled at once: every one ends either
    CANCELLED (cancel 200, refunded, no output) or COMPLETED (cancel 409, charged), and the key
    has spent exactly the cost of the completed ones."""
    keys = write_keys(tmp_path, entry("team-a", credits=100_000))
    outcomes: list[tuple[int, str]] = []
    with make_client(keys, {SD15: RecordingRunner()}, **backend) as client:
        ids = []
        for _ in range(12):
            request_id = submit(client)
            ids.append(request_id)
            code = client.post(f"/v2/requests/{request_id}/cancel", headers=TEAM).status_code
            outcomes.append((code, request_id))

        def ended() -> bool:
            return all(status_of(client, i, "team-a") in ("COMPLETED", "CANCELLED") for i in ids)

        assert wait_until(ended, 20)
        completed = 0
        for code, request_id in outcomes:
            status = status_of(client, request_id, "team-a")
            assert (code, status) in ((200, "CANCELLED"), (409, "COMPLETED")), (code, status)
            completed += status == "COMPLETED"
        assert remaining(client, ids[0]) == 100_000 - completed * SD15_DEFAULT_COST
