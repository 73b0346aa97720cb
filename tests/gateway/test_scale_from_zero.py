"""A runner that may scale to zero (settings.scale_to_zero_runners), in process: a request that
finds no ready replica waits for one up to its deadline, counted in depthid_waiting_for_runner,
then runs; none ready by the deadline is still a 502. The same with real processes:
tests/e2e/test_scale_from_zero.py."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from gateway import runner_client
from gateway.http.errors import ApiError
from gateway.runner_client import RunnerClient
from settings import Settings
from tests.support.helpers import RecordingRunner
from tests.support.jobs import sd15_job

MODEL = "sd1.5-controlnet-depth"


def waiting() -> float:
    return REGISTRY.get_sample_value("depthid_waiting_for_runner", {"model": MODEL}) or 0.0


class ScaledToZero:
    """A runner with no replica until `wake()`: calls fail as a refused connection does, and
    readiness answers False; afterwards both go through to a RecordingRunner."""

    def __init__(self) -> None:
        self.up = False
        self.runner = RecordingRunner()
        self.refused = 0

    def wake(self) -> None:
        self.up = True

    async def call(self, jobs: list) -> list:
        if not self.up:
            self.refused += 1
            raise aiohttp.ClientConnectionError("connection refused")
        return await self.runner(jobs)

    async def ready(self) -> bool:
        return self.up


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_client, "READY_POLL_S", 0.01)


def test_a_request_waits_for_a_replica_then_runs_and_the_gauge_rises_and_falls():
    runner = ScaledToZero()
    client = RunnerClient("sd15_depth", runner.call, 30, ready=runner.ready, waits_for_ready=True)

    async def scenario() -> tuple[list, list[float]]:
        seen = [waiting()]
        request = asyncio.create_task(client.generate([sd15_job(), sd15_job()], model=MODEL))
        await asyncio.sleep(0.1)
        seen.append(waiting())  # two requests wait, the runner still down
        runner.wake()
        results = await asyncio.wait_for(request, 5)
        seen.append(waiting())
        return results, seen

    results, seen = asyncio.run(scenario())
    assert len(results) == 2 and len(runner.runner.jobs) == 2
    assert runner.refused == 1  # refused once; then it waited on readiness, not on calls
    assert seen[1] == seen[0] + 2 and seen[2] == seen[0]


def test_no_replica_ready_by_the_deadline_is_a_502_and_the_gauge_falls_back():
    runner = ScaledToZero()
    client = RunnerClient("sd15_depth", runner.call, 0.3, ready=runner.ready, waits_for_ready=True)
    before = waiting()
    with pytest.raises(ApiError) as raised:
        asyncio.run(client.generate([sd15_job()], model=MODEL))
    assert raised.value.status == 502
    assert "no replica became ready" in raised.value.message
    assert waiting() == before


def test_a_runner_that_does_not_scale_to_zero_still_answers_502_at_once():
    runner = ScaledToZero()
    client = RunnerClient("sd15_depth", runner.call, 30, ready=runner.ready)
    with pytest.raises(ApiError) as raised:
        asyncio.run(client.generate([sd15_job()], model=MODEL))
    assert raised.value.status == 502 and runner.refused == 1


def test_scale_to_zero_runners_are_runner_names():
    assert Settings(scale_to_zero_runners="flux_depth, instantid").scale_to_zero_runners == [
        "flux_depth",
        "instantid",
    ]
    with pytest.raises(ValidationError, match="unknown runner"):
        Settings(scale_to_zero_runners="flux")
