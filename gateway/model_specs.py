"""What the Gateway knows of each model: its request schema, how a request becomes a runner
job, and what its images are. v2 routes and the v2 worker look models up here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from gateway.schemas import sd15_depth
from runners.jobs import SD15DepthJob
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
        return bool(getattr(body, "base64", False))


MODEL_SPECS: dict[str, ModelSpec] = {
    sd15_depth.MODEL: ModelSpec(
        name=sd15_depth.MODEL,
        request=sd15_depth.SD15DepthRequest,
        job=SD15DepthJob,
        to_job=sd15_depth.to_job,
        media_type=lambda _body: "image/jpeg",
    ),
}
