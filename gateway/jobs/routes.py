"""v2: asynchronous generation. Submit admits and validates exactly as v1 and answers at once;
the worker (gateway/jobs/worker.py) runs the job; the request routes report on it, to the key that
submitted it only, until it expires."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.datastructures import State
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from gateway import webhooks
from gateway.http.errors import ApiError, validation_to_api_error
from gateway.http.openapi import (
    V2_CANCEL_RESPONSES,
    V2_MODEL,
    V2_OUTPUT_RESPONSES,
    V2_RESULT_RESPONSES,
    V2_STATUS_RESPONSES,
    V2_SUBMIT_BODY,
    V2_SUBMIT_OK,
)
from gateway.idempotency import answer_once
from gateway.jobs.store import TERMINAL, JobRecord, JobStore, QueueFull, Status
from gateway.responses import v2_result_headers
from gateway.schemas.ignored_fields import ignored_fields, ignored_fields_headers
from gateway.schemas.registry import MODEL_SPECS, ModelSpec
from gateway.tenancy.admission import Admitted
from gateway.tenancy.api_keys import Authenticated, Tenant
from gateway.tenancy.rate_limits import too_many

router = APIRouter(prefix="/v2", tags=["v2 (asynchronous)"])
# A submit's Idempotency-Key claim expires this long after a Gateway died submitting; a second
# submit with the key waits for the first's answer up to the image fetch timeout and this.
IDEMPOTENT_PENDING_TTL_S = 120.0
IDEMPOTENT_WAIT_MARGIN_S = 5.0


def _store(request: Request) -> JobStore:
    return request.app.state.job_store


def _spec(request: Request, model: str) -> ModelSpec:
    spec = MODEL_SPECS.get(model)
    if spec is None or model not in request.app.state.runners:
        served = ", ".join(sorted(request.app.state.runners)) or "none"
        raise ApiError(404, f"unknown model '{model}'; this server serves: {served}")
    return spec


async def _parse(request: Request, schema: type[BaseModel]) -> tuple[dict, BaseModel]:
    raw = await request.body()
    if not raw:
        raise ApiError(400, "a JSON object body is required")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from exc
    try:
        return data, schema.model_validate(data)
    except ValidationError as exc:
        raise validation_to_api_error(exc.errors()) from exc


def _base_url(request: Request) -> str:
    configured = request.app.state.settings.public_base_url
    return (configured or str(request.base_url)).rstrip("/")


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


async def on_job_finished(state: State, record: JobRecord, status: Status) -> None:
    """Called once per job, by whoever's write made the job terminal (the worker, or the cancel
    route): the job's concurrency slot is freed, and a FAILED or CANCELLED job's credits are
    given back."""
    await state.rate_limits.release_job(record.owner, record.id)
    if status in ("FAILED", "CANCELLED"):
        await state.credits.refund(record.owner, record.credits_charged)


def _status_body(record: JobRecord) -> dict:
    body = {"request_id": record.id, "status": record.status}
    if record.status == "FAILED":
        body["error"] = record.error or "generation failed"
    if record.webhook:
        body["webhook"] = webhooks.status_details(record)
    return body


@router.post(
    "/{model}",
    summary="Submit a generation; poll status_url, then fetch response_url",
    responses={
        200: V2_SUBMIT_OK,
        400: {"description": "Malformed JSON, a bad field, or an undecodable image."},
        401: {"description": "API keys are on and `x-api-key` is missing or unknown."},
        403: {"description": "This API key may not use this model."},
        404: {"description": "Unknown model."},
        406: {"description": "Not enough credits left on this API key."},
        429: {
            "description": "The queue is full, or this API key's rate or concurrency limit; "
            "retry after `Retry-After` seconds."
        },
    },
    openapi_extra=V2_SUBMIT_BODY,
)
async def submit(model: V2_MODEL, request: Request, tenant: Admitted) -> Response:
    spec = _spec(request, model)
    data, body = await _parse(request, spec.request)
    state = request.app.state
    # With an Idempotency-Key, the first submit's answer again (the same request id); a second
    # submit racing the first waits a moment for it (gateway/idempotency.py).
    claim = await state.idempotency.begin(
        request,
        tenant,
        pending_ttl_s=IDEMPOTENT_PENDING_TTL_S,
        wait_s=state.settings.url_fetch_timeout_s + IDEMPOTENT_WAIT_MARGIN_S,
    )
    if isinstance(claim, Response):
        return claim
    return await answer_once(claim, lambda: _submit(request, spec, model, data, body, tenant))


async def _submit(
    request: Request, spec: ModelSpec, model: str, data: dict, body: BaseModel, tenant: Tenant
) -> JSONResponse:
    state = request.app.state
    webhook, webhook_events = await webhooks.webhook_of(data, tenant, state.settings)  # 400
    job_id = uuid.uuid4().hex
    base_url = _base_url(request)
    # The job keeps its slot and its charge until it finishes (on_job_finished); whatever fails
    # before it is queued gives both back.
    async with state.rate_limits.job_slot(tenant, job_id):  # 429: too many jobs at once
        job = await spec.to_job(body, job_id, state.settings)  # decodes images: 400 now
        record = JobRecord(
            id=job_id,
            model=model,
            # Off the event loop: encoding the job's images takes a while for large inputs.
            payload=await asyncio.to_thread(job.model_dump_json),
            as_base64=spec.wants_base64(body),
            media_type=spec.media_type(body),
            base_url=base_url,
            submitted_at=time.time(),
            owner=tenant.name,
            webhook=webhook,
            webhook_events=webhook_events,
        )
        async with state.credits.charge(tenant, model, spec.credit_cost(body)) as charge:  # 406
            record.credits_charged = charge.amount
            await _enqueue(request, record)  # 429: the queue is full
    answer = {
        "request_id": job_id,
        "status_url": f"{base_url}/v2/requests/{job_id}/status",
        "response_url": f"{base_url}/v2/requests/{job_id}",
        "status": "QUEUED",
    }
    ignored = [
        name for name in ignored_fields(request, spec.request) if name not in webhooks.SUBMIT_FIELDS
    ]
    if ignored:
        answer["ignored_fields"] = ignored
    return JSONResponse(answer, headers={**charge.headers(), **ignored_fields_headers(ignored)})


@router.get(
    "/requests/{request_id}/status", summary="A request's status", responses=V2_STATUS_RESPONSES
)
async def status(request_id: str, request: Request, tenant: Authenticated) -> JSONResponse:
    record = await _record(request, request_id, tenant)
    code = 422 if record.status == "FAILED" else 200
    return JSONResponse(_status_body(record), status_code=code)


@router.get(
    "/requests/{request_id}",
    summary="A request's final body (202 until it is done)",
    responses=V2_RESULT_RESPONSES,
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
    responses=V2_OUTPUT_RESPONSES,
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
    responses=V2_CANCEL_RESPONSES,
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
    await on_job_finished(request.app.state, record, "CANCELLED")
    headers = await request.app.state.credits.remaining_headers(tenant)
    return JSONResponse({"request_id": request_id, "status": "CANCELLED"}, headers=headers)
