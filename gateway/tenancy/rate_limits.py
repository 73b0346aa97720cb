"""Per-key limits: a request rate and a number of concurrent jobs; past either, 429 with
`Retry-After`.

- **Request rate** (`requests_per_minute`): generation requests (POST /v1/{model},
  POST /v2/{model}) per key, as a GCRA (a token bucket without a refill timer): a key may send
  a burst of up to `requests_per_minute`, then one every 60/`requests_per_minute` seconds.
  `Retry-After` is exactly when the next request will be let through, rounded up. Status and
  result polls are not counted: the SDK polls every second while a job runs.
- **Concurrent jobs** (`concurrent_jobs`): v1 generations being answered plus v2 jobs submitted
  and not finished. `Retry-After` is the `DEPTHID_CONCURRENCY_RETRY_AFTER_S` setting: when a
  job ends cannot be known.

With `DEPTHID_JOB_STORE_URL` set, the counts live in Redis (one atomic script per check, on
Redis's clock), so every replica enforces the same limit; else in this process. A key's limits
come from the keys file, else the settings' defaults; 0 means no limit. Keys off: no limits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

from gateway import metrics
from gateway.http.errors import ApiError
from gateway.redis_client import connect, settle
from gateway.tenancy.api_keys import Tenant
from settings import DEFAULT_REDIS_RETRY_S, Settings

WINDOW_MS = 60_000  # limits are per minute; time is counted in whole ms, so sums stay exact
# A slot normally ends when its work does; these expiries only free the slot of a replica that
# died holding it. A v1 request ends within its generation deadline (plus fetching its images);
# a v2 job's slot is freed when the job finishes, and after a day whatever happened.
V1_SLOT_MARGIN_S = 60.0
JOB_SLOT_TTL_S = 24 * 3600.0
REDIS_PREFIX = "depthid:limits:"

# Redis's own clock in ms, so replicas with skewed clocks still share one timeline.
_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# GCRA. KEYS[1]: the key's theoretical arrival time (ms). ARGV: interval ms, window ms.
# Returns 0 (counted) or the ms until a request would be let through.
_TAKE_REQUEST = (
    _NOW_MS
    + """
local interval = tonumber(ARGV[1])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local allowed_at = tat + interval - tonumber(ARGV[2])
if now < allowed_at then return allowed_at - now end
redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now)
return 0
"""
)

# KEYS[1]: the key's slots, a sorted set of slot id -> expiry (ms). ARGV: slot id, limit, ttl
# ms. Drops expired slots; takes one if fewer than the limit are held: 1, else 0.
_ACQUIRE_SLOT = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""
)


def interval_ms(per_minute: int) -> int:
    """GCRA's emission interval, rounded down so that a full burst of `per_minute` fits."""
    return WINDOW_MS // per_minute


class LimitStore(Protocol):
    async def take_request(self, tenant: str, per_minute: int) -> float:
        """Count one request: 0 within the rate, else the seconds until one would be allowed."""

    async def acquire_slot(self, tenant: str, slot_id: str, limit: int, ttl_s: float) -> bool:
        """Hold one of `limit` slots, expiring after `ttl_s`; False when all are held."""

    async def release_slot(self, tenant: str, slot_id: str) -> None: ...

    async def close(self) -> None: ...


class MemoryLimitStore:
    """One process. `clock` is injectable so tests can step time instead of sleeping."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # seconds
        self._arrival: dict[str, int] = {}  # tenant -> GCRA theoretical arrival time (ms)
        self._slots: dict[str, dict[str, float]] = {}  # tenant -> slot id -> expiry (s)

    async def take_request(self, tenant: str, per_minute: int) -> float:
        now = int(self.clock() * 1000)
        interval = interval_ms(per_minute)
        arrival = max(self._arrival.get(tenant, now), now)
        allowed_at = arrival + interval - WINDOW_MS
        if now < allowed_at:
            return (allowed_at - now) / 1000
        self._arrival[tenant] = arrival + interval
        return 0.0

    async def acquire_slot(self, tenant: str, slot_id: str, limit: int, ttl_s: float) -> bool:
        now = self.clock()
        slots = self._slots.setdefault(tenant, {})
        for expired in [slot for slot, expiry in slots.items() if expiry <= now]:
            del slots[expired]
        if len(slots) >= limit:
            return False
        slots[slot_id] = now + ttl_s
        return True

    async def release_slot(self, tenant: str, slot_id: str) -> None:
        self._slots.get(tenant, {}).pop(slot_id, None)

    async def close(self) -> None:
        return None


class RedisLimitStore:
    """Shared by every replica on one Redis."""

    def __init__(self, url: str, retry_s: float = DEFAULT_REDIS_RETRY_S) -> None:
        self.client = connect(url, retry_s)
        self._take_request = self.client.register_script(_TAKE_REQUEST)
        self._acquire_slot = self.client.register_script(_ACQUIRE_SLOT)

    async def take_request(self, tenant: str, per_minute: int) -> float:
        args = [interval_ms(per_minute), WINDOW_MS]
        wait_ms = await self._take_request(keys=[f"{REDIS_PREFIX}rate:{tenant}"], args=args)
        return int(wait_ms) / 1000

    async def acquire_slot(self, tenant: str, slot_id: str, limit: int, ttl_s: float) -> bool:
        keys = [f"{REDIS_PREFIX}slots:{tenant}"]
        return bool(await self._acquire_slot(keys=keys, args=[slot_id, limit, int(ttl_s * 1000)]))

    async def release_slot(self, tenant: str, slot_id: str) -> None:
        await self.client.zrem(f"{REDIS_PREFIX}slots:{tenant}", slot_id)

    async def close(self) -> None:
        await self.client.aclose()


def make_limit_store(settings: Settings) -> LimitStore:
    if settings.job_store_url:
        return RedisLimitStore(settings.job_store_url, settings.redis_retry_s)
    return MemoryLimitStore()


def too_many(reason: str, retry_after_s: int, message: str) -> ApiError:
    """The contract's 429; `reason` ("rate", "concurrency" or "queue") labels the metric."""
    metrics.count_rate_limited(reason)
    return ApiError(429, message, headers={"Retry-After": str(retry_after_s)})


class RateLimits:
    """A key's request rate and concurrency slots, on a store."""

    def __init__(self, store: LimitStore, settings: Settings) -> None:
        self.store = store
        self.concurrency_retry_after_s = settings.concurrency_retry_after_s
        self.v1_slot_ttl_s = settings.generation_timeout_s + V1_SLOT_MARGIN_S

    async def check_rate(self, tenant: Tenant) -> None:
        """Count one generation request of `tenant`; 429 past its requests per minute."""
        if not tenant.requests_per_minute:
            return
        wait_s = await self.store.take_request(tenant.name, tenant.requests_per_minute)
        if wait_s > 0:
            retry_after = math.ceil(wait_s)
            raise too_many(
                "rate",
                retry_after,
                f"rate limit: this key may send {tenant.requests_per_minute} generation "
                f"requests per minute; retry after {retry_after} s",
            )

    async def acquire_slot(self, tenant: Tenant, slot_id: str, ttl_s: float) -> None:
        """Hold one of the key's concurrency slots (429 when none is free) until
        `release_slot`, or `ttl_s` if its Gateway dies first (gateway/serving.py)."""
        if not tenant.concurrent_jobs:
            return
        if await self.store.acquire_slot(tenant.name, slot_id, tenant.concurrent_jobs, ttl_s):
            return
        raise too_many(
            "concurrency",
            self.concurrency_retry_after_s,
            f"too many jobs at once: this key may have {tenant.concurrent_jobs} running or "
            f"queued; retry after {self.concurrency_retry_after_s} s",
        )

    async def release_slot(self, tenant_name: str, slot_id: str) -> None:
        """Free a slot (nothing happens if it held none: a key without a concurrency limit)."""
        # Settled: a Redis outage delays the release, never leaks the slot.
        await settle(
            lambda: self.store.release_slot(tenant_name, slot_id),
            f"release of a concurrency slot of '{tenant_name}'",
        )

    async def close(self) -> None:
        await self.store.close()
