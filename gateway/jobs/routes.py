"""v2: asynchronous generation. Submit, one route per served model made from its registry entry,
admits and validates exactly as v1 and has the serving layer accept the job (gateway/serving.py),
then queues it and answers at once; the worker (gateway/jobs/worker.py) runs and settles it; the
request routes report on it, to the key that submitted it only, until it expires."""

# No `from __future__ import annotations` here: `submit_route` annotates its endpoint with the
# model's schema and admission, and FastAPI reads those annotations as objects.

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from gateway import webhooks
from gateway.http.errors import ApiError
from gateway.http.parsed_body import ParsedBodyRoute, parsed_body
from gateway.idempotency import answer_once
from gateway.jobs.store import TERMINAL, JobRecord, JobStore, QueueFull
from gateway.responses import (
    V2Cancelled,
    V2Failed,
    V2FinalBody,
    V2Status,
    V2Submitted,
    response_url,
    status_url,
    v2_result_headers,
)
from gateway.schemas.ignored_fields import ignored_fields, ignored_fields_headers
from gateway.schemas.registry import ModelSpec
from gateway.serving import Serving
from gateway.tenancy.admission import admitted_to
from gateway.tenancy.api_keys import Authenticated, Tenant
from gateway.tenancy.rate_limits import JOB_SLOT_TTL_S, too_many

# A submit's Idempotency-Key claim expires this long after a Gateway died submitting; a second
# submit with the key waits for the first's answer up to the image fetch timeout and this.
IDEMPOTENT_PENDING_TTL_S = 120.0
IDEMPOTENT_WAIT_MARGIN_S = 5.0
TAGS: list[str | Any] = ["v2 (asynchronous)"]

SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": V2Submitted, "description": "Queued."},
    400: {"description": "Malformed JSON, a bad field, or an undecodable image."},
    401: {"description": "API keys are on and `x-api-key` is missing or unknown."},
    403: {"description": "This API key may not use this model."},
    406: {"description": "Not enough credits left on this API key."},
    429: {
        "description": "The queue is full, or this API key's rate or concurrency limit; "
        "retry after `Retry-After` seconds."
    },
}
_FAILED_422 = {"model": V2Failed, "description": "The job FAILED; `error` says why."}
STATUS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": V2Status, "description": "QUEUED, PROCESSING, COMPLETED or CANCELLED."},
    422: _FAILED_422,
}
RESULT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": V2FinalBody,
        "description": "The final body (a CANCELLED job's: its status body).",
    },
    202: {"model": V2Status, "description": "Not done yet: the status body."},
    422: _FAILED_422,
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
OUTPUT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image bytes, in the request's output format.",
        "content": {"image/jpeg": _BINARY, "image/png": _BINARY},
    },
}
CANCEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": V2Cancelled,
        "description": "Cancelled: the status body, status CANCELLED; the credits are given back.",
    },
    404: {"description": "Unknown or expired request id, or another API key's."},
    409: {"description": "The request has already ended (COMPLETED, FAILED or CANCELLED)."},
}


def make_submit_router(serving: Serving) -> APIRouter:
    """`POST /v2/{model}` of each model `serving` serves."""
    router = APIRouter(prefix="/v2", tags=TAGS, route_class=ParsedBodyRoute)
    for model in serving.runners:
        spec = serving.served(model)
        router.add_api_route(
            f"/{model}",
            submit_route(serving, spec),
            methods=["POST"],
            summary=f"{model}: submit; poll status_url, then fetch response_url",
            operation_id=f"submit_{model.replace('.', '_').replace('-', '_')}",
            responses=SUBMIT_RESPONSES,
        )
    return router


def submit_route(serving: Serving, spec: ModelSpec) -> Callable[..., Awaitable[Response]]:
    """The endpoint of `POST /v2/{spec.name}`: admitted and validated as v1's."""
    Body = spec.request  # a type: FastAPI reads it from the annotation
    Admitted = admitted_to(spec.name)

    async def submit(body: Body, request: Request, tenant: Admitted) -> Response:
        # With an Idempotency-Key, the first submit's answer again (the same request id); a
        # second submit racing the first waits a moment for it (gateway/idempotency.py).
        claim = await request.app.state.idempotency.begin(
            request,
            tenant,
            pending_ttl_s=IDEMPOTENT_PENDING_TTL_S,
            wait_s=serving.settings.url_fetch_timeout_s + IDEMPOTENT_WAIT_MARGIN_S,
        )
        if isinstance(claim, Response):
            return claim
        return await answer_once(claim, lambda: _submit(serving, request, spec, body, tenant))

    return submit


async def _submit(
    serving: Serving, request: Request, spec: ModelSpec, body: BaseModel, tenant: Tenant
) -> JSONResponse:
    settings = serving.settings
    data = parsed_body(request)
    webhook, webhook_events = await webhooks.webhook_of(data, tenant, settings)  # 400
    job_id = uuid.uuid4().hex
    base_url = (settings.public_base_url or str(request.base_url)).rstrip("/")
    accepting = serving.accept(
        tenant, spec.name, body, request_id=job_id, slot_id=job_id, slot_ttl_s=JOB_SLOT_TTL_S
    )
    # The job keeps its slot and its charge until it ends (the worker or a cancel settles it);
    # whatever fails before it is queued settles it here.
    async with accepting as accepted:
        record = JobRecord(
            id=job_id,
            model=spec.name,
            # Off the event loop: encoding the job's images takes a while for large inputs.
            payload=await asyncio.to_thread(accepted.job.model_dump_json),
            as_base64=spec.wants_base64(body),
            media_type=spec.media_type(body),
            base_url=base_url,
            submitted_at=time.time(),
            owner=tenant.name,
            credits_charged=accepted.charge.amount,
            webhook=webhook,
            webhook_events=webhook_events,
        )
        await _enqueue(request, record)  # 429: the queue is full
    ignored = [
        name for name in ignored_fields(request, spec.request) if name not in webhooks.SUBMIT_FIELDS
    ]
    answer = V2Submitted(
        request_id=job_id,
        status_url=status_url(base_url, job_id),
        response_url=response_url(base_url, job_id),
        status="QUEUED",
        ignored_fields=ignored or None,
    )
    headers = {**accepted.charge.headers(), **ignored_fields_headers(ignored)}
    return JSONResponse(answer.body(), headers=headers)


def _store(request: Request) -> JobStore:
    return request.app.state.job_store


async def _record(request: Request, request_id: str, tenant: Tenant) -> JobRecord:
    record = await _store(request).get(request_id)
    # Another key's job answers as if it did not exist: its status and images stay its own.
    if record is None or record.owner != tenant.name:
        raise ApiError(404, f"no request '{request_id}' (unknown, or its result has expired)")
    return record


async def _enqueue(request: Request, record: JobRecord) -> None:
    try:
        await _store(request).submit(record)
    except QueueFull as exc:
        retry_after = request.app.state.settings.queue_retry_after_s
        raise too_many("queue", retry_after, "the queue is full; retry later") from exc


def _status_body(record: JobRecord) -> dict:
    webhook = webhooks.status_details(record) if record.webhook else None
    error = (record.error or "generation failed") if record.status == "FAILED" else None
    return V2Status.model_validate(
        {"request_id": record.id, "status": record.status, "error": error, "webhook": webhook}
    ).body()


router = APIRouter(prefix="/v2", tags=TAGS)


@router.get(
    "/requests/{request_id}/status", summary="A request's status", responses=STATUS_RESPONSES
)
async def status(request_id: str, request: Request, tenant: Authenticated) -> JSONResponse:
    record = await _record(request, request_id, tenant)
    code = 422 if record.status == "FAILED" else 200
    return JSONResponse(_status_body(record), status_code=code)


@router.get(
    "/requests/{request_id}",
    summary="A request's final body (202 until it is done)",
    responses=RESULT_RESPONSES,
)
async def result(request_id: str, request: Request, tenant: Authenticated) -> JSONResponse:
    record = await _record(request, request_id, tenant)
    if record.status not in TERMINAL:
        return JSONResponse(_status_body(record), status_code=202)
    headers = await request.app.state.credits.remaining_headers(tenant)
    if record.status == "COMPLETED" and record.result is not None:
        headers.update(v2_result_headers(record.result))
        return JSONResponse(record.result, headers=headers)
    if record.status == "CANCELLED":
        return JSONResponse(_status_body(record), headers=headers)
    return JSONResponse(record.result or _status_body(record), status_code=422, headers=headers)


@router.get(
    "/requests/{request_id}/output/{index}",
    summary="Image `index` of a result",
    response_class=Response,
    responses=OUTPUT_RESPONSES,
)
async def output(request_id: str, index: int, request: Request, tenant: Authenticated) -> Response:
    record = await _record(request, request_id, tenant)
    image = await _store(request).get_image(request_id, index)
    if image is None:
        raise ApiError(404, f"request '{request_id}' has no output {index}")
    return Response(image, media_type=record.media_type)


@router.post(
    "/requests/{request_id}/cancel",
    summary="Cancel a queued or running request",
    responses=CANCEL_RESPONSES,
)
async def cancel(request_id: str, request: Request, tenant: Authenticated) -> JSONResponse:
    """A queued job ends CANCELLED at once; a running one too, and its worker (on whichever
    replica) stops the runner's work at its next step. Its credits are given back."""
    record = await _record(request, request_id, tenant)
    cancelled, status = await _store(request).cancel(request_id)
    if status is None:  # expired between the two reads
        raise ApiError(404, f"no request '{request_id}' (unknown, or its result has expired)")
    if not cancelled:
        raise ApiError(409, f"request '{request_id}' has already ended: {status}")
    serving: Serving = request.app.state.serving
    await serving.settle(record.owner, record.id, record.credits_charged, succeeded=False)
    headers = await serving.credits.remaining_headers(tenant)
    return JSONResponse(
        V2Cancelled(request_id=request_id, status="CANCELLED").body(), headers=headers
    )
