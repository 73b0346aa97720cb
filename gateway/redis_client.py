"""The one way the Gateway connects to Redis: the v2 job store, the credit ledger and the
per-key limits all use `connect`, so a Redis blip (a restart, a failover, a dropped
connection) costs each of them the same: a command waits and retries instead of failing.

- **Retry**: a command that meets a dropped connection, a timeout, or Redis still loading its
  append-only file (`BusyLoadingError`) reconnects and tries again, backing off from 50 ms to
  1 s, for about `DEPTHID_REDIS_RETRY_S` seconds in all.
- **Health checks**: a pooled connection idle for `HEALTH_CHECK_INTERVAL_S` is PINGed before
  use, so one that died while idle (Redis restarted meanwhile) is replaced, not written to.
- **Bounded waits**: socket timeouts, so a half-open connection fails (and is retried) instead
  of hanging a request or a worker.

A command that Redis ran but whose answer was lost to the dropped connection may run twice.
Every caller's scripts are written to tolerate that where it matters (a job finishes once); a
credit spend retried this way is the one window left, and it needs a kill at that instant.

Past the retry budget the error reaches the route, which answers 503 with `Retry-After`
(gateway/app.py), and Redis is *known to be down* (`Outage`): from then on every command of every
client of that URL in this process is tried once, not retried, so each request answers 503 at
once instead of waiting out the retries again; the first command that succeeds ends it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from settings import DEFAULT_REDIS_RETRY_S

logger = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 1.0
HEALTH_CHECK_INTERVAL_S = 5
SOCKET_TIMEOUT_S = 10
CONNECT_TIMEOUT_S = 2
# What a command retries on: the connection went away, timed out, or Redis is loading its AOF.
RETRIED_ERRORS = (ConnectionError, TimeoutError, BusyLoadingError)
# Redis errors that mean "the store is not reachable now" (the route's 503), not a bug.
UNAVAILABLE_ERRORS = RETRIED_ERRORS


def retries_for(budget_s: float) -> int:
    """How many retries the backoff (50 ms doubling up to 1 s) takes to wait `budget_s`."""
    retries, waited = 0, 0.0
    while waited < budget_s:
        waited += min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**retries)
        retries += 1
    return retries


class Outage:
    """Whether the Redis of one URL is known to be down in this process: a command ran out of
    retries, and none has succeeded since. Shared by every client and connection of the URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.known = False

    def __deepcopy__(self, memo: dict) -> Outage:
        return self  # redis-py deep-copies a retry into each connection: keep this one shared

    def begin(self, error: Exception) -> None:
        if not self.known:
            logger.warning(
                "Redis unreachable past its retries (%s): requests answer 503 at once until a "
                "command succeeds",
                error,
            )
        self.known = True

    def end(self) -> None:
        if self.known:
            logger.info("Redis reachable again")
        self.known = False


_outages: dict[str, Outage] = {}


def outage_of(url: str) -> Outage:
    return _outages.setdefault(url, Outage(url))


class OutageAwareRetry(Retry):
    """redis-py's retry, except while the Redis is known to be down: then one try, so a request
    answers at once. A command that runs out of retries starts the outage; one that succeeds
    ends it."""

    def __init__(self, outage: Outage, retries: int) -> None:
        super().__init__(
            ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S),
            retries,
            supported_errors=RETRIED_ERRORS,
        )
        self.outage = outage

    async def call_with_retry(  # type: ignore[override]
        self,
        do: Callable[[], Awaitable[object]],
        fail: Callable[..., Awaitable[object]],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> object:
        if self.outage.known:
            try:
                result = await do()
            except self._supported_errors as error:
                await (fail(error, 1) if with_failure_count else fail(error))
                raise
        else:
            try:
                result = await super().call_with_retry(
                    do, fail, is_retryable=is_retryable, with_failure_count=with_failure_count
                )
            except self._supported_errors as error:
                self.outage.begin(error)
                raise
        self.outage.end()
        return result


def connect(url: str, retry_s: float = DEFAULT_REDIS_RETRY_S) -> redis.Redis:
    """A client for `url` whose commands ride out a Redis restart of up to `retry_s` seconds
    (the `DEPTHID_REDIS_RETRY_S` setting), and answer at once while it is known to be down."""
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=OutageAwareRetry(outage_of(url), retries_for(retry_s)),
        retry_on_error=list(RETRIED_ERRORS),
    )


# A refund or a slot release that Redis could not take even after the retries is kept and
# tried again in the background, this often and for this long, so an outage longer than the
# retry budget still leaks nothing (unless this process dies meanwhile).
SETTLE_RETRY_PERIOD_S = 2.0
SETTLE_FOR_S = 15 * 60.0
_settling: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones


async def settle(operation: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `operation` (a refund, a slot release) now; if Redis stays unreachable, hand it to a
    background task that retries it until it succeeds, and return."""
    try:
        await operation()
    except UNAVAILABLE_ERRORS as exc:
        logger.warning("%s: Redis unavailable (%s); retrying in the background", what, exc)
        task = asyncio.create_task(_settle_later(operation, what), name=f"settle: {what}")
        _settling.add(task)
        task.add_done_callback(_settling.discard)


async def _settle_later(operation: Callable[[], Awaitable[object]], what: str) -> None:
    give_up_at = time.monotonic() + SETTLE_FOR_S
    while time.monotonic() < give_up_at:
        await asyncio.sleep(SETTLE_RETRY_PERIOD_S)
        try:
            await operation()
        except UNAVAILABLE_ERRORS:
            continue
        logger.info("%s: done after Redis came back", what)
        return
    logger.error("%s: Redis unreachable for %.0f s; given up", what, SETTLE_FOR_S)
