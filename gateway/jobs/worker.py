"""The v2 worker: takes queued jobs, runs and settles them through the same serving layer as v1
(gateway/serving.py), stores the outcome.

Each Gateway process runs `settings.job_workers` take-loops, one reaper and one loop that
reports the queue depth (gateway/metrics.py). While a job is in hand its lease is renewed; on
shutdown no new job is taken, jobs in hand get the grace period to finish, and whatever is
still running then is handed back to the queue.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import httpx

from gateway import metrics
from gateway.http.errors import ApiError
from gateway.jobs.store import JobRecord, JobStore, Status
from gateway.redis_client import UNAVAILABLE_ERRORS
from gateway.responses import V2Failed, output_url, v2_completed_body
from gateway.schemas.registry import MODEL_SPECS
from gateway.serving import Serving
from log_format import request_id_var
from protocol.jobs import GenerationResult
from settings import Settings

logger = logging.getLogger(__name__)

TAKE_WAIT_S = 1.0  # how long one take() waits before the loop checks for shutdown
RETRY_DELAY_S = 2.0  # pause between tries while a job's runner is unreachable
ERROR_PAUSE_S = 1.0  # pause after a store error before the loop goes on
QUEUE_DEPTH_PERIOD_S = 1.0  # how often the queue depth metric is read from the store
# How often a running job's status is read for a cancel (POST /v2/requests/{id}/cancel, on any
# replica): a cancelled job's runner call is stopped within about this.
CANCEL_POLL_S = 0.5
OUTCOME_RETRY_PAUSE_S = 1.0
# Of the shutdown grace, kept for handing back the jobs still in hand (the store writes, the
# runners' cancels: READY_PROBE_TIMEOUT_S each): jobs run until the grace less this.
HANDBACK_RESERVE_S = 4.0  # between tries of a job's outcome while the store is unreachable


class _HandBack(Exception):
    """The job did not run and this replica is stopping: give it back to the queue."""


class _RunnerDied(Exception):
    """The runner's connection dropped while it held the job (it crashed or was killed,
    perhaps by this very job): the job did not end, and this take counts as an attempt."""


# Transport errors that mean the call reached the runner and the connection then died under
# it, as opposed to a runner that could not be reached at all (nothing ran: retried in hand).
MID_CALL_DISCONNECTS = (
    aiohttp.ServerDisconnectedError,  # a local runner (BentoML's own proxy)
    aiohttp.ClientPayloadError,
    httpx.RemoteProtocolError,  # a runner by URL (BentoML's HTTP client)
    httpx.ReadError,
    ConnectionResetError,
)


def died_mid_call(error: ApiError) -> bool:
    """Whether a runner's 502 came from a connection that dropped while the runner held the
    job (gateway/runner_client.py keeps the transport error in the chain of causes)."""
    cause = error.__cause__
    while cause is not None:
        if isinstance(cause, MID_CALL_DISCONNECTS):
            return True
        cause = cause.__cause__
    return False


class JobWorker:
    def __init__(
        self,
        store: JobStore,
        serving: Serving,
        settings: Settings,
    ) -> None:
        self.store = store
        self.serving = serving
        self.settings = settings
        # Unique per process and start, so a lease names exactly one live worker.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stopping = asyncio.Event()
        self._loops: list[asyncio.Task] = []
        self._reaper: asyncio.Task | None = None
        self._queue_gauge: asyncio.Task | None = None
        self._hand_back: asyncio.Task | None = None
        # Outcomes being written: shielded from the hand-back, so a job that finished is never
        # left half-settled (written COMPLETED, its slot and credits not settled).
        self._writing: set[asyncio.Task] = set()

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._take_loop(), name=f"v2-worker-{i}")
            for i in range(self.settings.job_workers)
        ]
        self._reaper = asyncio.create_task(self._reap_loop(), name="v2-reaper")
        self._queue_gauge = asyncio.create_task(self._queue_depth_loop(), name="v2-queue-gauge")
        logger.info("v2 worker %s started (%d slots)", self.worker_id, len(self._loops))

    def begin_stop(self, grace_s: float | None = None) -> None:
        """Stop taking jobs, now (the process got SIGTERM: gateway/app.py); the jobs in hand
        may finish until the grace (`grace_s`, default DEPTHID_SHUTDOWN_GRACE_S, counted from
        here) is nearly over, and are then handed back, whatever else the process is still
        waiting for."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if grace_s is None:
            grace_s = self.settings.shutdown_grace_s
        # Kept for the hand-back itself: the store writes and the runners told to stop.
        hand_back_in = grace_s - min(HANDBACK_RESERVE_S, grace_s / 2)
        self._hand_back = asyncio.create_task(self._hand_back_after(hand_back_in))
        logger.info(
            "v2 worker %s stopping: no new jobs; jobs in hand are handed back in %.1f s",
            self.worker_id, hand_back_in,
        )  # fmt: skip

    async def _hand_back_after(self, seconds: float) -> None:
        if self._loops:
            _, pending = await asyncio.wait(self._loops, timeout=seconds)
            for task in pending:
                task.cancel()  # _run_job hands its job back on cancellation

    async def stop(self, grace_s: float) -> None:
        """Stop taking jobs (if not yet: `begin_stop`); let jobs in hand finish within the
        grace, then hand back the rest and tell their runners to stop them."""
        self.begin_stop(grace_s)
        if self._reaper:
            self._reaper.cancel()
        if self._queue_gauge:
            self._queue_gauge.cancel()
        if self._hand_back is not None:
            await self._hand_back
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._writing:  # bounded: the grace holds only the reserve for these
            await asyncio.wait(set(self._writing), timeout=HANDBACK_RESERVE_S)
        # The runners' cancels of the jobs handed back, sent before the process ends: without
        # them a runner by URL (it does not stop with this Gateway) would go on with them.
        clients = {id(client): client for client in self.serving.runners.values()}
        await asyncio.gather(*(client.settle_cancels() for client in clients.values()))
        logger.info("v2 worker %s stopped", self.worker_id)

    async def _take_loop(self) -> None:
        # Nothing but shutdown ends this loop: a store error (Redis restarting, say) is logged
        # and the loop goes on, so a replica never silently stops processing.
        store_down = False  # logged once per outage, not once a second
        while not self._stopping.is_set():
            try:
                record = await self.store.take(self.worker_id, TAKE_WAIT_S)
                store_down = False
                if record is not None and self._stopping.is_set():
                    # Taken as this replica began to stop: another replica runs it.
                    await self.store.release(record.id, self.worker_id, ran=False)
                elif record is not None:
                    await self._run_taken(record)
            except UNAVAILABLE_ERRORS as exc:
                if not store_down:
                    logger.warning("v2 worker: the job store is unreachable (%s); going on", exc)
                store_down = True
                await asyncio.sleep(ERROR_PAUSE_S)
            except Exception:
                logger.exception("v2 worker: job store error; going on")
                await asyncio.sleep(ERROR_PAUSE_S)

    async def _run_taken(self, record: JobRecord) -> None:
        # Every line logged for the job names its request id (log_format.py).
        token = request_id_var.set(record.id)
        try:
            started_at = record.started_at or time.time()
            metrics.observe_queue_wait(record.model, started_at - record.submitted_at)
            if record.attempts > self.settings.job_max_attempts:
                # Taken again after it was taken as often as allowed without ending (its
                # worker's Gateway died each time, or handed it back): never run it again.
                await self._give_up(record, record.attempts - 1)
                return
            if record.webhook and "started" in record.webhook_events and record.attempts == 1:
                await self.store.enqueue_delivery(record.id, "started")
            await self._run_job(record)
        finally:
            request_id_var.reset(token)

    async def _queue_depth_loop(self) -> None:
        # Ends on the stop flag as well as on its cancel: a cancel can be swallowed (Python
        # 3.11's asyncio.wait_for in redis-py; WebhookDeliverer.stop says more).
        while not self._stopping.is_set():
            try:
                depths = await self.store.queue_depth_by_model()
                for model in MODEL_SPECS:  # 0 for a model with nothing waiting
                    metrics.set_queue_depth(model, depths.get(model, 0))
            except Exception:
                logger.exception("could not read the queue depth; retrying")
            await asyncio.sleep(QUEUE_DEPTH_PERIOD_S)

    async def _reap_loop(self) -> None:
        period = max(0.5, self.settings.job_visibility_timeout_s / 3)
        hold_until = 0.0
        while not self._stopping.is_set():  # and its cancel (see _queue_depth_loop)
            await asyncio.sleep(period)
            if time.monotonic() < hold_until:
                continue
            try:
                if requeued := await self.store.requeue_expired():
                    logger.warning("requeued %d job(s) whose worker stopped answering", requeued)
            except UNAVAILABLE_ERRORS:
                # An outage longer than the visibility timeout lapses the leases of live
                # workers too: once the store is back, give their heartbeats one visibility
                # timeout to take them back (JobStore.renew) before requeueing anything, or
                # jobs still running would run twice.
                hold_until = time.monotonic() + self.settings.job_visibility_timeout_s
            except Exception:
                logger.exception("v2 reaper failed; retrying")

    async def _run_job(self, record: JobRecord) -> None:
        # The lease is renewed until the outcome is written, a write that waits out a job store
        # outage included.
        heartbeat = asyncio.create_task(self._heartbeat(record.id))
        try:
            await self._run_and_write(record)
        finally:
            heartbeat.cancel()

    async def _run_and_write(self, record: JobRecord) -> None:
        generation = asyncio.create_task(self._generate(record))
        watch = asyncio.create_task(self._watch_for_cancel(record.id, generation))
        try:
            result = await generation
        except asyncio.CancelledError:
            if not _being_cancelled():
                # The job was cancelled through the API (the cancel wrote CANCELLED and settled
                # it): its runner call was cancelled, which tells the runner to stop the work
                # at its next step (gateway/runner_client.py).
                logger.info(
                    "job %s cancelled while running; the runner was told to stop", record.id
                )
                return
            # Shutdown: this replica is going, the job did not fail: its take is not counted
            # against DEPTHID_JOB_MAX_ATTEMPTS.
            await asyncio.shield(self.store.release(record.id, self.worker_id, ran=False))
            raise
        except _HandBack:
            await self.store.release(record.id, self.worker_id, ran=False)
            return
        except _RunnerDied:
            if record.attempts >= self.settings.job_max_attempts:
                await self._give_up(record, record.attempts)
            else:
                logger.warning(
                    "job %s: its runner stopped while running it (attempt %d of %d); "
                    "handing it back to the queue",
                    record.id, record.attempts, self.settings.job_max_attempts,
                )  # fmt: skip
                await self.store.release(record.id, self.worker_id)
            return
        except ApiError as exc:
            await self._fail(record, exc.message)
            return
        except Exception:
            logger.exception("job %s failed", record.id)
            await self._fail(record, f"internal server error (request id {record.id})")
            return
        finally:
            watch.cancel()

        writing = asyncio.create_task(self._write_result(record, result))
        self._writing.add(writing)
        writing.add_done_callback(self._writing.discard)
        await asyncio.shield(writing)

    async def _write_result(self, record: JobRecord, result: GenerationResult) -> None:
        if result.failure is not None:
            await self._fail(record, result.failure.message)
            return
        body = completed_body(record, result)
        written = await self._write_outcome(
            record, lambda: self.store.complete(record.id, self.worker_id, result.images, body)
        )
        if not written:
            logger.warning("job %s was already finished elsewhere; result dropped", record.id)
            return
        await self._finished(record, "COMPLETED")

    async def _write_outcome(self, record: JobRecord, write: Callable[[], Awaitable[bool]]) -> bool:
        """Run a terminal write. While the job store is unreachable, the finished job waits for
        it (up to DEPTHID_JOB_RESULT_WAIT_S) rather than being dropped: dropped, its lease would
        lapse and the job be generated again."""
        give_up_at = time.monotonic() + self.settings.job_result_wait_s
        waited = False
        while True:
            try:
                written = await write()
            except UNAVAILABLE_ERRORS as exc:
                if time.monotonic() >= give_up_at:
                    raise
                if not waited:
                    logger.warning(
                        "job %s: the job store is unreachable (%s); its outcome waits for it",
                        record.id, exc,
                    )  # fmt: skip
                waited = True
                await asyncio.sleep(OUTCOME_RETRY_PAUSE_S)
                continue
            if waited:
                logger.info("job %s: its outcome is written, the job store is back", record.id)
            return written

    async def _generate(self, record: JobRecord) -> GenerationResult:
        """Run the job; while its runner is unreachable (restarting, rolling update), keep the
        job in hand and try again, up to the generation deadline."""
        spec = MODEL_SPECS[record.model]
        job = await asyncio.to_thread(spec.job.model_validate_json, record.payload)
        give_up_at = time.monotonic() + self.settings.generation_timeout_s
        while True:
            try:
                return await self.serving.run(record.model, job)
            except ApiError as exc:
                if exc.status == 502 and self._stopping.is_set():
                    # The runner refused it while this replica stops (its runners stop with it):
                    # hand the job back now rather than retry past the process's own end.
                    raise _HandBack from exc
                if exc.status == 502 and died_mid_call(exc):
                    raise _RunnerDied from exc
                if exc.status != 502 or time.monotonic() + RETRY_DELAY_S > give_up_at:
                    raise
                logger.warning("job %s: %s; trying again", record.id, exc.message)
                await asyncio.sleep(RETRY_DELAY_S)

    async def _fail(self, record: JobRecord, error: str) -> None:
        body = V2Failed(request_id=record.id, status="FAILED", error=error).body()
        # Only the write that made the job FAILED reports it: a refund happens exactly once,
        # even when a presumed-dead worker on another replica fails the same job too.
        if await self._write_outcome(
            record, lambda: self.store.fail(record.id, self.worker_id, error, body)
        ):
            await self._finished(record, "FAILED")

    async def _give_up(self, record: JobRecord, attempts: int) -> None:
        """FAIL a job that was taken `attempts` times (the most allowed) without ending: a job
        that kills its runner, say, must not be retried forever."""
        error = (
            f"the job was started {attempts} times and never ended (its runner or Gateway "
            "stopped while running it each time); it is not tried again"
        )
        logger.error(
            "job %s (%s) given up: taken %d times without ending (DEPTHID_JOB_MAX_ATTEMPTS=%d)",
            record.id, record.model, attempts, self.settings.job_max_attempts,
        )  # fmt: skip
        metrics.count_job_given_up(record.model)
        await self._fail(record, error)

    async def _finished(self, record: JobRecord, status: Status) -> None:
        """Called once per job, by the worker whose write made it terminal: its slot freed, a
        FAILED job's credits given back."""
        try:
            await self.serving.settle(
                record.owner, record.id, record.credits_charged, succeeded=status == "COMPLETED"
            )
        except Exception:
            logger.exception("job %s: could not settle its credits and slot", record.id)

    async def _watch_for_cancel(self, job_id: str, generation: asyncio.Task) -> None:
        """Cancel `generation` once the job is CANCELLED in the store."""
        while not generation.done():
            await asyncio.sleep(CANCEL_POLL_S)
            try:
                if await self.store.status(job_id) == "CANCELLED":
                    generation.cancel()
                    return
            except Exception:
                logger.exception("could not read the status of job %s", job_id)

    async def _heartbeat(self, job_id: str) -> None:
        period = self.settings.job_visibility_timeout_s / 3
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(period)
                try:
                    if not await self.store.renew(job_id, self.worker_id):
                        logger.warning("lost the lease on job %s", job_id)
                        return
                except UNAVAILABLE_ERRORS as exc:
                    # One failed renewal must not end the heartbeat: the next period tries
                    # again, and takes the lease back if it lapsed meanwhile (JobStore.renew).
                    logger.warning("could not renew the lease on job %s: %s", job_id, exc)
                except Exception:
                    logger.exception("could not renew the lease on job %s", job_id)


def _being_cancelled() -> bool:
    """Whether the running task itself is being cancelled (shutdown), rather than a task it
    awaits (a job cancelled through the API)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def completed_body(record: JobRecord, result: GenerationResult) -> dict:
    """The v2 final body: image URLs (or base64 strings) and measured times."""
    if record.as_base64:
        output = [base64.b64encode(image).decode("ascii") for image in result.images]
    else:
        output = [output_url(record.base_url, record.id, i) for i in range(len(result.images))]
    queue_time = (record.started_at or record.submitted_at) - record.submitted_at
    return v2_completed_body(record.id, result, output, queue_time)
