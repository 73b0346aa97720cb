"""Every answer body the API gives, as Pydantic models: the routes build their bodies from them
and the OpenAPI document is generated from them (so the two cannot drift). Also the headers
every generation answer carries, and the one place that builds the URLs of a v2 result.

The models forbid fields they do not name (`additionalProperties: false` in the document), so a
body that grows a field the document lacks fails tests/gateway/test_answers_match_schema.py.
Optional fields are left out of a body when they have no value, never sent as null.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from protocol.jobs import GenerationResult

PROMPT_USED_HEADER = "x-prompt-used"
PROMPT_TRUNCATED_HEADER = "x-prompt-truncated"

Status = Literal["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"]


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def body(self) -> dict:
        """The JSON body: fields without a value left out."""
        return self.model_dump(mode="json", exclude_none=True)


# --- errors ------------------------------------------------------------------------------------


class FieldError(Answer):
    field: str
    message: str


class ErrorBody(Answer):
    """The contract's error body, of every 4xx and 5xx."""

    error: str = Field(min_length=1, description="What went wrong, in words.")
    details: list[FieldError] | SkipJsonSchema[None] = Field(
        default=None, description="Validation: one entry per bad field."
    )


# --- v1 ----------------------------------------------------------------------------------------


class V1Metrics(Answer):
    inference_time: float = Field(description="The runner's compute, seconds.")


class V1Images(Answer):
    """v1 with `base64` true, or more than one image asked for."""

    image: str = Field(description="The first image, base64.")
    images: list[str] = Field(description="All, base64.")
    seed: int
    metrics: V1Metrics


# --- v2 ----------------------------------------------------------------------------------------


class V2Submitted(Answer):
    request_id: str
    status_url: str = Field(description="Absolute URL of the status route.")
    response_url: str = Field(description="Absolute URL of the result route.")
    status: Literal["QUEUED"]
    ignored_fields: list[str] | SkipJsonSchema[None] = Field(
        default=None,
        description="Fields of the body the model does not take (ignored; only present when "
        "there are some, also in the `x-ignored-fields` header).",
    )


class WebhookAttempt(Answer):
    event: str
    at: float = Field(description="When it was made, Unix time.")
    status_code: int | SkipJsonSchema[None] = Field(
        default=None, description="The receiver's answer, when it answered."
    )
    error: str | SkipJsonSchema[None] = Field(default=None, description="Why it failed.")


class WebhookStatus(Answer):
    url: str
    events: list[str]
    deliveries: dict[str, Literal["pending", "delivered", "failed"]] = Field(
        description="Each event's delivery state."
    )
    attempts: list[WebhookAttempt]


class V2Status(Answer):
    """A request's status (and the body of a request not done yet, or CANCELLED)."""

    request_id: str
    status: Status
    error: str | SkipJsonSchema[None] = Field(
        default=None, description="Why it failed (FAILED only)."
    )
    webhook: WebhookStatus | SkipJsonSchema[None] = Field(
        default=None, description="The request's webhook and its deliveries, when it has one."
    )


class V2Failed(Answer):
    """The body of a FAILED request: also the contract's error body."""

    request_id: str
    status: Literal["FAILED"]
    error: str = Field(min_length=1)
    webhook: WebhookStatus | SkipJsonSchema[None] = None


class V2Metrics(Answer):
    inference_time: float = Field(description="The runner's compute, seconds.")
    queue_time: float = Field(description="Submit to start, seconds.")


class V2Result(Answer):
    """A COMPLETED request's final body."""

    request_id: str
    status: Literal["COMPLETED"]
    output: list[str] = Field(
        description="Image URLs, or base64 images when the request's `base64` was true."
    )
    seed: int
    metrics: V2Metrics
    prompt_used: str | SkipJsonSchema[None] = Field(
        default=None,
        description="With `prompt_upsampling`: the prompt used (also in `x-prompt-used`).",
    )
    prompt_truncated: Literal[True] | SkipJsonSchema[None] = Field(
        default=None,
        description="Present when the prompt ran past the T5 token limit and was cut there.",
    )


class V2Cancelled(Answer):
    request_id: str
    status: Literal["CANCELLED"]


V2FinalBody = Annotated[V2Result | V2Status, Field(description="A final or status body.")]


# --- the URLs of a v2 request ------------------------------------------------------------------


def status_url(base_url: str, request_id: str) -> str:
    return f"{base_url}/v2/requests/{request_id}/status"


def response_url(base_url: str, request_id: str) -> str:
    return f"{base_url}/v2/requests/{request_id}"


def output_url(base_url: str, request_id: str, index: int) -> str:
    return f"{base_url}/v2/requests/{request_id}/output/{index}"


# --- generation answers ------------------------------------------------------------------------


def generation_headers(
    seed: int,
    inference_time: float,
    prompt_used: str | None = None,
    prompt_truncated: bool = False,
) -> dict[str, str]:
    """The headers of every generation answer: v1's and v2's final result alike."""
    headers = {"x-seed": str(seed), "x-inference-time": f"{inference_time:.4f}"}
    if prompt_used is not None:
        # Header values must be latin-1, and a prompt is any Unicode: send it percent-encoded
        # UTF-8 (RFC 3986; urllib.parse.unquote decodes it), which is plain ASCII.
        headers[PROMPT_USED_HEADER] = quote(prompt_used, safe="")
    if prompt_truncated:
        headers[PROMPT_TRUNCATED_HEADER] = "true"
    return headers


def v2_result_headers(body: dict) -> dict[str, str]:
    """The generation headers of a completed v2 job, from its stored final body."""
    return generation_headers(
        body["seed"],
        body["metrics"]["inference_time"],
        body.get("prompt_used"),
        body.get("prompt_truncated", False),
    )


def v1_response(result: GenerationResult, as_base64: bool, media_type: str) -> Response:
    """One image and no base64: the bytes. Otherwise JSON with every image in base64."""
    headers = generation_headers(
        result.seed, result.inference_time, result.prompt_used, result.prompt_truncated
    )
    if len(result.images) == 1 and not as_base64:
        return Response(result.images[0], media_type=media_type, headers=headers)
    images = [base64.b64encode(image).decode("ascii") for image in result.images]
    body = V1Images(
        image=images[0],
        images=images,
        seed=result.seed,
        metrics=V1Metrics(inference_time=result.inference_time),
    )
    return JSONResponse(body.body(), headers=headers)


def v2_completed_body(
    request_id: str,
    result: GenerationResult,
    output: list[str],
    queue_time: float,
) -> dict:
    """The final body of a COMPLETED v2 job; `output`: its image URLs or base64 images."""
    return V2Result(
        request_id=request_id,
        status="COMPLETED",
        output=output,
        seed=result.seed,
        metrics=V2Metrics(inference_time=result.inference_time, queue_time=queue_time),
        # What v1 says in x-prompt-used / x-prompt-truncated: the v2 result answers both in its
        # body and in the same headers.
        prompt_used=result.prompt_used,
        prompt_truncated=True if result.prompt_truncated else None,
    ).body()
