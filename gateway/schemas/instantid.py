"""instantid: request schema (ranges and defaults from the hosted endpoint's page)."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from gateway.http.examples import picture
from gateway.schemas.base import RequestSchema
from gateway.schemas.images import DecodedImage, input_side_limit, load_image
from gateway.schemas.normalize import MAX_SEED, output_size, resolve_seed
from gateway.schemas.styles import NO_STYLE, StyleName, apply_style
from runners.instantid import FULL_LONG_SIDE, InstantIDJob
from settings import Settings

MODEL = "instantid"
SIZE_MULTIPLE = 64  # the contract: SDXL output sides are multiples of 64
# What /docs says of its v1 answers beside what every model's say (gateway/v1.py).
V1_RESPONSES = {
    400: {
        "description": "Malformed JSON, a bad field, an undecodable image, or no face found in "
        "`face_image` or `pose_image` (the error names the field)."
    },
}


class InstantIDRequest(RequestSchema):
    face_image: str = Field(
        description="The identity: http(s) URL, data: URI, or base64 (JPEG/PNG/WebP). Its "
        "largest face is used."
    )
    prompt: str = Field(
        min_length=1,
        description="Prompt to render: any length; A1111 weights `(words:1.2)`, `(words)`, "
        "`[words]`.",
    )
    negative_prompt: str = Field(default="", description="Prompts to exclude.")
    style: StyleName = Field(default=NO_STYLE, description="Style to apply to the prompts.")
    samples: int = Field(default=1, ge=1, le=4, description="Number of samples to generate.")
    num_inference_steps: int = Field(default=10, ge=4, le=100, description="Denoising steps.")
    guidance_scale: float = Field(default=5, ge=1, le=25, description="Classifier-free guidance.")
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED, description="-1 = random.")
    identity_strength: float = Field(
        default=0.8, ge=0, le=1, description="IdentityNet (face keypoints) strength."
    )
    adapter_strength: float = Field(
        default=0.8, ge=0, le=1, description="IP-Adapter (face embedding) strength."
    )
    enhance_face_region: bool = Field(
        default=True,
        description="Confine the IdentityNet and the face embedding to the (padded) face box.",
    )
    pose_image: str | None = Field(
        default=None,
        description="Optional pose: its largest face's keypoints and the output's aspect ratio.",
    )
    base64: bool = Field(default=False, description="Answer JSON with base64 images.")


def example() -> dict[str, Any]:
    """The /docs example: it answers 200 as it stands (tiny: `full`'s face detector finds no
    face in a synthetic one)."""
    return {
        "summary": "A synthetic face (tiny profile; put a photo here in full)",
        "value": {
            "face_image": picture("face.png"),
            "prompt": "photo of a man",
            "style": "Watercolor",
            "seed": 42,
        },
    }


# Face and pose images are kept at input_side_limit() of the output, but never below this: the
# identity embedding is a crop of the face at the image's own resolution (the detector looks at a
# 640 px view of it), and InstantID's reference app resizes face images to 1024-1280 px.
MIN_FACE_INPUT_SIDE = 1280


async def load_faces(
    face_image: str, pose_image: str | None, settings: Settings
) -> tuple[DecodedImage, DecodedImage | None]:
    """The decoded face image and, when given, pose image, decoded side by side (two URLs are
    fetched at once). When both are faulty, the error is face_image's, as if taken in turn."""
    max_side = max(input_side_limit(settings.long_side(FULL_LONG_SIDE)), MIN_FACE_INPUT_SIDE)
    loading_face = load_image(face_image, field="face_image", settings=settings, max_side=max_side)
    if pose_image is None:
        return await loading_face, None
    face, pose = await asyncio.gather(
        loading_face,
        load_image(pose_image, field="pose_image", settings=settings, max_side=max_side),
        return_exceptions=True,
    )
    if isinstance(face, BaseException):
        raise face
    if isinstance(pose, BaseException):
        raise pose
    return face, pose


def framed_size(
    face: DecodedImage, pose: DecodedImage | None, settings: Settings
) -> tuple[int, int]:
    """The output size: the pose (or else face) image's aspect ratio, the runner's long side."""
    framing = pose if pose is not None else face
    long_side = settings.long_side(FULL_LONG_SIDE)
    return output_size(framing.width, framing.height, long_side, SIZE_MULTIPLE)


async def to_job(body: InstantIDRequest, request_id: str, settings: Settings) -> InstantIDJob:
    face, pose = await load_faces(body.face_image, body.pose_image, settings)
    width, height = framed_size(face, pose, settings)
    prompt, negative_prompt = apply_style(body.style, body.prompt, body.negative_prompt)
    return InstantIDJob(
        request_id=request_id,
        prompt=prompt,
        negative_prompt=negative_prompt,
        face_image=face.image,
        pose_image=pose.image if pose is not None else None,
        samples=body.samples,
        num_inference_steps=body.num_inference_steps,
        guidance_scale=body.guidance_scale,
        seed=resolve_seed(body.seed),
        identity_strength=body.identity_strength,
        adapter_strength=body.adapter_strength,
        enhance_face_region=body.enhance_face_region,
        width=width,
        height=height,
        output_format="JPEG",
    )
