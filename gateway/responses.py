"""Generation answers: the headers every one carries and the v1 body shapes of the contract."""

from __future__ import annotations

import base64
from urllib.parse import quote

from fastapi.responses import JSONResponse, Response

from protocol.jobs import GenerationResult

PROMPT_USED_HEADER = "x-prompt-used"
PROMPT_TRUNCATED_HEADER = "x-prompt-truncated"


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
    body = {
        "image": images[0],
        "images": images,
        "seed": result.seed,
        "metrics": {"inference_time": result.inference_time},
    }
    return JSONResponse(body, headers=headers)
