"""The Redis job store's guarantees, against a real redis-server: nothing lost, written once."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.jobs.redis_store import RedisJobStore
from gateway.jobs.store import JobRecord, QueueFull
from tests.support.redis_server import redis_server


def record(job_id: str) -> JobRecord:
    return JobRecord(
        id=job_id, model="sd1.5-controlnet-depth", payload="{}", as_base64=False,
        media_type="image/jpeg", base_url="http://x", submitted_at=time.time(),
    )  # fmt: skip


def test_queued_jobs_survive_a_redis_crash_with_aof(tmp_path):
    async def submit(url: str) -> None:
        store = RedisJobStore(url, max_queued=10, retention_s=60, visibility_timeout_s=5)
        for job_id in ("a", "b", "c"):
            await store.submit(record(job_id))
        await store.close()

    async def take_all(url: str) -> list[tuple[str, str]]:
        store = RedisJobStore(url, max_queued=10, retention_s=60, visibility_timeout_s=5)
        statuses = [(await store.get(job_id)).status for job_id in ("a", "b", "c")]
        assert statuses == ["QUEUED"] * 3
        taken = [await store.take("w", timeout_s=1) for _ in range(3)]
        await store.close()
        return [(job.id, job.status) for job in taken]

    with redis_server(tmp_path, appendonly=True) as server:
        asyncio.run(submit(server.url))
        server.kill()  # SIGKILL: only the append-only file can bring the jobs back
        server.start()
        assert asyncio.run(take_all(server.url)) == [
            ("a", "PROCESSING"), ("b", "PROCESSING"), ("c", "PROCESSING"),
        ]  # fmt: skip


def test_dead_workers_job_is_taken_again_and_a_late_duplicate_never_overwrites(tmp_path):
    async def scenario(url: str) -> None:
        store = RedisJobStore(url, max_queued=10, retention_s=60, visibility_timeout_s=0.3)
        await store.submit(record("j"))
        taken = await store.take("dead-worker", timeout_s=1)
        assert taken.id == "j" and taken.attempts == 1
        # The worker stops renewing its lease (it died). Nothing is requeued before the
        # visibility timeout has passed; right after it, the job is queued again.
        assert await store.requeue_expired() == 0
        await asyncio.sleep(0.4)
        assert await store.requeue_expired() == 1
        assert (await store.get("j")).status == "QUEUED"
        retaken = await store.take("live-worker", timeout_s=1)
        assert retaken.id == "j" and retaken.attempts == 2
        assert await store.renew("j", "live-worker")
        assert not await store.renew("j", "dead-worker")

        body = {"request_id": "j", "status": "COMPLETED", "by": "live"}
        assert await store.complete("j", "live-worker", [b"live-image"], body)
        # The presumed-dead worker wakes up and finishes too: its result is refused.
        late = {"request_id": "j", "status": "COMPLETED", "by": "dead"}
        assert not await store.complete("j", "dead-worker", [b"dead-image"], late)
        assert not await store.fail("j", "dead-worker", "boom", {"status": "FAILED"})
        final = await store.get("j")
        assert final.status == "COMPLETED" and final.result["by"] == "live"
        assert await store.get_image("j", 0) == b"live-image"
        assert await store.queue_depth() == 0
        assert await store.client.llen("depthid:processing") == 0
        await store.close()

    with redis_server(tmp_path) as server:
        asyncio.run(scenario(server.url))


def test_a_job_finished_by_a_presumed_dead_worker_is_never_run_again(tmp_path):
    """The other order: the job was requeued, then its first worker finishes after all. The
    result stands, and the queued copy is not taken and run again."""

    async def scenario(url: str) -> None:
        store = RedisJobStore(url, max_queued=10, retention_s=60, visibility_timeout_s=0.3)
        await store.submit(record("j"))
        await store.submit(record("k"))
        assert (await store.take("slow-worker", timeout_s=1)).id == "j"
        await asyncio.sleep(0.4)
        assert await store.requeue_expired() == 1  # j is queued again, behind nothing
        body = {"request_id": "j", "status": "COMPLETED", "by": "slow"}
        assert await store.complete("j", "slow-worker", [b"slow-image"], body)
        # Even a stray copy of j's id in the queue is skipped: the next take gets k, and j
        # stays COMPLETED with its image.
        await store.client.rpush("depthid:queue", "j")
        assert (await store.take("other-worker", timeout_s=1)).id == "k"
        assert await store.take("other-worker", timeout_s=0.2) is None
        final = await store.get("j")
        assert final.status == "COMPLETED" and final.result["by"] == "slow"
        assert await store.get_image("j", 0) == b"slow-image"
        await store.close()

    with redis_server(tmp_path) as server:
        asyncio.run(scenario(server.url))


def test_queue_bound(tmp_path):
    async def scenario(url: str) -> None:
        store = RedisJobStore(url, max_queued=2, retention_s=60, visibility_timeout_s=5)
        await store.submit(record("1"))
        await store.submit(record("2"))
        with pytest.raises(QueueFull):
            await store.submit(record("3"))
        assert await store.get("3") is None and await store.queue_depth() == 2
        await store.close()

    with redis_server(tmp_path) as server:
        asyncio.run(scenario(server.url))


def test_a_lease_that_lapsed_under_a_live_worker_is_taken_back_unless_requeued(tmp_path):
    """Redis unreachable longer than the visibility timeout lapses every lease, the live
    workers' too: a worker's next renewal takes its lease back while its job is still taken;
    once the reaper has requeued the job, it cannot (the job is another take's now)."""

    async def scenario(url: str) -> None:
        store = RedisJobStore(url, max_queued=10, retention_s=60, visibility_timeout_s=0.3)
        await store.submit(record("j"))
        await store.take("live-worker", timeout_s=1)
        await asyncio.sleep(0.4)  # the lease lapses (as over an outage)
        assert await store.renew("j", "live-worker")
        assert await store.requeue_expired() == 0  # its lease is back: not requeued
        assert not await store.renew("j", "another-worker")
        await asyncio.sleep(0.4)
        assert await store.requeue_expired() == 1
        assert not await store.renew("j", "live-worker")  # requeued: no longer its job
        await store.close()

    with redis_server(tmp_path) as server:
        asyncio.run(scenario(server.url))
