"""v1: synchronous generation. One route per served model, made from its registry entry
(gateway/schemas/registry.py): admitted and validated, then accepted, run and settled by the
serving layer (gateway/serving.py) within the request, which answers with the result."""

# No `from __future__ import annotations` here: `v1_route` annotates its endpoint with the
# model's schema and admission, and FastAPI reads those annotations as objects.

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from gateway.http.errors import ApiError
from gateway.http.parsed_body import ParsedBodyRoute
from gateway.idempotency import answer_once
from gateway.responses import V1Images, v1_response
from gateway.schemas.ignored_fields import ignored_fields, ignored_fields_headers
from gateway.schemas.registry import ModelSpec
from gateway.serving import Serving
from gateway.tenancy.admission import admitted_to
from gateway.tenancy.api_keys import Tenant
from protocol.jobs import JobFailure

DISCONNECT_POLL_S = 0.25  # how often a generation checks that its caller is still there
CLIENT_GONE = 499  # the caller closed the connection (nginx's code; nobody reads the answer)
IDEMPOTENT_PENDING_MARGIN_S = 60.0  # beyond the generation deadline: image fetches, the queue
T = TypeVar("T")

IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": V1Images,
        "description": "The image bytes; JSON with base64 images when `base64` is true or "
        "more than one image was asked for. Fields the model does not take are ignored and "
        "named in the `x-ignored-fields` header.",
        "content": {"image/jpeg": {}},
    },
    400: {"description": "Malformed JSON, a bad field, or an undecodable image."},
    401: {"description": "API keys are on and `x-api-key` is missing or unknown."},
    403: {"description": "This API key may not use this model."},
    406: {"description": "Not enough credits left on this API key."},
    413: {"description": "Body or image larger than the configured limit."},
    429: {"description": "This API key's rate or concurrency limit; see `Retry-After`."},
    502: {"description": "The model runner is unreachable."},
    504: {"description": "Generation exceeded its deadline."},
}


def make_router(serving: Serving) -> APIRouter:
    """The v1 routes of the models `serving` serves."""
    router = APIRouter(prefix="/v1", tags=["v1 (synchronous)"], route_class=ParsedBodyRoute)
    for model in serving.runners:
        spec = serving.served(model)
        router.add_api_route(
            f"/{model}",
            v1_route(serving, spec),
            methods=["POST"],
            summary=f"{model}: {spec.summary}",
            operation_id=f"generate_{model.replace('.', '_').replace('-', '_')}",
            response_class=Response,
            responses={**IMAGE_RESPONSES, **spec.v1_responses},
        )
    return router


def v1_route(serving: Serving, spec: ModelSpec) -> Callable[..., Awaitable[Response]]:
    """The endpoint of `POST /v1/{spec.name}`: its caller admitted (key, model, request rate:
    gateway/tenancy/admission.py) and its body validated by FastAPI before it runs."""
    Body = spec.request  # a type: FastAPI reads it from the annotation
    Admitted = admitted_to(spec.name)

    async def generate_route(body: Body, request: Request, tenant: Admitted) -> Response:
        return await generate(serving, request, spec, body, tenant)

    return generate_route


async def generate(
    serving: Serving, request: Request, spec: ModelSpec, body: BaseModel, tenant: Tenant
) -> Response:
    """With an `Idempotency-Key` the first answer may be sent again instead
    (gateway/idempotency.py); else accept, run and settle the job."""
    state = request.app.state
    # A claim outlives its request only when its Gateway dies: then it expires after this.
    pending_ttl_s = serving.settings.generation_timeout_s + IDEMPOTENT_PENDING_MARGIN_S
    claim = await state.idempotency.begin(request, tenant, pending_ttl_s=pending_ttl_s)
    if isinstance(claim, Response):
        return claim
    return await answer_once(claim, lambda: _generate(serving, request, spec, body, tenant))


async def _generate(
    serving: Serving, request: Request, spec: ModelSpec, body: BaseModel, tenant: Tenant
) -> Response:
    accepting = serving.accept(
        tenant,
        spec.name,
        body,
        request_id=request.state.request_id,
        slot_id=uuid.uuid4().hex,  # never the caller's request id: it need not be unique
        slot_ttl_s=serving.rate_limits.v1_slot_ttl_s,
    )
    async with accepting as accepted:
        # Whatever fails in here (a failed job, 502, 504, the caller gone...) settles the job
        # as failed: its credits given back.
        result = await while_connected(request, serving.run(spec.name, accepted.job))
        if result.failure is not None:
            raise failure_error(result.failure, request.state.request_id)
    await serving.settle(tenant.name, accepted.slot_id, accepted.charge.amount, succeeded=True)
    response = v1_response(
        result, as_base64=spec.wants_base64(body), media_type=spec.media_type(body)
    )
    response.headers.update(accepted.charge.headers())
    response.headers.update(ignored_fields_headers(ignored_fields(request, spec.request)))
    return response


async def while_connected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result, unless the caller disconnects first: then `work` is cancelled (the
    runner is told to drop the job, gateway/runner_client.py) and a 499 raised, so the charge
    is refunded and the concurrency slot freed. Starlette does not cancel a request whose
    client went away; without this, abandoned generations ran and were charged."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise ApiError(CLIENT_GONE, "the client closed the request")
    finally:
        task.cancel()  # a no-op once done; else this request itself was cancelled


# How a job's failure answers in v1: unusable input is the client's 400, a blocked result 422,
# a job that failed alone in the runner (runners/batching.py) a 500 naming the request id, one
# the runner dropped because nobody waited for it any more (runners/deadlines.py) a 504.
FAILURE_STATUS = {"invalid_input": 400, "blocked": 422, "internal": 500, "expired": 504}


def failure_error(failure: JobFailure, request_id: str) -> ApiError:
    if failure.kind == "internal":
        return ApiError(500, f"{failure.message} (request id {request_id})")
    details = [{"field": failure.field, "message": failure.message}] if failure.field else None
    return ApiError(FAILURE_STATUS[failure.kind], failure.message, details=details)
