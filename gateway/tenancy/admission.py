"""What a generation request must pass before its body is even validated: the caller's key
(401), the key's models (403) and the key's request rate (429).

POST /v2/{model} declares `tenant: Admitted` (the model from its path parameter); each v1 route
`tenant: admitted_to(MODEL)`. The v2 request routes declare only `Authenticated`
(gateway/tenancy/api_keys.py): polls are not rate-limited.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from gateway.schemas.registry import MODEL_SPECS
from gateway.tenancy.api_keys import Authenticated, Tenant, authorize
from gateway.tenancy.rate_limits import RateLimits


async def _admit(request: Request, tenant: Tenant, model: str) -> Tenant:
    if model in MODEL_SPECS:  # an unknown model is the route's own 404
        authorize(tenant, model)
    limits: RateLimits = request.app.state.rate_limits
    await limits.check_rate(tenant)
    return tenant


async def admit_to_path_model(request: Request, tenant: Authenticated) -> Tenant:
    """POST /v2/{model}: the model is the route's path parameter."""
    return await _admit(request, tenant, request.path_params["model"])


def admitted_to(model: str) -> Any:
    """The `tenant` annotation of a v1 route, which serves one model."""

    async def admit(request: Request, tenant: Authenticated) -> Tenant:
        return await _admit(request, tenant, model)

    return Annotated[Tenant, Depends(admit)]


Admitted = Annotated[Tenant, Depends(admit_to_path_model)]
