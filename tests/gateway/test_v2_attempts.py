"""Bounded retries (DEPTHID_JOB_MAX_ATTEMPTS): a v2 job that never ends, because its runner
dies under it every time or the Gateway holding it dies every time, ends FAILED saying so,
with its credits back; on both job stores. (On real processes: tests/e2e/test_v2_jobs_e2e.py.)"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from prometheus_client import REGISTRY

from gateway.jobs.redis_store import RedisJobStore
from gateway.jobs.store import JobRecord
from tests.support.api_key_helpers import (
    SD15,
    entry,
    headers,
    make_client,
    sd15_body,
    status_of,
    write_keys,
)
from tests.support.helpers import RecordingRunner, wait_until


class DyingRunner(RecordingRunner):
    """Every call ends as a runner process killed mid-call does: the connection drops."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def __call__(self, jobs):
        self.calls += 1
        raise aiohttp.ServerDisconnectedError()


def given_up(model: str) -> float:
    return REGISTRY.get_sample_value("depthid_jobs_given_up_total", {"model": model}) or 0.0


def test_a_job_that_kills_its_runner_every_time_fails_after_max_attempts(backend, tmp_path, caplog):
    runner = DyingRunner()
    keys = write_keys(tmp_path, entry("team-a", credits=1000))
    before = given_up(SD15)
    with make_client(keys, {SD15: runner}, job_max_attempts=3, **backend) as client:
        submitted = client.post(f"/v2/{SD15}", json=sd15_body(), headers=headers("team-a"))
        assert submitted.status_code == 200, submitted.text
        request_id = submitted.json()["request_id"]
        assert submitted.headers["x-remaining-credits"] == "980"
        assert wait_until(lambda: status_of(client, request_id, "team-a") == "FAILED", 30)
        status = client.get(f"/v2/requests/{request_id}/status", headers=headers("team-a"))
        assert status.status_code == 422
        assert "started 3 times and never ended" in status.json()["error"]
        final = client.get(f"/v2/requests/{request_id}", headers=headers("team-a"))
        assert final.headers["x-remaining-credits"] == "1000"  # refunded
    assert runner.calls == 3  # three attempts, no fourth
    assert given_up(SD15) == before + 1
    assert any("given up: taken 3 times" in r.getMessage() for r in caplog.records)


def test_a_job_whose_gateway_dies_every_time_fails_at_its_next_take(redis_url, recorder):
    """Three workers take the job and die holding it (their leases lapse, the reaper requeues
    it); the worker that takes it a fourth time fails it instead of running it."""
    import redis

    redis.Redis.from_url(redis_url).flushall()

    async def take_and_die_three_times() -> str:
        store = RedisJobStore(redis_url, max_queued=10, retention_s=60, visibility_timeout_s=0.2)
        record = JobRecord(
            id="doomed", model=SD15, payload="{}", as_base64=False, media_type="image/jpeg",
            base_url="http://x", submitted_at=time.time(),
        )  # fmt: skip
        await store.submit(record)
        for attempt in range(1, 4):
            taken = await store.take(f"dead-{attempt}", timeout_s=1)
            assert taken.attempts == attempt
            await asyncio.sleep(0.3)
            assert await store.requeue_expired() == 1
        await store.close()
        return record.id

    request_id = asyncio.run(take_and_die_three_times())
    with make_client(None, {SD15: recorder}, job_store_url=redis_url, job_max_attempts=3) as client:
        assert wait_until(lambda: status_of(client, request_id, "x") == "FAILED", 10)
        error = client.get(f"/v2/requests/{request_id}/status").json()["error"]
        assert "started 3 times and never ended" in error
    assert recorder.jobs == []  # never run a fourth time
