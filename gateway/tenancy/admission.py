"""What a generation request must pass before its body is even validated: the caller's key
(401), the key's models (403) and the key's request rate (429).

Each generation route (v1 and v2, one per model) declares `tenant: admitted_to(MODEL)`. The v2
request routes declare only `Authenticated` (gateway/tenancy/api_keys.py): polls are not
rate-limited.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from gateway.tenancy.api_keys import Authenticated, Tenant, authorize
from gateway.tenancy.rate_limits import RateLimits


async def _admit(request: Request, tenant: Tenant, model: str) -> Tenant:
    authorize(tenant, model)
    limits: RateLimits = request.app.state.rate_limits
    await limits.check_rate(tenant)
    return tenant


def admitted_to(model: str) -> Any:
    """The `tenant` annotation of a generation route, which serves one model."""

    async def admit(request: Request, tenant: Authenticated) -> Tenant:
        return await _admit(request, tenant, model)

    return Annotated[Tenant, Depends(admit)]
