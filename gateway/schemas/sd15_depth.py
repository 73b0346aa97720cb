"""sd1.5-controlnet-depth: request schema (ranges and defaults from the hosted endpoint's page)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from gateway.http.examples import picture
from gateway.schemas.base import RequestSchema
from gateway.schemas.images import input_side_limit, load_image
from gateway.schemas.normalize import MAX_SEED, output_size, resolve_seed
from runners.sd15_depth import FULL_LONG_SIDE, SD15DepthJob
from settings import Settings

MODEL = "sd1.5-controlnet-depth"
SIZE_MULTIPLE = 8  # SD1.5's VAE downsamples by 8

Scheduler = Literal[
    "UniPC",
    "Euler a",
    "DDIM",
    "DPM Multi",
    "DPM Single",
    "Euler",
    "Heun",
    "DPM2 a Karras",
    "DPM2 Karras",
    "LMS",
    "PNDM",
    "DDPM",
]


class SD15DepthRequest(RequestSchema):
    image: str = Field(
        description="Input image: http(s) URL, data: URI, or base64 (JPEG/PNG/WebP)."
    )
    prompt: str = Field(
        min_length=1,
        description="Prompt to render: any length; A1111 weights `(words:1.2)`, `(words)`, "
        "`[words]`.",
    )
    negative_prompt: str = Field(default="", description="Prompts to exclude.")
    samples: int = Field(default=1, ge=1, le=4, description="Number of samples to generate.")
    scheduler: Scheduler = Field(default="UniPC", description="Type of scheduler.")
    num_inference_steps: int = Field(default=20, ge=20, le=100, description="Denoising steps.")
    guidance_scale: float = Field(
        default=7.5, ge=0.1, le=25, description="Classifier-free guidance."
    )
    strength: float = Field(
        default=1.0, ge=0.1, le=1, description="img2img strength; 1 = from noise."
    )
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED, description="-1 = random.")
    base64: bool = Field(default=False, description="Answer JSON with base64 images.")


def example() -> dict[str, Any]:
    """The /docs example: it answers 200 as it stands."""
    return {
        "summary": "A small scene, its depth map guiding a new picture",
        "value": {
            "image": picture("flux_control.jpg"),
            "prompt": "a cosy cabin in a snowy forest",
            "seed": 42,
        },
    }


async def to_job(body: SD15DepthRequest, request_id: str, settings: Settings) -> SD15DepthJob:
    long_side = settings.long_side(FULL_LONG_SIDE)
    decoded = await load_image(
        body.image, field="image", settings=settings, max_side=input_side_limit(long_side)
    )
    width, height = output_size(decoded.width, decoded.height, long_side, SIZE_MULTIPLE)
    return SD15DepthJob(
        request_id=request_id,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        image=decoded.image,
        samples=body.samples,
        scheduler=body.scheduler,
        num_inference_steps=body.num_inference_steps,
        guidance_scale=body.guidance_scale,
        strength=body.strength,
        seed=resolve_seed(body.seed),
        width=width,
        height=height,
        output_format="JPEG",
    )
