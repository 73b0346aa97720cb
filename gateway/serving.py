"""The one serving layer: every generation, v1 and v2, takes these steps, each written once.

1. **admit**: the caller's key, its models and its request rate (401, 403, 429), a dependency
   of each generation route (gateway/tenancy/admission.py), before the body is validated;
2. **validate**: FastAPI validates the body against the model's schema (400), from the JSON the
   middleware parsed once (gateway/http/parsed_body.py);
3. **accept** (`Serving.accept`): a concurrency slot (429), the job built from the body (images
   decoded, seed and size resolved: 400), the credits charged (406);
4. **run** (`Serving.run`): the runner generates it (502, 504);
5. **settle** (`Serving.settle`): the slot freed, and the credits given back unless it
   succeeded.

v1 (gateway/v1.py) awaits accept, run and settle within its request. v2's submit
(gateway/jobs/routes.py) accepts the job and queues it; the worker that takes it
(gateway/jobs/worker.py) runs and settles it, as does a cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import BaseModel

from gateway.http.errors import ApiError
from gateway.runner_client import RunnerClient
from gateway.schemas.registry import MODEL_SPECS, ModelSpec
from gateway.tenancy.api_keys import Tenant
from gateway.tenancy.credits import Charge, Credits
from gateway.tenancy.rate_limits import RateLimits
from protocol.jobs import GenerationResult
from settings import Settings


@dataclass(frozen=True)
class Accepted:
    """A job that holds its concurrency slot and its charge until it is settled."""

    job: BaseModel
    slot_id: str
    charge: Charge


class Serving:
    def __init__(
        self,
        settings: Settings,
        runners: dict[str, RunnerClient],
        credits: Credits,
        rate_limits: RateLimits,
    ) -> None:
        """`runners`: the client of each served model's runner (one runner may serve several
        models: instantid and insta-depth)."""
        self.settings = settings
        self.runners = runners
        self.credits = credits
        self.rate_limits = rate_limits

    def served(self, model: str) -> ModelSpec:
        """The model's spec; 404 when this server does not serve it."""
        if model not in self.runners:
            served = ", ".join(sorted(self.runners)) or "none"
            raise ApiError(404, f"unknown model '{model}'; this server serves: {served}")
        return MODEL_SPECS[model]

    @contextlib.asynccontextmanager
    async def accept(
        self,
        tenant: Tenant,
        model: str,
        body: BaseModel,
        *,
        request_id: str,
        slot_id: str,
        slot_ttl_s: float,
    ) -> AsyncIterator[Accepted]:
        """Take a slot (429), build the job (400), charge it (406); if this or the block fails,
        settle it as failed (slot freed, credits given back): an ApiError then carries the
        key's balance after the refund. A block that ends well leaves it to be settled: at the
        end of a v1 request, when a v2 job ends."""
        spec = self.served(model)
        await self.rate_limits.acquire_slot(tenant, slot_id, slot_ttl_s)
        charge: Charge | None = None
        try:
            job = await spec.to_job(body, request_id, self.settings)
            charge = await self.credits.spend(tenant, model, spec.credit_cost(body))
            yield Accepted(job=job, slot_id=slot_id, charge=charge)
        except BaseException as exc:
            charged = charge.amount if charge is not None else 0
            # Shielded: a request cancelled (its caller gone) is settled all the same.
            await asyncio.shield(self.settle(tenant.name, slot_id, charged, succeeded=False))
            if isinstance(exc, ApiError) and charged:
                balance = await self.credits.remaining_headers(tenant)
                exc.headers = {**(exc.headers or {}), **balance}
            raise

    async def run(self, model: str, job: BaseModel) -> GenerationResult:
        """The runner's result for `job` (a failure of the job itself is in the result; a
        runner that cannot answer raises the contract's 502 or 504)."""
        [result] = await self.runners[model].generate([job], model=model)
        return result

    async def settle(self, owner: str, slot_id: str, credits_charged: int, succeeded: bool) -> None:
        """The job has ended: free its slot; give its credits back unless it succeeded."""
        await self.rate_limits.release_slot(owner, slot_id)
        if not succeeded:
            await self.credits.refund(owner, credits_charged)
