"""What the Gateway knows of each model: its request schema, how a request becomes a runner
job, and what its images are. v2 routes and the v2 worker look models up here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from gateway.schemas import flux_depth, insta_depth, instantid, sd15_depth
from runners.jobs import FluxDepthJob, InstantIDJob, SD15DepthJob
from settings import Settings

ToJob = Callable[[Any, str, Settings], Awaitable[BaseModel]]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    request: type[BaseModel]  # the HTTP body's schema
    job: type[BaseModel]  # the runner job it becomes
    to_job: ToJob
    media_type: Callable[[Any], str]  # content type of the images, given the request

    def wants_base64(self, body: BaseModel) -> bool:
        # Models without a `base64` field (flux-depth-pro) always answer with the bytes.
        return bool(getattr(body, "base64", False))


def jpeg(_body: BaseModel) -> str:
    return "image/jpeg"


MODEL_SPECS: dict[str, ModelSpec] = {
    sd15_depth.MODEL: ModelSpec(
        name=sd15_depth.MODEL,
        request=sd15_depth.SD15DepthRequest,
        job=SD15DepthJob,
        to_job=sd15_depth.to_job,
        media_type=jpeg,
    ),
    instantid.MODEL: ModelSpec(
        name=instantid.MODEL,
        request=instantid.InstantIDRequest,
        job=InstantIDJob,
        to_job=instantid.to_job,
        media_type=jpeg,
    ),
    insta_depth.MODEL: ModelSpec(
        name=insta_depth.MODEL,
        request=insta_depth.InstaDepthRequest,
        job=InstantIDJob,
        to_job=insta_depth.to_job,
        media_type=jpeg,
    ),
    flux_depth.MODEL: ModelSpec(
        name=flux_depth.MODEL,
        request=flux_depth.FluxDepthRequest,
        job=FluxDepthJob,
        to_job=flux_depth.to_job,
        media_type=flux_depth.media_type,
    ),
}
