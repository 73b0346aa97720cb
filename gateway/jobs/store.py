"""The v2 job store: one interface, two backends.

`MemoryJobStore` (here) is the embedded default: one process, nothing survives a restart.
`RedisJobStore` (gateway/jobs/redis_store.py) is for many Gateway replicas: jobs are shared, a
job whose worker dies is taken again after the visibility timeout, results are written once.

A job goes QUEUED -> PROCESSING -> COMPLETED | FAILED, or to CANCELLED from either of the first
two (POST /v2/requests/{id}/cancel). Terminal jobs and their images are kept for the retention
period, then forgotten (the routes answer 404). Every terminal write is made once: the first
wins, and only its writer settles the job (credits, concurrency slot).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gateway.tenancy import ANONYMOUS

Status = Literal["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"]
TERMINAL: tuple[Status, ...] = ("COMPLETED", "FAILED", "CANCELLED")
# What a webhook may be sent for: a worker took the job, or it ended (each status, lower case).
WEBHOOK_EVENTS = ("started", "completed", "failed", "cancelled")


class QueueFull(Exception):
    """The queue holds its maximum number of waiting jobs."""


@dataclass
class JobRecord:
    """Everything a worker needs to run a job and the routes need to answer about it."""

    id: str
    model: str
    # The runner job, as JSON (images as base64 PNG): the job's inputs, megabytes with photos.
    # Dropped when the job finishes, so a finished job holds only its result; the Redis store
    # reads it only for the worker that takes the job ("" in what get() answers).
    payload: str
    as_base64: bool  # final body's `output`: base64 strings instead of URLs
    media_type: str  # content type of the output images
    base_url: str  # absolute URL prefix for output links
    submitted_at: float
    owner: str = ANONYMOUS  # the tenant (API key name) that submitted it; only it may see it
    credits_charged: int = 0  # refunded if the job FAILS
    status: Status = "QUEUED"
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    result: dict | None = None  # the final body, once terminal
    n_images: int = 0
    # The submit's `webhook` and the events it asked for (gateway/webhooks.py); per event, its
    # delivery's state ("pending", "delivered", "failed"), and every attempt, oldest first.
    webhook: str | None = None
    webhook_events: list[str] = field(default_factory=list)
    webhook_deliveries: dict[str, str] = field(default_factory=dict)
    webhook_attempts: list[dict] = field(default_factory=list)


class JobStore(Protocol):
    async def submit(self, record: JobRecord) -> None:
        """Store a QUEUED job and enqueue it; raises QueueFull past the bound."""

    async def take(self, worker_id: str, timeout_s: float) -> JobRecord | None:
        """The oldest queued job, now PROCESSING and leased to `worker_id`; None if none came."""

    async def renew(self, job_id: str, worker_id: str) -> bool:
        """Extend the lease (or take it back if it lapsed while the job stayed taken, as in a
        store outage); False when the job is no longer this worker's."""

    async def complete(
        self, job_id: str, worker_id: str, images: list[bytes], result: dict
    ) -> bool:
        """Write the COMPLETED result once; False (nothing written) if already terminal."""

    async def fail(self, job_id: str, worker_id: str, error: str, result: dict) -> bool:
        """Write the FAILED result once; False (nothing written) if already terminal."""

    async def cancel(self, job_id: str) -> tuple[bool, Status | None]:
        """End a QUEUED or PROCESSING job CANCELLED (out of the queue, its lease dropped):
        (True, its status before); else (False, its status: terminal, or None if unknown)."""

    async def status(self, job_id: str) -> Status | None:
        """The job's status alone (a cheap read: running jobs watch it for a cancel)."""

    async def enqueue_delivery(self, job_id: str, event: str) -> None:
        """Schedule the delivery of `event` to the job's webhook, now. (A terminal write
        schedules its event itself, in the same atomic step, when the job asked for it.)"""

    async def take_delivery(self, lease_s: float) -> tuple[str, str] | None:
        """A due delivery, (job id, event), leased for `lease_s`: if its deliverer dies, it is
        due again then, for any replica to take."""

    async def record_delivery(
        self, job_id: str, event: str, attempt: dict, state: str, retry_at: float | None
    ) -> None:
        """Record a delivery attempt on the job and the delivery's state; due again at
        `retry_at` (epoch seconds), or done with when None."""

    async def release(self, job_id: str, worker_id: str, ran: bool = True) -> None:
        """Hand a job in hand back to the queue (graceful shutdown, transient failure).
        `ran=False`: it never reached a runner, so its take does not count as an attempt."""

    async def requeue_expired(self) -> int:
        """Put jobs whose lease expired (their worker died) back in the queue."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None if unknown or expired."""

    async def get_image(self, job_id: str, index: int) -> bytes | None:
        """Image `index` of a COMPLETED job, or None."""

    async def queue_depth(self) -> int:
        """How many jobs wait in the queue."""

    async def queue_depth_by_model(self) -> dict[str, int]:
        """How many jobs of each model wait in the queue (models with none left out)."""

    async def close(self) -> None: ...


@dataclass
class _MemoryJob:
    record: JobRecord
    images: list[bytes] = field(default_factory=list)
    expires_at: float | None = None


# A job's recorded webhook attempts are capped: a receiver down for an hour is tried often.
MAX_WEBHOOK_ATTEMPTS_KEPT = 50


def delivery_member(job_id: str, event: str) -> str:
    return f"{job_id}|{event}"


class MemoryJobStore:
    """In-process store for a single Gateway process (the embedded default)."""

    def __init__(self, max_queued: int, retention_s: float) -> None:
        self.max_queued = max_queued
        self.retention_s = retention_s
        self._jobs: dict[str, _MemoryJob] = {}
        self._deliveries: dict[str, float] = {}  # delivery_member -> due (epoch seconds)
        self._queue: deque[str] = deque()
        self._queued = asyncio.Condition()

    async def submit(self, record: JobRecord) -> None:
        async with self._queued:
            if len(self._queue) >= self.max_queued:
                raise QueueFull
            self._jobs[record.id] = _MemoryJob(record)
            self._queue.append(record.id)
            self._queued.notify()

    async def take(self, worker_id: str, timeout_s: float) -> JobRecord | None:
        async with self._queued:
            try:
                await asyncio.wait_for(self._queued.wait_for(lambda: self._queue), timeout_s)
            except TimeoutError:
                return None
            job = self._jobs[self._queue.popleft()]
        job.record.status = "PROCESSING"
        job.record.started_at = time.time()
        job.record.attempts += 1
        return job.record

    async def renew(self, job_id: str, worker_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job is not None and job.record.status == "PROCESSING"

    async def complete(
        self, job_id: str, worker_id: str, images: list[bytes], result: dict
    ) -> bool:
        return self._finish(job_id, "COMPLETED", images, result, error=None)

    async def fail(self, job_id: str, worker_id: str, error: str, result: dict) -> bool:
        return self._finish(job_id, "FAILED", [], result, error=error)

    def _finish(
        self, job_id: str, status: Status, images: list[bytes], result: dict, error: str | None
    ) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.record.status in TERMINAL:
            return False
        job.record.status = status
        job.record.finished_at = time.time()
        job.record.result = result
        job.record.error = error
        job.record.n_images = len(images)
        job.record.payload = ""  # its inputs are no longer needed: only the result is kept
        job.images = images
        job.expires_at = job.record.finished_at + self.retention_s
        event = status.lower()
        if job.record.webhook and event in job.record.webhook_events:
            self._schedule(job.record, event, time.time())
        return True

    def _schedule(self, record: JobRecord, event: str, due: float) -> None:
        record.webhook_deliveries[event] = "pending"
        self._deliveries[delivery_member(record.id, event)] = due

    async def enqueue_delivery(self, job_id: str, event: str) -> None:
        job = self._live(job_id)
        if job is not None:
            self._schedule(job.record, event, time.time())

    async def take_delivery(self, lease_s: float) -> tuple[str, str] | None:
        now = time.time()
        due = [(when, member) for member, when in self._deliveries.items() if when <= now]
        if not due:
            return None
        _, member = min(due)
        self._deliveries[member] = now + lease_s
        job_id, event = member.split("|")
        return job_id, event

    async def record_delivery(
        self, job_id: str, event: str, attempt: dict, state: str, retry_at: float | None
    ) -> None:
        member = delivery_member(job_id, event)
        job = self._live(job_id)
        if job is None or retry_at is None:
            self._deliveries.pop(member, None)
        else:
            self._deliveries[member] = retry_at
        if job is not None:
            job.record.webhook_deliveries[event] = state
            attempts = [*job.record.webhook_attempts, attempt]
            job.record.webhook_attempts = attempts[-MAX_WEBHOOK_ATTEMPTS_KEPT:]

    async def cancel(self, job_id: str) -> tuple[bool, Status | None]:
        job = self._live(job_id)
        if job is None:
            return False, None
        previous = job.record.status
        body = {"request_id": job_id, "status": "CANCELLED"}
        if not self._finish(job_id, "CANCELLED", [], body, error=None):
            return False, previous
        if job_id in self._queue:
            self._queue.remove(job_id)
        return True, previous

    async def status(self, job_id: str) -> Status | None:
        job = self._live(job_id)
        return job.record.status if job else None

    async def release(self, job_id: str, worker_id: str, ran: bool = True) -> None:
        async with self._queued:
            job = self._jobs.get(job_id)
            if job is None or job.record.status != "PROCESSING":
                return
            job.record.status = "QUEUED"
            if not ran:
                job.record.attempts -= 1
            self._queue.appendleft(job_id)  # first in line: it waited longest
            self._queued.notify()

    async def requeue_expired(self) -> int:
        # One process: a dead worker takes the whole store with it, so nothing to reclaim.
        # Expired results are dropped here instead.
        now = time.time()
        for job_id in [k for k, j in self._jobs.items() if j.expires_at and j.expires_at <= now]:
            del self._jobs[job_id]
        return 0

    async def get(self, job_id: str) -> JobRecord | None:
        job = self._live(job_id)
        return job.record if job else None

    async def get_image(self, job_id: str, index: int) -> bytes | None:
        job = self._live(job_id)
        if job is None or not 0 <= index < len(job.images):
            return None
        return job.images[index]

    def _live(self, job_id: str) -> _MemoryJob | None:
        job = self._jobs.get(job_id)
        if job is not None and job.expires_at is not None and job.expires_at <= time.time():
            del self._jobs[job_id]
            return None
        return job

    async def queue_depth(self) -> int:
        return len(self._queue)

    async def queue_depth_by_model(self) -> dict[str, int]:
        return dict(Counter(self._jobs[job_id].record.model for job_id in self._queue))

    async def close(self) -> None:
        return None
