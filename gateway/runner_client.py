"""Calls a runner's batch-shaped `generate` API and maps transport failures onto the contract.

`call` is whatever sends the jobs: BentoML's dependency proxy when served, the runner object
itself in tests. A runner that cannot be reached is a 502, one past the deadline a 504.

Every job goes with its deadline and a token (protocol/jobs.py): the runner does not start a
job past its deadline. When the deadline passes here, or the caller goes away (the call is
cancelled), the token is sent to the runner's `cancel` API, so the work stops there too
(runners/deadlines.py).

After a transport failure (the runner died or is restarting) the runner is *suspect*: the next
calls first ask its readiness route (bounded by READY_PROBE_TIMEOUT_S) and answer 502 at once
while it is not ready, instead of queueing on a socket that nobody serves until the restart is
done (up to the deadline). The first ready answer clears it.

A runner that may scale to zero (`waits_for_ready`, settings.scale_to_zero_runners) is instead
waited for: a call that finds no ready replica (a transport failure, or suspect and not ready)
asks its readiness every READY_POLL_S until it is ready, then sends the jobs, all within the
request's one deadline; meanwhile the requests are counted in depthid_waiting_for_runner, the
gauge KEDA wakes the runner on. No replica ready by the deadline is still a 502 (the runner was
unreachable), a generation that then runs past it a 504.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
from bentoml.exceptions import BentoMLException

from gateway import metrics
from gateway.http.errors import ApiError
from log_format import joined_request_ids, request_ids_sent

logger = logging.getLogger(__name__)

GenerateCall = Callable[[list[Any]], Awaitable[list[Any]]]
ReadyCall = Callable[[], Awaitable[bool]]
CancelCall = Callable[[list[str]], Awaitable[Any]]
# How long a runner's readiness (and cancel) route may take: the Gateway's /readyz asks it, so
# it stays inside that probe's 5 s timeout (k8s/base/gateway.yaml) and a hung runner reads
# "not ready" rather than failing the probe.
READY_PROBE_TIMEOUT_S = 3.0
# How often a call waiting for a runner with no ready replica asks its readiness again: a small
# part of a cold start (seconds to minutes), and one cheap request per waiting call.
READY_POLL_S = 1.0


class _Unreachable(Exception):
    """The runner could not be reached (raised from the transport failure)."""


class RunnerClient:
    def __init__(
        self,
        name: str,
        call: GenerateCall,
        deadline_s: float,
        ready: ReadyCall | None = None,
        cancel: CancelCall | None = None,
        waits_for_ready: bool = False,
    ) -> None:
        """`waits_for_ready`: the runner may have no replica (scaled to zero); calls wait for
        one up to their deadline instead of answering 502 at once (module docstring)."""
        self.name = name
        self._call = call
        self._ready = ready
        self._cancel = cancel
        self.deadline_s = deadline_s
        self.waits_for_ready = waits_for_ready
        self._cancelling: set[asyncio.Task] = set()  # strong references to fire-and-forget
        self._suspect = False  # a transport failure since the last ready answer

    async def is_ready(self, quiet: bool = False) -> bool:
        """Whether the runner answers its readiness route (models loaded), within a bound:
        an unreachable or hung runner is simply not ready (logged unless `quiet`)."""
        if self._ready is None:
            return True
        try:
            async with asyncio.timeout(READY_PROBE_TIMEOUT_S):
                return await self._ready()
        except Exception as exc:
            if not quiet:
                logger.info("runner %s not ready: %s", self.name, type(exc).__name__)
            return False

    async def generate(self, jobs: list[Any], *, model: str) -> list[Any]:
        """Run `jobs` of `model`, one result each (the runner cuts them into samples and
        merges their results: runners/scheduler.py). Records the generation metrics: in
        flight, time, batch size."""
        metrics.track_in_flight(model, len(jobs))
        started = time.perf_counter()
        token = uuid.uuid4().hex
        deadline = time.time() + self.deadline_s
        sent = [job.model_copy(update={"deadline": deadline, "token": token}) for job in jobs]
        try:
            results = await self._send(sent, token, deadline, model)
        finally:
            metrics.track_in_flight(model, -len(jobs))
        seconds = time.perf_counter() - started
        for result in results:
            metrics.observe_generation(model, seconds)
            metrics.observe_batch_size(model, result.batch_size)
        return results

    async def _send(self, jobs: list[Any], token: str, deadline: float, model: str) -> list[Any]:
        """Send `jobs` once the runner is ready to take them (or refuse, as the module docstring
        says), then map the answer onto the contract; `deadline` is wall-clock (time.time())."""
        while True:
            if self._suspect:
                if self.waits_for_ready:
                    await self._wait_until_ready(deadline, model, len(jobs))
                elif not await self.is_ready():
                    raise ApiError(
                        502, f"the {self.name} model runner is unreachable or restarting"
                    )
                self._suspect = False
            try:
                return await self._send_once(jobs, token, deadline)
            except _Unreachable as exc:
                logger.warning("runner %s unreachable: %s", self.name, exc.__cause__)
                self._suspect = True
                if not self.waits_for_ready:
                    raise ApiError(502, f"the {self.name} model runner is unreachable") from exc
                # Scaled to zero or starting: the loop waits for a ready replica, then resends.

    async def _wait_until_ready(self, deadline: float, model: str, requests: int) -> None:
        """Return once the runner answers ready; 502 when it is not by `deadline`. Meanwhile
        the requests count in depthid_waiting_for_runner."""
        metrics.track_waiting_for_runner(model, requests)
        logger.info("runner %s has no ready replica: waiting for one", self.name)
        try:
            # Quiet: one line when the wait starts and one when it ends, not one per probe.
            while not await self.is_ready(quiet=True):
                left = deadline - time.time()
                if left <= READY_POLL_S:
                    raise ApiError(
                        502,
                        f"the {self.name} model runner is unreachable: no replica became ready "
                        f"within the deadline of {self.deadline_s:g} seconds",
                    )
                await asyncio.sleep(READY_POLL_S)
            logger.info("runner %s ready: sending the requests that waited for it", self.name)
        finally:
            metrics.track_waiting_for_runner(model, -requests)

    async def _send_once(self, jobs: list[Any], token: str, deadline: float) -> list[Any]:
        try:
            # The runner's log lines about this call name its requests (log_format.py).
            with request_ids_sent(joined_request_ids(jobs)):
                async with asyncio.timeout(max(0.0, deadline - time.time())):
                    return await self._call(jobs)
        except asyncio.CancelledError:
            self._cancel_in_runner(token)  # the caller went away
            raise
        except TimeoutError as exc:
            self._cancel_in_runner(token)
            raise ApiError(
                504, f"generation exceeded its deadline of {self.deadline_s:g} seconds"
            ) from exc
        except (
            aiohttp.ClientError,
            httpx.NetworkError,
            httpx.RemoteProtocolError,
            ConnectionError,
        ) as exc:
            # Transport failures only (aiohttp to a local runner, httpx to one by URL): BentoML
            # turns the runner's HTTP answers into BentoMLException, handled below.
            raise _Unreachable from exc
        except BentoMLException as exc:
            status = int(getattr(exc, "error_code", 500))
            if status == 503:
                # BentoML answers 503 while the runner is starting or overloaded.
                raise ApiError(502, f"the {self.name} model runner is not available") from exc
            if status == 504:
                raise ApiError(504, "generation exceeded the runner's deadline") from exc
            logger.error("runner %s failed (%s): %s", self.name, status, exc)
            raise ApiError(500, "internal error while generating") from exc

    async def settle_cancels(self) -> None:
        """Wait for the cancels sent so far (each bounded by READY_PROBE_TIMEOUT_S): a process
        that stops must not end before they are delivered."""
        await asyncio.gather(*self._cancelling, return_exceptions=True)

    def _cancel_in_runner(self, token: str) -> None:
        """Tell the runner nobody waits for `token`'s jobs, without waiting for its answer."""
        if self._cancel is None:
            return
        task = asyncio.create_task(self._send_cancel(token))
        self._cancelling.add(task)
        task.add_done_callback(self._cancelling.discard)

    async def _send_cancel(self, token: str) -> None:
        try:
            async with asyncio.timeout(READY_PROBE_TIMEOUT_S):
                await self._cancel([token])
        except Exception as exc:
            # Best effort: the runner still drops the jobs at their deadline.
            logger.info("runner %s: cancel not delivered: %s", self.name, type(exc).__name__)
