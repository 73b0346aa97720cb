"""What a generation request must pass before its body is even validated: the caller's key
(401), the key's models (403) and the key's request rate (429).

Generation routes (POST /v1/{model}, POST /v2/{model}) declare `tenant: Admitted`; the v2
request routes only `Authenticated` (gateway/tenancy/api_keys.py): polls are not rate-limited.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.schemas.registry import MODEL_SPECS
from gateway.tenancy.api_keys import Authenticated, Tenant, authorize
from gateway.tenancy.rate_limits import RateLimits


async def admit(request: Request, tenant: Authenticated) -> Tenant:
    # Both generation routes end with the model: /v1/{model} and /v2/{model}.
    model = request.url.path.rsplit("/", 1)[-1]
    if model in MODEL_SPECS:  # an unknown model is the route's own 404
        authorize(tenant, model)
    limits: RateLimits = request.app.state.rate_limits
    await limits.check_rate(tenant)
    return tenant


Admitted = Annotated[Tenant, Depends(admit)]
