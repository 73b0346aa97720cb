"""Redis blips cost nothing (gateway/redis_client.py), against a real redis-server: every
client (v2 jobs, credits, limits) rides out a restart; a refund or a slot release that Redis
cannot take even then is settled when it is back; a request during an outage answers 503 with
Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from gateway import redis_client
from gateway.jobs.redis_store import RedisJobStore
from gateway.jobs.store import JobRecord
from gateway.tenancy.api_keys import Tenant
from gateway.tenancy.credits import Credits, RedisCreditLedger
from gateway.tenancy.rate_limits import RateLimits, RedisLimitStore
from settings import Settings
from tests.support.api_key_helpers import (
    SD15,
    SD15_DEFAULT_COST,
    entry,
    headers,
    make_client,
    sd15_body,
    write_keys,
)
from tests.support.helpers import RecordingRunner, assert_error, free_port, wait_until
from tests.support.redis_server import redis_server

pytestmark = pytest.mark.slow  # restarts a real redis-server, again and again

DOWN_S = 3.0  # longer than redis-py's default retries ride out (about 2 s)


def record(job_id: str) -> JobRecord:
    return JobRecord(
        id=job_id, model=SD15, payload="{}", as_base64=False, media_type="image/jpeg",
        base_url="http://x", submitted_at=time.time(), owner="team-a",
    )  # fmt: skip


_restarts: list[threading.Thread] = []


def restart_later(server, down_s: float) -> threading.Thread:
    """Start `server` again after `down_s` seconds, from another thread."""

    def start() -> None:
        time.sleep(down_s)
        server.start()

    thread = threading.Thread(target=start)
    thread.start()
    _restarts.append(thread)
    return thread


@contextlib.contextmanager
def redis_with_restarts(directory) -> Iterator:
    """A redis-server (append-only file on) that restart_later may restart: whatever happens
    in the test, pending restarts are done before it is stopped, so none outlives the test."""
    with redis_server(directory, appendonly=True) as server:
        try:
            yield server
        finally:
            while _restarts:
                _restarts.pop().join()


@pytest.mark.parametrize("kill", [True, False], ids=["kill -9", "shutdown"])
def test_every_redis_client_rides_out_a_restart(tmp_path, kill):
    async def scenario(url: str, server) -> None:
        store = RedisJobStore(url, max_queued=10, retention_s=60, visibility_timeout_s=5)
        ledger = RedisCreditLedger(url)
        limits = RedisLimitStore(url)
        # Each client has a pooled connection, which the restart kills.
        await store.submit(record("before"))
        assert await ledger.spend("team-a", 100, 10) == (True, 90)
        assert await limits.acquire_slot("team-a", "s1", 4, 60)
        if kill:
            server.kill()
        else:
            # From a client of its own, as an operator would: the store's own client would
            # retry SHUTDOWN's dropped connection until its budget ran out, and take Redis for
            # known to be down (gateway/redis_client.py `Outage`).
            redis.Redis.from_url(url).shutdown(nosave=True)
        restarting = restart_later(server, DOWN_S)
        # Sent while Redis is down: each waits for it and succeeds.
        started = time.monotonic()
        await store.submit(record("during"))
        assert time.monotonic() - started >= DOWN_S / 2  # it did wait for the restart
        assert await ledger.spend("team-a", 100, 10) == (True, 80)
        assert await limits.acquire_slot("team-a", "s2", 4, 60)
        await limits.release_slot("team-a", "s1")
        await limits.release_slot("team-a", "s2")
        taken = [await store.take("w", timeout_s=1) for _ in range(2)]
        assert [job.id for job in taken] == ["before", "during"]
        assert await store.client.zcard("depthid:limits:slots:team-a") == 0
        await asyncio.to_thread(restarting.join)
        for client in (store, ledger, limits):
            await client.close()

    with redis_with_restarts(tmp_path) as server:
        asyncio.run(scenario(server.url, server))


def test_refunds_and_slot_releases_during_a_long_outage_are_settled_when_redis_is_back(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(redis_client, "SETTLE_RETRY_PERIOD_S", 0.2)
    tenant = Tenant(name="team-a", models=None, credits=100, requests_per_minute=0,
                    concurrent_jobs=1)  # fmt: skip

    async def scenario(url: str, server) -> None:
        # Retries for 0.3 s only: the outage outlasts them.
        limits = RateLimits(RedisLimitStore(url, retry_s=0.3), Settings())
        credits = Credits(RedisCreditLedger(url, retry_s=0.3))
        await limits.acquire_slot(tenant, "job-1", ttl_s=60)  # queued: the job keeps its slot
        assert (await credits.ledger.spend("team-a", 100, 30)) == (True, 70)
        server.kill()
        # The job fails while Redis is down: neither its refund nor its release raises...
        await credits.refund("team-a", 30)
        await limits.release_slot("team-a", "job-1")
        # ...and once Redis is back (its AOF kept the charge and the slot), both happen.
        await asyncio.to_thread(server.start)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            await credits.ledger.spent("team-a")
            or await limits.store.client.zcard("depthid:limits:slots:team-a")
        ):
            await asyncio.sleep(0.1)
        assert await credits.ledger.spent("team-a") == 0
        await limits.acquire_slot(tenant, "job-2", ttl_s=60)  # the one slot is free again
        await limits.close()
        await credits.close()

    with redis_with_restarts(tmp_path) as server:
        asyncio.run(scenario(server.url, server))


def test_requests_during_a_redis_outage_answer_503_with_retry_after(tmp_path):
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    keys = write_keys(tmp_path, entry("team-a", credits=1000))
    overrides = {"job_store_url": dead_redis, "redis_retry_s": 0.2, "store_retry_after_s": 7}
    with make_client(None, **overrides) as client:
        response = client.post(f"/v2/{SD15}", json=sd15_body())
        assert_error(response, 503)
        assert response.headers["retry-after"] == "7"
        assert_error(client.get("/v2/requests/0123/status"), 503)
    with make_client(keys, **overrides) as client:  # keys on: limits and credits on Redis
        for route in (f"/v1/{SD15}", f"/v2/{SD15}"):
            response = client.post(route, json=sd15_body(), headers=headers("team-a"))
            assert_error(response, 503)
            assert response.headers["retry-after"] == "7"


def test_retries_cover_the_budget():
    for budget in (0.0, 0.3, 2.0, 10.0, 30.0):
        retries = redis_client.retries_for(budget)
        waited = sum(
            min(redis_client.BACKOFF_CAP_S, redis_client.BACKOFF_BASE_S * 2**i)
            for i in range(retries)
        )
        assert waited >= budget


class SlowRunner(RecordingRunner):
    """Takes a moment, so that jobs are in every state when Redis goes down."""

    async def __call__(self, jobs):
        await asyncio.sleep(0.1)
        return await super().__call__(jobs)


def test_no_slot_leak_and_no_charge_without_answer_across_repeated_redis_restarts(tmp_path):
    """v2 submits and jobs of a key with credits and 4 concurrent jobs, while Redis is killed
    (SIGKILL) and shut down in turn, four times. Every submit answers (200, 429 or 503); at the
    end every accepted job has ended, the key has spent exactly the cost of those that
    COMPLETED, and it holds no concurrency slot."""
    keys = write_keys(
        tmp_path, entry("team-a", credits=1_000_000, concurrent_jobs=4, requests_per_minute=0)
    )
    with redis_with_restarts(tmp_path) as server:
        overrides = {"job_store_url": server.url}
        with make_client(keys, {SD15: SlowRunner()}, **overrides) as client:
            accepted, answers = [], []

            def submit():
                return client.post(f"/v2/{SD15}", json=sd15_body(), headers=headers("team-a"))

            for outage in range(4):
                stop_at = time.monotonic() + 2.0
                while time.monotonic() < stop_at:  # Redis up: fill the key's slots
                    response = client.post(
                        f"/v2/{SD15}", json=sd15_body(), headers=headers("team-a")
                    )
                    answers.append(response.status_code)
                    if response.status_code == 200:
                        accepted.append(response.json()["request_id"])
                if outage % 2 == 0:
                    server.kill()
                else:
                    redis.Redis.from_url(server.url).shutdown(nosave=True)
                restarting = restart_later(server, 1.0)
                for _ in range(3):  # sent while Redis is down: they wait for it, or 503
                    response = client.post(
                        f"/v2/{SD15}", json=sd15_body(), headers=headers("team-a")
                    )
                    answers.append(response.status_code)
                    if response.status_code == 200:
                        accepted.append(response.json()["request_id"])
                restarting.join()

            def all_ended() -> bool:
                found = [
                    client.get(f"/v2/requests/{i}/status", headers=headers("team-a")).json()
                    for i in accepted
                ]
                return all(body.get("status") in ("COMPLETED", "FAILED") for body in found)

            assert wait_until(all_ended, 60)
            raw = redis.Redis.from_url(server.url)
            assert wait_until(lambda: raw.zcard("depthid:limits:slots:team-a") == 0, 10)
            completed = sum(
                client.get(f"/v2/requests/{i}/status", headers=headers("team-a")).json()["status"]
                == "COMPLETED"
                for i in accepted
            )
            spent = int(raw.get("depthid:credits:spent:team-a") or 0)
    assert set(answers) <= {200, 429, 503}, answers
    assert accepted and completed
    assert spent == completed * SD15_DEFAULT_COST
