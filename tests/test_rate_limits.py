"""Per-key limits, in process: the request rate (GCRA, exact `Retry-After`) and concurrent jobs
(v1 running + v2 unfinished), each 429 exactly when it should, per key, in memory and shared by
two app instances on one Redis; keys off means no per-key limits."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from gateway import metrics
from gateway.tenancy.rate_limits import MemoryLimitStore, RedisLimitStore
from protocol.jobs import JobFailure
from tests.api_key_helpers import (
    SD15,
    HeldRunner,
    entry,
    headers,
    make_client,
    sd15_body,
    status_of,
    write_keys,
)
from tests.helpers import assert_error, b64, wait_until

V1, V2 = f"/v1/{SD15}", f"/v2/{SD15}"


@pytest.fixture
def limited(monkeypatch) -> list[str]:
    """The reasons of every count_rate_limited call."""
    calls: list[str] = []
    monkeypatch.setattr(metrics, "count_rate_limited", calls.append)
    return calls


# --- the request rate, on its own -----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_gcra_allows_a_burst_then_one_per_interval_and_retry_after_is_exact():
    clock = Clock()
    store = MemoryLimitStore(clock=clock)

    async def scenario() -> None:
        for _ in range(3):  # 3 per minute: a burst of 3, then one every 20 s
            assert await store.take_request("a", 3) == 0
        assert await store.take_request("b", 3) == 0  # every key counts on its own
        wait = await store.take_request("a", 3)
        assert wait == 20.0
        clock.now += wait - 0.001
        assert 0 < await store.take_request("a", 3) <= 0.001  # refusals are not counted
        clock.now += 0.001
        assert await store.take_request("a", 3) == 0  # exactly when it said
        assert await store.take_request("a", 3) == 20.0
        clock.now += 60  # a quiet minute refills the whole burst, no more
        assert [await store.take_request("a", 3) for _ in range(4)] == [0, 0, 0, 20.0]
        # A rate that does not divide a minute still allows its full burst.
        assert [await store.take_request("c", 7) == 0 for _ in range(8)] == [True] * 7 + [False]

    asyncio.run(scenario())


def test_gcra_on_redis_keeps_its_word(redis_url):
    redis.Redis.from_url(redis_url).flushall()

    async def scenario() -> None:
        store = RedisLimitStore(redis_url)
        for _ in range(60):
            assert await store.take_request("a", 60) == 0
        wait = await store.take_request("a", 60)
        assert 0 < wait <= 1.0
        await asyncio.sleep(wait)
        assert await store.take_request("a", 60) == 0
        assert 0.9 < await store.take_request("a", 60) <= 1.0
        await store.close()

    asyncio.run(scenario())


# --- the request rate, over HTTP ------------------------------------------------------------


def test_rate_limit_is_429_with_retry_after_per_key(tmp_path, limited):
    keys = write_keys(
        tmp_path,
        entry("slow", requests_per_minute=2),
        entry("default"),
        entry("off", requests_per_minute=0),
    )
    with make_client(keys, key_requests_per_minute=5) as client:
        bad = client.post(V1, json=sd15_body(num_inference_steps=5), headers=headers("slow"))
        assert_error(bad, 400)  # counted: the rate is checked before the body
        submitted = client.post(V2, json=sd15_body(), headers=headers("slow"))
        assert submitted.status_code == 200
        refused = client.post(V1, json=sd15_body(), headers=headers("slow"))
        assert "per minute" in assert_error(refused, 429)["error"]
        # 2 per minute: the next is let through 30 s after the first.
        assert 25 <= int(refused.headers["retry-after"]) <= 30
        assert limited == ["rate"]
        # Polls are not counted.
        status_url = f"/v2/requests/{submitted.json()['request_id']}/status"
        for _ in range(5):
            assert client.get(status_url, headers=headers("slow")).status_code == 200
        # Keys without their own limit get the setting's; 0 is no limit.
        default = [
            client.post(V1, json=sd15_body(), headers=headers("default")).status_code
            for _ in range(6)
        ]
        assert default == [200] * 5 + [429]
        off = [
            client.post(V1, json=sd15_body(), headers=headers("off")).status_code for _ in range(8)
        ]
        assert off == [200] * 8


def test_rate_limit_is_shared_by_two_instances_on_one_redis(tmp_path, redis_url, limited):
    redis.Redis.from_url(redis_url).flushall()
    keys = write_keys(tmp_path, entry("team-a", requests_per_minute=3))
    first = make_client(keys, job_store_url=redis_url)
    second = make_client(keys, job_store_url=redis_url)
    with first, second:
        for client in (first, second, first):
            assert client.post(V1, json=sd15_body(), headers=headers("team-a")).status_code == 200
        for client in (second, first):
            refused = client.post(V2, json=sd15_body(), headers=headers("team-a"))
            assert_error(refused, 429)
            assert 15 <= int(refused.headers["retry-after"]) <= 20
    assert limited == ["rate", "rate"]


def test_keys_off_means_no_per_key_limits():
    runner = HeldRunner()
    runner.release.set()
    with make_client(None, {SD15: runner}, key_requests_per_minute=1, key_concurrent_jobs=1) as c:
        assert [c.post(V2, json=sd15_body()).status_code for _ in range(4)] == [200] * 4
        assert [c.post(V1, json=sd15_body()).status_code for _ in range(4)] == [200] * 4


# --- concurrent jobs ------------------------------------------------------------------------


def test_v1_generations_in_flight_count_against_the_limit(tmp_path, limited):
    runner = HeldRunner()
    keys = write_keys(tmp_path, entry("team-a", concurrent_jobs=1), entry("team-b"))
    with (
        make_client(keys, {SD15: runner}, concurrency_retry_after_s=7) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        held = pool.submit(client.post, V1, json=sd15_body(), headers=headers("team-a"))
        assert runner.started.wait(10)
        for path in (V1, V2):
            refused = client.post(path, json=sd15_body(), headers=headers("team-a"))
            assert "at once" in assert_error(refused, 429)["error"]
            assert refused.headers["retry-after"] == "7"
        assert limited == ["concurrency", "concurrency"]
        runner.release.set()
        assert client.post(V1, json=sd15_body(), headers=headers("team-b")).status_code == 200
        assert held.result(10).status_code == 200
        assert client.post(V1, json=sd15_body(), headers=headers("team-a")).status_code == 200


@pytest.mark.parametrize("failure", [None, JobFailure(kind="blocked", message="blocked")])
def test_unfinished_v2_jobs_count_until_they_finish(tmp_path, backend, failure, limited):
    runner = HeldRunner(failure=failure)
    keys = write_keys(tmp_path, entry("team-a", concurrent_jobs=2))
    with make_client(keys, {SD15: runner}, **backend) as client:
        ids = [
            client.post(V2, json=sd15_body(), headers=headers("team-a")).json()["request_id"]
            for _ in range(2)
        ]  # one PROCESSING, one QUEUED: both count
        for path in (V2, V1):
            assert_error(client.post(path, json=sd15_body(), headers=headers("team-a")), 429)
        runner.release.set()
        final = "FAILED" if failure else "COMPLETED"
        for request_id in ids:
            assert wait_until(lambda r=request_id: status_of(client, r, "team-a") == final, 10)
        for _ in range(2):  # both slots are free again
            assert client.post(V2, json=sd15_body(), headers=headers("team-a")).status_code == 200
        assert limited == ["concurrency", "concurrency"]


def test_concurrent_jobs_are_counted_across_two_instances_on_one_redis(tmp_path, redis_url):
    redis.Redis.from_url(redis_url).flushall()
    runner = HeldRunner()
    keys = write_keys(tmp_path, entry("team-a", concurrent_jobs=1))
    first = make_client(keys, {SD15: runner}, job_store_url=redis_url)
    second = make_client(keys, {SD15: runner}, job_store_url=redis_url)
    with first, second:
        submitted = first.post(V2, json=sd15_body(), headers=headers("team-a")).json()
        assert_error(second.post(V2, json=sd15_body(), headers=headers("team-a")), 429)
        assert_error(second.post(V1, json=sd15_body(), headers=headers("team-a")), 429)
        runner.release.set()
        request_id = submitted["request_id"]
        assert wait_until(lambda: status_of(second, request_id, "team-a") == "COMPLETED", 10)
        assert second.post(V1, json=sd15_body(), headers=headers("team-a")).status_code == 200


def test_a_request_refused_after_taking_a_slot_gives_it_back(tmp_path, backend):
    keys = write_keys(tmp_path, entry("team-a", concurrent_jobs=1, credits=20))
    with make_client(keys, **backend) as client:
        bad_image = sd15_body(image=b64(b"not an image"))
        assert_error(client.post(V1, json=bad_image, headers=headers("team-a")), 400)
        assert_error(client.post(V2, json=bad_image, headers=headers("team-a")), 400)
        too_dear = sd15_body(samples=2)  # 40 credits, 20 left
        assert_error(client.post(V1, json=too_dear, headers=headers("team-a")), 406)
        assert_error(client.post(V2, json=too_dear, headers=headers("team-a")), 406)
        ok = client.post(V1, json=sd15_body(), headers=headers("team-a"))
        assert ok.status_code == 200 and ok.headers["x-remaining-credits"] == "0"


def test_a_full_queue_is_counted_as_queue(limited):
    runner = HeldRunner()
    with make_client(None, {SD15: runner}, job_queue_max=1) as client:
        client.post(V2, json=sd15_body())
        assert runner.started.wait(10)
        client.post(V2, json=sd15_body())  # waits in the queue
        refused = client.post(V2, json=sd15_body())
        assert_error(refused, 429)
        assert limited == ["queue"]
        runner.release.set()
