"""A finished v2 job drops its inputs: the runner job (images and all, megabytes with photos)
is kept in a field of its own while the job waits or runs, and deleted when it finishes, so a
COMPLETED or FAILED job holds only its result (memory and Redis job stores)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from gateway.app import make_job_store
from gateway.jobs.store import JobRecord
from settings import Settings

INPUTS = '{"image": "' + "A" * 100_000 + '"}'  # stands for a job's base64 images


def record(job_id: str) -> JobRecord:
    return JobRecord(
        id=job_id, model="sd1.5-controlnet-depth", payload=INPUTS, as_base64=False,
        media_type="image/jpeg", base_url="http://x", submitted_at=time.time(),
    )  # fmt: skip


@pytest.mark.parametrize("outcome", ["COMPLETED", "FAILED"])
def test_a_finished_job_holds_only_its_result(backend, outcome):
    settings = Settings(**backend)

    async def scenario() -> None:
        store = make_job_store(settings)
        await store.submit(record("j"))
        taken = await store.take("w", timeout_s=1)
        assert taken.payload == INPUTS  # the worker gets the inputs
        if outcome == "COMPLETED":
            assert await store.complete("j", "w", [b"img"], {"status": outcome})
        else:
            assert await store.fail("j", "w", "boom", {"status": outcome})
        finished = await store.get("j")
        assert finished.status == outcome and finished.result == {"status": outcome}
        assert finished.payload == ""
        if settings.job_store_url:
            job_key = "depthid:job:j"
            raw = redis.Redis.from_url(settings.job_store_url)
            assert not raw.hexists(job_key, "payload")
            assert raw.memory_usage(job_key) < 10_000  # the result, not the 100 kB inputs
        await store.close()

    asyncio.run(scenario())


def test_redis_status_polls_never_read_the_inputs(redis_url):
    redis.Redis.from_url(redis_url).flushall()

    async def scenario() -> None:
        store = make_job_store(Settings(job_store_url=redis_url))
        await store.submit(record("j"))
        polled = await store.get("j")
        assert polled.status == "QUEUED" and polled.payload == ""
        assert (await store.take("w", timeout_s=1)).payload == INPUTS
        await store.close()

    asyncio.run(scenario())
