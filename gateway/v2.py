"""v2: asynchronous generation. Submit validates exactly as v1 and answers at once; the worker
(gateway/worker.py) runs the job; the request routes report on it until it expires."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from gateway.errors import ApiError, validation_to_api_error
from gateway.job_store import JobRecord, JobStore, QueueFull
from gateway.model_specs import MODEL_SPECS, ModelSpec

router = APIRouter(prefix="/v2", tags=["v2 (asynchronous)"])


def _store(request: Request) -> JobStore:
    return request.app.state.job_store


def _spec(request: Request, model: str) -> ModelSpec:
    spec = MODEL_SPECS.get(model)
    if spec is None or model not in request.app.state.runners:
        served = ", ".join(sorted(request.app.state.runners)) or "none"
        raise ApiError(404, f"unknown model '{model}'; this server serves: {served}")
    return spec


async def _parse(request: Request, schema: type[BaseModel]) -> BaseModel:
    raw = await request.body()
    if not raw:
        raise ApiError(400, "a JSON object body is required")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from exc
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise validation_to_api_error(exc.errors()) from exc


def _base_url(request: Request) -> str:
    configured = request.app.state.settings.public_base_url
    return (configured or str(request.base_url)).rstrip("/")


async def _record(request: Request, request_id: str) -> JobRecord:
    record = await _store(request).get(request_id)
    if record is None:
        raise ApiError(404, f"no request '{request_id}' (unknown, or its result has expired)")
    return record


def _status_body(record: JobRecord) -> dict:
    body = {"request_id": record.id, "status": record.status}
    if record.status == "FAILED":
        body["error"] = record.error or "generation failed"
    return body


@router.post(
    "/{model}",
    summary="Submit a generation; poll status_url, then fetch response_url",
    responses={
        200: {"description": "Queued: request_id, status_url, response_url, status"},
        400: {"description": "Malformed JSON, a bad field, or an undecodable image."},
        404: {"description": "Unknown model."},
        429: {"description": "The queue is full; retry after `Retry-After` seconds."},
    },
)
async def submit(model: str, request: Request) -> JSONResponse:
    spec = _spec(request, model)
    body = await _parse(request, spec.request)
    settings = request.app.state.settings
    job_id = uuid.uuid4().hex
    job = await spec.to_job(body, job_id, settings)  # decodes images: bad input is a 400 now
    base_url = _base_url(request)
    record = JobRecord(
        id=job_id,
        model=model,
        # Off the event loop: encoding the job's images takes a while for large inputs.
        payload=await asyncio.to_thread(job.model_dump_json),
        as_base64=spec.wants_base64(body),
        media_type=spec.media_type(body),
        base_url=base_url,
        submitted_at=time.time(),
    )
    try:
        await _store(request).submit(record)
    except QueueFull as exc:
        raise ApiError(
            429,
            "the queue is full; retry later",
            headers={"Retry-After": str(settings.queue_retry_after_s)},
        ) from exc
    return JSONResponse(
        {
            "request_id": job_id,
            "status_url": f"{base_url}/v2/requests/{job_id}/status",
            "response_url": f"{base_url}/v2/requests/{job_id}",
            "status": "QUEUED",
        }
    )


@router.get("/requests/{request_id}/status", summary="A request's status")
async def status(request_id: str, request: Request) -> JSONResponse:
    record = await _record(request, request_id)
    code = 422 if record.status == "FAILED" else 200
    return JSONResponse(_status_body(record), status_code=code)


@router.get("/requests/{request_id}", summary="A request's final body (202 until it is done)")
async def result(request_id: str, request: Request) -> JSONResponse:
    record = await _record(request, request_id)
    if record.status == "COMPLETED" and record.result is not None:
        headers = {
            "x-seed": str(record.result["seed"]),
            "x-inference-time": f"{record.result['metrics']['inference_time']:.4f}",
        }
        return JSONResponse(record.result, headers=headers)
    if record.status == "FAILED":
        return JSONResponse(record.result or _status_body(record), status_code=422)
    return JSONResponse(_status_body(record), status_code=202)


@router.get("/requests/{request_id}/output/{index}", summary="Image `index` of a result")
async def output(request_id: str, index: int, request: Request) -> Response:
    record = await _record(request, request_id)
    image = await _store(request).get_image(request_id, index)
    if image is None:
        raise ApiError(404, f"request '{request_id}' has no output {index}")
    return Response(image, media_type=record.media_type)
