"""Credits: an optional per-key budget that every generation spends (406 when it falls short).

A key with `credits` in the keys file may spend that many in all; the ledger counts what each
key has spent, so raising a key's `credits` tops it up. A request costs
`ModelSpec.credit_cost` (gateway/schemas/registry.py). It is charged after the request is validated
and before any runner work; a generation that fails gives its charge back (gateway/serving.py:
v1 as it answers; v2 when the job is FAILED or CANCELLED, by the one write that made it so).
A key without `credits` (and every caller when keys are off) is never charged and gets no
`x-remaining-credits`.

Two ledgers: in-process memory (one Gateway process; a restart forgets what was spent), and
Redis when `DEPTHID_JOB_STORE_URL` is set, where one Lua script checks and spends at once, so
replicas sharing it can never together spend more than a key has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway import metrics
from gateway.http.errors import ApiError
from gateway.redis_client import connect, settle
from gateway.tenancy.api_keys import Tenant
from settings import DEFAULT_REDIS_RETRY_S, Settings

HEADER = "x-remaining-credits"
REDIS_PREFIX = "depthid:credits:spent:"  # + tenant name: the credits it has spent

# Spend ARGV[2] if the grant ARGV[1] minus what is spent covers it: {1 spent | 0 refused, left}.
_SPEND = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local granted = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
if spent + cost > granted then return {0, granted - spent} end
return {1, granted - redis.call('INCRBY', KEYS[1], cost)}
"""


class CreditLedger(Protocol):
    async def spend(self, tenant: str, granted: int, cost: int) -> tuple[bool, int]:
        """Spend `cost` if what is left of `granted` covers it; (spent?, credits left)."""

    async def refund(self, tenant: str, amount: int) -> None:
        """Give back `amount` spent credits."""

    async def spent(self, tenant: str) -> int:
        """What `tenant` has spent so far."""

    async def close(self) -> None: ...


class MemoryCreditLedger:
    """One process: the check and the spend run without an await between them, so they are
    atomic on the event loop."""

    def __init__(self) -> None:
        self._spent: dict[str, int] = {}

    async def spend(self, tenant: str, granted: int, cost: int) -> tuple[bool, int]:
        spent = self._spent.get(tenant, 0)
        if spent + cost > granted:
            return False, granted - spent
        self._spent[tenant] = spent + cost
        return True, granted - spent - cost

    async def refund(self, tenant: str, amount: int) -> None:
        self._spent[tenant] = self._spent.get(tenant, 0) - amount

    async def spent(self, tenant: str) -> int:
        return self._spent.get(tenant, 0)

    async def close(self) -> None:
        return None


class RedisCreditLedger:
    """Shared by every replica on one Redis; spending is one atomic script."""

    def __init__(self, url: str, retry_s: float = DEFAULT_REDIS_RETRY_S) -> None:
        self.client = connect(url, retry_s)
        self._spend = self.client.register_script(_SPEND)

    async def spend(self, tenant: str, granted: int, cost: int) -> tuple[bool, int]:
        ok, left = await self._spend(keys=[REDIS_PREFIX + tenant], args=[granted, cost])
        return bool(ok), int(left)

    async def refund(self, tenant: str, amount: int) -> None:
        await self.client.decrby(REDIS_PREFIX + tenant, amount)

    async def spent(self, tenant: str) -> int:
        return int(await self.client.get(REDIS_PREFIX + tenant) or 0)

    async def close(self) -> None:
        await self.client.aclose()


def make_ledger(settings: Settings) -> CreditLedger:
    if settings.job_store_url:
        return RedisCreditLedger(settings.job_store_url, settings.redis_retry_s)
    return MemoryCreditLedger()


@dataclass(frozen=True)
class Charge:
    """What one request was charged; `remaining` is None when the key has no credit limit."""

    amount: int
    remaining: int | None

    def headers(self) -> dict[str, str]:
        return remaining_header(self.remaining)


def remaining_header(remaining: int | None) -> dict[str, str]:
    return {} if remaining is None else {HEADER: str(max(0, remaining))}


class Credits:
    """Charging and refunding requests, on a ledger."""

    def __init__(self, ledger: CreditLedger) -> None:
        self.ledger = ledger

    async def spend(self, tenant: Tenant, model: str, cost: int) -> Charge:
        """Charge `cost` (406 when the key has less left); a job that then fails is refunded
        (gateway/serving.py settles it)."""
        if tenant.credits is None:
            return Charge(amount=0, remaining=None)
        ok, left = await self.ledger.spend(tenant.name, tenant.credits, cost)
        if not ok:
            metrics.count_credits_refused(model)
            raise ApiError(
                406,
                f"not enough credits: this request costs {cost}, "
                f"the key '{tenant.name}' has {max(0, left)} left",
                headers=remaining_header(left),
            )
        return Charge(amount=cost, remaining=left)

    async def refund(self, tenant_name: str, amount: int) -> None:
        # Settled: a Redis outage delays the refund, never loses it.
        if amount:
            await settle(
                lambda: self.ledger.refund(tenant_name, amount),
                f"refund of {amount} credits to '{tenant_name}'",
            )

    async def remaining_headers(self, tenant: Tenant) -> dict[str, str]:
        """`x-remaining-credits` with the key's balance now; none for a key without credits."""
        if tenant.credits is None:
            return {}
        return remaining_header(tenant.credits - await self.ledger.spent(tenant.name))

    async def close(self) -> None:
        await self.ledger.close()
