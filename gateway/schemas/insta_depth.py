"""insta-depth: request schema (ranges and defaults from the hosted endpoint's page).

instantid plus an SDXL depth ControlNet fed the depth map of `pose_image`. The hosted endpoint
exposes no strengths; these fixed values are InstantID's demo defaults for identity and adapter,
and a depth weight that lets the pose's depth shape the picture without overriding the face.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from gateway.http.examples import picture
from gateway.schemas.base import RequestSchema
from gateway.schemas.instantid import framed_size, load_faces
from gateway.schemas.normalize import MAX_SEED, resolve_seed
from runners.instantid import InstantIDJob
from settings import Settings

MODEL = "insta-depth"

IDENTITY_STRENGTH = 0.8
ADAPTER_STRENGTH = 0.8
DEPTH_STRENGTH = 0.5
ENHANCE_FACE_REGION = True


class InstaDepthRequest(RequestSchema):
    face_image: str = Field(
        description="The identity: http(s) URL, data: URI, or base64 (JPEG/PNG/WebP). Its "
        "largest face is used."
    )
    pose_image: str = Field(
        description="The pose: its depth map, its largest face's keypoints and its aspect ratio."
    )
    prompt: str = Field(
        min_length=1,
        description="Prompt to render: any length; A1111 weights `(words:1.2)`, `(words)`, "
        "`[words]`.",
    )
    negative_prompt: str = Field(default="", description="Prompts to exclude.")
    num_inference_steps: int = Field(default=10, ge=4, le=100, description="Denoising steps.")
    guidance_scale: float = Field(default=3, ge=1, le=15, description="Classifier-free guidance.")
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED, description="-1 = random.")
    base64: bool = Field(default=False, description="Answer JSON with base64 images.")


def example() -> dict[str, Any]:
    """The /docs example: it answers 200 as it stands (tiny: `full`'s face detector finds no
    face in a synthetic one)."""
    return {
        "summary": "A synthetic face and pose (tiny profile; put photos here in full)",
        "value": {
            "face_image": picture("face.png"),
            "pose_image": picture("pose.png"),
            "prompt": "photo of a woman wearing a superman costume",
            "seed": 42,
        },
    }


async def to_job(body: InstaDepthRequest, request_id: str, settings: Settings) -> InstantIDJob:
    face, pose = await load_faces(body.face_image, body.pose_image, settings)
    width, height = framed_size(face, pose, settings)
    return InstantIDJob(
        request_id=request_id,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        face_image=face.image,
        pose_image=pose.image,
        samples=1,
        num_inference_steps=body.num_inference_steps,
        guidance_scale=body.guidance_scale,
        seed=resolve_seed(body.seed),
        identity_strength=IDENTITY_STRENGTH,
        adapter_strength=ADAPTER_STRENGTH,
        depth_strength=DEPTH_STRENGTH,
        enhance_face_region=ENHANCE_FACE_REGION,
        width=width,
        height=height,
        output_format="JPEG",
    )
