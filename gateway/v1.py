"""v1: synchronous generation. Validate, normalise, call the runner, answer with the result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from gateway.errors import ApiError
from gateway.responses import v1_response
from gateway.schemas import sd15_depth
from runners.jobs import JobFailure

router = APIRouter(prefix="/v1", tags=["v1 (synchronous)"])

ToJob = Callable[[Any, str, Any], Awaitable[Any]]

IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The image bytes; JSON with base64 images when `base64` is true or "
        "more than one image was asked for.",
        "content": {"image/jpeg": {}, "application/json": {}},
    },
    400: {"description": "Malformed JSON, a bad field, or an undecodable image."},
    413: {"description": "Body or image larger than the configured limit."},
    502: {"description": "The model runner is unreachable."},
    504: {"description": "Generation exceeded its deadline."},
}


async def generate(
    request: Request, model: str, body: BaseModel, to_job: ToJob, media_type: str
) -> Response:
    settings = request.app.state.settings
    runner = request.app.state.runners[model]
    job = await to_job(body, request.state.request_id, settings)
    [result] = await runner.generate([job])
    if result.failure is not None:
        raise failure_error(result.failure)
    return v1_response(result, as_base64=body.base64, media_type=media_type)


# How a job's failure answers in v1: unusable input is the client's 400, a blocked result 422.
FAILURE_STATUS = {"invalid_input": 400, "blocked": 422}


def failure_error(failure: JobFailure) -> ApiError:
    details = [{"field": failure.field, "message": failure.message}] if failure.field else None
    return ApiError(FAILURE_STATUS[failure.kind], failure.message, details=details)


@router.post(
    "/sd1.5-controlnet-depth",
    summary="sd1.5-controlnet-depth: SD1.5 guided by the depth map of `image`",
    response_class=Response,
    responses=IMAGE_RESPONSES,
)
async def sd15_controlnet_depth(body: sd15_depth.SD15DepthRequest, request: Request) -> Response:
    return await generate(request, sd15_depth.MODEL, body, sd15_depth.to_job, "image/jpeg")
