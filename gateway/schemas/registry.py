"""Every served model, one entry each: its request schema, the runner that serves it and the job
a request becomes, what its images are, what it costs and how /docs describes it. Everything
else reads the models from here: the v1 and v2 routes are made from these entries (gateway/v1.py,
gateway/jobs/routes.py), service.py starts or calls each entry's runner, and the serving layer,
the v2 worker, admission, credits, metrics and /docs look models up here.

Credits (when a key has them, see gateway/tenancy/credits.py): a request costs
``samples × steps × credits_per_step``. One credit is one denoising step of one image of
sd1.5-controlnet-depth at its full-profile size (512 px); the other models' prices per step are
rough multiples of it by GPU work per step (SDXL at 1024 px with its ControlNets; Flux's 12B
transformer at 1024 px). Recalibrate them from `depthid_generation_seconds` on your GPUs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bentoml import Service
from pydantic import BaseModel

from gateway.schemas import flux_depth, insta_depth, instantid, sd15_depth
from runners.flux_depth import FluxDepth, FluxDepthJob
from runners.instantid import InstantID, InstantIDJob
from runners.sd15_depth import SD15Depth, SD15DepthJob
from settings import Settings

ToJob = Callable[[Any, str, Settings], Awaitable[BaseModel]]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    request: type[BaseModel]  # the HTTP body's schema
    runner: Service[Any]  # the runner's BentoML service (runners/<runner>.py)
    job: type[BaseModel]  # the runner job it becomes (declared with the runner's service)
    to_job: ToJob
    media_type: Callable[[Any], str]  # content type of the images, given the request
    credits_per_step: int  # the price of one denoising step of one image
    summary: str  # the routes' one line in /docs
    # The /docs example (an OpenAPI Example object: summary, value): a body that answers 200
    # as it stands (tests/gateway/test_docs_examples.py sends every one).
    example: Callable[[], dict[str, Any]]
    steps_field: str = "num_inference_steps"  # the request field holding the step count
    # What /docs says of the v1 answers where this model differs from the others (gateway/v1.py).
    v1_responses: dict[int | str, dict[str, Any]] = field(default_factory=dict)

    def credit_cost(self, body: BaseModel) -> int:
        """Credits this request costs: samples × steps × credits_per_step."""
        samples = getattr(body, "samples", 1)  # models without `samples` make one image
        return samples * getattr(body, self.steps_field) * self.credits_per_step

    def wants_base64(self, body: BaseModel) -> bool:
        # Models without a `base64` field (flux-depth-pro) always answer with the bytes.
        return bool(getattr(body, "base64", False))


def jpeg(_body: BaseModel) -> str:
    return "image/jpeg"


MODEL_SPECS: dict[str, ModelSpec] = {
    sd15_depth.MODEL: ModelSpec(
        name=sd15_depth.MODEL,
        request=sd15_depth.SD15DepthRequest,
        runner=SD15Depth,
        job=SD15DepthJob,
        to_job=sd15_depth.to_job,
        media_type=jpeg,
        credits_per_step=1,
        summary="SD1.5 guided by the depth map of `image`",
        example=sd15_depth.example,
    ),
    instantid.MODEL: ModelSpec(
        name=instantid.MODEL,
        request=instantid.InstantIDRequest,
        runner=InstantID,
        job=InstantIDJob,
        to_job=instantid.to_job,
        media_type=jpeg,
        credits_per_step=4,
        summary="SDXL keeping the identity of the largest face in `face_image`",
        example=instantid.example,
        v1_responses=instantid.V1_RESPONSES,
    ),
    insta_depth.MODEL: ModelSpec(
        name=insta_depth.MODEL,
        request=insta_depth.InstaDepthRequest,
        runner=InstantID,
        job=InstantIDJob,
        to_job=insta_depth.to_job,
        media_type=jpeg,
        credits_per_step=5,
        summary="instantid, posed by the face and depth map of `pose_image`",
        example=insta_depth.example,
        v1_responses=instantid.V1_RESPONSES,
    ),
    flux_depth.MODEL: ModelSpec(
        name=flux_depth.MODEL,
        request=flux_depth.FluxDepthRequest,
        runner=FluxDepth,
        job=FluxDepthJob,
        to_job=flux_depth.to_job,
        media_type=flux_depth.media_type,
        credits_per_step=16,
        summary="FLUX.1 Depth [dev] guided by the depth map of `control_image`",
        example=flux_depth.example,
        steps_field="steps",
        v1_responses=flux_depth.V1_RESPONSES,
    ),
}
