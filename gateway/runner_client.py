"""Calls a runner's batch-shaped `generate` API and maps transport failures onto the contract.

`call` is whatever sends the jobs: BentoML's dependency proxy when served, the runner object
itself in tests. A runner that cannot be reached is a 502, one past the deadline a 504.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from bentoml.exceptions import BentoMLException

from gateway import metrics
from gateway.errors import ApiError
from runners.batching import merge_jobs, split_jobs

logger = logging.getLogger(__name__)

GenerateCall = Callable[[list[Any]], Awaitable[list[Any]]]
ReadyCall = Callable[[], Awaitable[bool]]
READY_PROBE_TIMEOUT_S = 3.0  # well inside a Kubernetes probe's default 1s period x threshold


class RunnerClient:
    def __init__(
        self, name: str, call: GenerateCall, deadline_s: float, ready: ReadyCall | None = None
    ) -> None:
        self.name = name
        self._call = call
        self._ready = ready
        self.deadline_s = deadline_s

    async def is_ready(self) -> bool:
        """Whether the runner answers its readiness route (models loaded), within a bound:
        an unreachable or hung runner is simply not ready."""
        if self._ready is None:
            return True
        try:
            async with asyncio.timeout(READY_PROBE_TIMEOUT_S):
                return await self._ready()
        except Exception as exc:
            logger.info("runner %s not ready: %s", self.name, type(exc).__name__)
            return False

    async def generate(self, jobs: list[Any], *, model: str) -> list[Any]:
        """Run `jobs` of `model`, one result each. Sent as one-sample jobs, so that samples
        count toward the runner's batch size (runners/batching.py). Records the generation
        metrics: in flight, time, batch size."""
        metrics.track_in_flight(model, len(jobs))
        started = time.perf_counter()
        try:
            results = merge_jobs(jobs, await self._send(split_jobs(jobs)))
        finally:
            metrics.track_in_flight(model, -len(jobs))
        seconds = time.perf_counter() - started
        for result in results:
            metrics.observe_generation(model, seconds)
            metrics.observe_batch_size(model, result.batch_size)
        return results

    async def _send(self, jobs: list[Any]) -> list[Any]:
        try:
            async with asyncio.timeout(self.deadline_s):
                return await self._call(jobs)
        except TimeoutError as exc:
            raise ApiError(
                504, f"generation exceeded its deadline of {self.deadline_s:g} seconds"
            ) from exc
        except (aiohttp.ClientError, ConnectionError) as exc:
            # Transport failures only: BentoML turns the runner's HTTP answers into
            # BentoMLException, handled below.
            logger.warning("runner %s unreachable: %s", self.name, exc)
            raise ApiError(502, f"the {self.name} model runner is unreachable") from exc
        except BentoMLException as exc:
            status = int(getattr(exc, "error_code", 500))
            if status == 503:
                # BentoML answers 503 while the runner is starting or overloaded.
                raise ApiError(502, f"the {self.name} model runner is not available") from exc
            if status == 504:
                raise ApiError(504, "generation exceeded the runner's deadline") from exc
            logger.error("runner %s failed (%s): %s", self.name, status, exc)
            raise ApiError(500, "internal error while generating") from exc
