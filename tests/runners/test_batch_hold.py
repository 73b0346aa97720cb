"""BentoML's batching dispatcher after a burst, in this process with a fake batch function:
the cause of lone requests staying slow after an overload (runners/batch_hold.py), and its fix.
The served version of the same check is in tests/e2e/test_overload.py."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
from bentoml._internal.marshal.dispatcher import CorkDispatcher

from runners import batch_hold

pytestmark = pytest.mark.slow  # bursts and idle latencies of the dispatcher

BATCH_S = 0.03  # a pipeline call: fixed cost
PER_ITEM_S = 0.01  # plus this per job in the batch
MAX_HOLD_MS = 10.0


def fallback() -> None:
    raise RuntimeError("refused")


async def lone_calls(call, count: int) -> list[float]:
    seconds = []
    for i in range(count):
        start = time.perf_counter()
        await call(i)
        seconds.append(time.perf_counter() - start)
    return seconds


async def idle_and_after_burst(dispatcher: CorkDispatcher) -> tuple[float, float]:
    """Median lone-call latency at idle, and right after a burst of 32 concurrent callers."""

    async def pipeline(jobs):
        await asyncio.sleep(BATCH_S + PER_ITEM_S * len(jobs))
        return list(jobs)

    call = dispatcher(pipeline)
    await lone_calls(call, 14)  # the dispatcher's training calls
    idle = statistics.median(await lone_calls(call, 6))
    # Past BentoML's 5 s between refreshes of its estimates, so the burst's waits are learned.
    burst_end = time.monotonic() + 6.0

    async def keep_calling(i: int) -> None:
        while time.monotonic() < burst_end:
            await call(i)

    await asyncio.gather(*(keep_calling(i) for i in range(32)))
    after = statistics.median(await lone_calls(call, 8))
    dispatcher.shutdown()
    return idle, after


def dispatcher_options() -> dict:
    # The served runners' options: max latency 300 s, max batch size 8, one job per item.
    return {
        "max_latency_in_ms": 300_000,
        "max_batch_size": 8,
        "fallback": fallback,
        "get_batch_size": lambda _job: 1,
    }


def test_bentoml_alone_holds_lone_calls_after_a_burst():
    """The cause, measured: BentoML's own dispatcher holds lone calls for about the burst's
    mean queue wait, several times a lone call's own duration."""
    idle, after = asyncio.run(idle_and_after_burst(CorkDispatcher(**dispatcher_options())))
    assert after > 3 * idle, (idle, after)


def test_bounded_hold_is_back_to_idle_speed_right_after_a_burst():
    batch_hold.install(MAX_HOLD_MS)
    dispatcher = batch_hold.BoundedHoldDispatcher(**dispatcher_options())
    idle, after = asyncio.run(idle_and_after_burst(dispatcher))
    # At most the hold bound more than at idle, with room for a slow shared machine.
    assert after <= idle + MAX_HOLD_MS / 1000 + 0.5 * idle, (idle, after)


def test_install_makes_bentomls_service_app_build_bounded_dispatchers():
    from _bentoml_impl.server import app as bentoml_service_app

    batch_hold.install(25.0)
    assert bentoml_service_app.CorkDispatcher is batch_hold.BoundedHoldDispatcher
    dispatcher = bentoml_service_app.CorkDispatcher(**dispatcher_options())
    dispatcher.optimizer.o_stat.extend([(8, 0.1, 3.0)] * 10)  # a burst's waits: 3 s each
    dispatcher.optimizer.trigger_refresh()
    assert dispatcher.optimizer.wait == 0.025
