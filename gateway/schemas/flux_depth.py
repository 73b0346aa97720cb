"""flux-depth-pro: request schema (ranges and defaults from the hosted endpoint's page).

One image per request and no `base64` field: the page lists neither, so the answer is always the
image bytes, in `output_format`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from gateway.http.examples import picture
from gateway.schemas.base import RequestSchema
from gateway.schemas.images import input_side_limit, load_image
from gateway.schemas.normalize import MAX_SEED, output_size, resolve_seed
from protocol.jobs import OutputFormat
from runners.flux_depth import FULL_LONG_SIDE, FluxDepthJob
from settings import Settings

MODEL = "flux-depth-pro"
SIZE_MULTIPLE = 16  # Flux's VAE downsamples by 8, then the transformer packs 2x2 patches
DEFAULT_SEED = 96522  # the hosted endpoint's default: fixed, not random
# What /docs says of its v1 answers beside what every model's say (gateway/v1.py).
V1_RESPONSES = {
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

# output_format -> (the runner's encoder format, the answer's content type)
OUTPUT_FORMATS: dict[str, tuple[OutputFormat, str]] = {
    "jpg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
}


class FluxDepthRequest(RequestSchema):
    control_image: str = Field(
        description="Control image: http(s) URL, data: URI, or base64 (JPEG/PNG/WebP). Its "
        "depth map guides the generation."
    )
    prompt: str = Field(min_length=1, description="Text prompt for image generation.")
    guidance: float = Field(
        default=7, ge=1, le=50, description="Prompt adherence; higher follows the text closer."
    )
    steps: int = Field(default=40, ge=15, le=50, description="Number of diffusion steps.")
    seed: int = Field(
        default=DEFAULT_SEED,
        ge=-1,
        le=MAX_SEED,
        description="Seed for reproducible generation; -1 = random.",
    )
    output_format: Literal["jpg", "png"] = Field(
        default="jpg", description="Format of the output image."
    )
    safety_tolerance: int = Field(
        default=2, ge=1, le=6, description="1 is the most strict, 6 the most permissive."
    )
    prompt_upsampling: bool = Field(
        default=False,
        description="Expand the prompt before generating; the prompt used is returned in the "
        "`x-prompt-used` header (percent-encoded UTF-8).",
    )


def example() -> dict[str, Any]:
    """The /docs example: it answers 200 as it stands."""
    return {
        "summary": "A small scene, its depth map guiding FLUX.1 Depth",
        "value": {
            "control_image": picture("flux_control.jpg"),
            "prompt": "a cosy cabin in a snowy forest",
            "steps": 15,
            "seed": 42,
        },
    }


def media_type(body: FluxDepthRequest) -> str:
    """The content type of the answer's image."""
    return OUTPUT_FORMATS[body.output_format][1]


async def to_job(body: FluxDepthRequest, request_id: str, settings: Settings) -> FluxDepthJob:
    long_side = settings.long_side(FULL_LONG_SIDE)
    decoded = await load_image(
        body.control_image,
        field="control_image",
        settings=settings,
        max_side=input_side_limit(long_side),
    )
    width, height = output_size(decoded.width, decoded.height, long_side, SIZE_MULTIPLE)
    return FluxDepthJob(
        request_id=request_id,
        prompt=body.prompt,
        control_image=decoded.image,
        guidance=body.guidance,
        steps=body.steps,
        seed=resolve_seed(body.seed),
        width=width,
        height=height,
        output_format=OUTPUT_FORMATS[body.output_format][0],
        safety_tolerance=body.safety_tolerance,
        prompt_upsampling=body.prompt_upsampling,
    )
