"""v1: synchronous generation. Admit the caller, validate, normalise, charge, call the runner,
answer with the result."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from gateway.http.errors import ApiError
from gateway.http.openapi import V1_BASE64_SCHEMA
from gateway.idempotency import answer_once
from gateway.responses import v1_response
from gateway.schemas import flux_depth, insta_depth, instantid, sd15_depth
from gateway.schemas.ignored_fields import ignored_fields, ignored_fields_headers
from gateway.schemas.registry import MODEL_SPECS
from gateway.tenancy.admission import admitted_to
from gateway.tenancy.api_keys import Tenant
from protocol.jobs import JobFailure

router = APIRouter(prefix="/v1", tags=["v1 (synchronous)"])

# Key, model and request rate, checked before the body is validated (401/403/429 before 400).
SD15Admitted = admitted_to(sd15_depth.MODEL)
InstantIDAdmitted = admitted_to(instantid.MODEL)
InstaDepthAdmitted = admitted_to(insta_depth.MODEL)
FluxAdmitted = admitted_to(flux_depth.MODEL)

DISCONNECT_POLL_S = 0.25  # how often a generation checks that its caller is still there
CLIENT_GONE = 499  # the caller closed the connection (nginx's code; nobody reads the answer)
IDEMPOTENT_PENDING_MARGIN_S = 60.0  # beyond the generation deadline: image fetches, the queue
T = TypeVar("T")

IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image bytes; JSON with base64 images when `base64` is true or "
        "more than one image was asked for. Fields the model does not take are ignored and "
        "named in the `x-ignored-fields` header.",
        "content": {"image/jpeg": {}, "application/json": {"schema": V1_BASE64_SCHEMA}},
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


async def generate(request: Request, model: str, body: BaseModel, tenant: Tenant) -> Response:
    """The caller is admitted (key, model, request rate: gateway/tenancy/admission.py) and
    `body` valid; with an `Idempotency-Key` the first answer may be sent again instead
    (gateway/idempotency.py); else on to `_generate`."""
    state = request.app.state
    # A claim outlives its request only when its Gateway dies: then it expires after this.
    pending_ttl_s = state.settings.generation_timeout_s + IDEMPOTENT_PENDING_MARGIN_S
    claim = await state.idempotency.begin(request, tenant, pending_ttl_s=pending_ttl_s)
    if isinstance(claim, Response):
        return claim
    return await answer_once(claim, lambda: _generate(request, model, body, tenant))


async def _generate(request: Request, model: str, body: BaseModel, tenant: Tenant) -> Response:
    """A concurrency slot, the images decoded into a job, the credits, the runner."""
    spec = MODEL_SPECS[model]
    state = request.app.state
    async with state.rate_limits.in_flight(tenant):  # 429: too many jobs at once
        job = await spec.to_job(body, request.state.request_id, state.settings)
        async with state.credits.charge(tenant, model, spec.credit_cost(body)) as charge:  # 406
            # Whatever fails in here (a failed job, 502, 504, the caller gone...) gives the
            # credits back.
            runner = state.runners[model]
            [result] = await while_connected(request, runner.generate([job], model=model))
            if result.failure is not None:
                raise failure_error(result.failure, request.state.request_id)
    response = v1_response(
        result, as_base64=spec.wants_base64(body), media_type=spec.media_type(body)
    )
    response.headers.update(charge.headers())
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


@router.post(
    "/sd1.5-controlnet-depth",
    summary="sd1.5-controlnet-depth: SD1.5 guided by the depth map of `image`",
    response_class=Response,
    responses=IMAGE_RESPONSES,
)
async def sd15_controlnet_depth(
    body: sd15_depth.SD15DepthRequest, request: Request, tenant: SD15Admitted
) -> Response:
    return await generate(request, sd15_depth.MODEL, body, tenant)


FACE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **IMAGE_RESPONSES,
    400: {
        "description": "Malformed JSON, a bad field, an undecodable image, or no face found in "
        "`face_image` or `pose_image` (the error names the field)."
    },
}


@router.post(
    "/instantid",
    summary="instantid: SDXL keeping the identity of the largest face in `face_image`",
    response_class=Response,
    responses=FACE_RESPONSES,
)
async def instantid_route(
    body: instantid.InstantIDRequest, request: Request, tenant: InstantIDAdmitted
) -> Response:
    return await generate(request, instantid.MODEL, body, tenant)


@router.post(
    "/insta-depth",
    summary="insta-depth: instantid, posed by the face and depth map of `pose_image`",
    response_class=Response,
    responses=FACE_RESPONSES,
)
async def insta_depth_route(
    body: insta_depth.InstaDepthRequest, request: Request, tenant: InstaDepthAdmitted
) -> Response:
    return await generate(request, insta_depth.MODEL, body, tenant)


FLUX_RESPONSES: dict[int | str, dict[str, Any]] = {
    **IMAGE_RESPONSES,
    200: {
        "description": "The image bytes, JPEG or PNG per `output_format`. With "
        "`prompt_upsampling`, the `x-prompt-used` header holds the prompt used, "
        "percent-encoded UTF-8. `x-prompt-truncated: true` when the prompt ran past the T5 "
        "token limit and was cut there. Fields the model does not take are ignored and named in "
        "the `x-ignored-fields` header.",
        "content": {"image/jpeg": {}, "image/png": {}},
    },
    422: {"description": "The prompt or the generated image was blocked by the safety checks."},
}


@router.post(
    "/flux-depth-pro",
    summary="flux-depth-pro: FLUX.1 Depth [dev] guided by the depth map of `control_image`",
    response_class=Response,
    responses=FLUX_RESPONSES,
)
async def flux_depth_pro(
    body: flux_depth.FluxDepthRequest, request: Request, tenant: FluxAdmitted
) -> Response:
    return await generate(request, flux_depth.MODEL, body, tenant)
