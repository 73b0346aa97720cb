"""The instantid runner (serves instantid and insta-depth on one SDXL base): its API, the job it
takes and the BentoML service that runs it.

torch, diffusers and insightface are imported in `__init__`, inside the runner's own process, so
importing this module (as the Gateway does, for the job type and to declare its dependency) stays
light.
"""

from __future__ import annotations

import bentoml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.jobs import OutputFormat, PILImage, Text
from runners.scheduler import Scheduler
from runners.service_config import GenerationResults, runner_service_config
from settings import get_settings

SETTINGS = get_settings()
# The output long side in the `full` profile (the hosted API's, SDXL's): the Gateway sizes jobs to
# it and the runner warms up at it (settings.long_side).
FULL_LONG_SIDE = 1024


class InstantIDJob(BaseModel):
    """One instantid or insta-depth request: `samples` images, sample i seeded with `seed + i`.

    The prompts are final (style applied). The identity comes from the largest face of
    `face_image`; the keypoints from the largest face of `pose_image` when given, else of
    `face_image`. `depth_strength` set (insta-depth) adds the depth ControlNet, fed the depth map
    of `pose_image`; None leaves it out.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    request_id: str
    prompt: Text
    negative_prompt: Text = ""
    face_image: PILImage
    pose_image: PILImage | None = None
    samples: int = Field(ge=1)
    num_inference_steps: int = Field(ge=1)
    guidance_scale: float
    seed: int = Field(ge=0)
    identity_strength: float = Field(ge=0)
    adapter_strength: float = Field(ge=0)
    depth_strength: float | None = Field(default=None, ge=0)
    enhance_face_region: bool
    width: int = Field(ge=8)
    height: int = Field(ge=8)
    output_format: OutputFormat = "JPEG"
    deadline: float | None = None  # see Abandonable in protocol/jobs.py
    token: str = ""

    @model_validator(mode="after")
    def _depth_needs_a_pose(self) -> InstantIDJob:
        if self.depth_strength is not None and self.pose_image is None:
            raise ValueError("depth_strength needs pose_image: the depth map is taken from it")
        return self


# Copied from runners.sd15_depth.SD15Depth (its model, job type and batch size changed):
# kept a copy on purpose, see docs/architecture.md "Copies kept on purpose".
@bentoml.service(name="instantid", **runner_service_config(SETTINGS))
class InstantID:
    def __init__(self) -> None:
        from runners.instantid_pipeline import InstantIDPipelines

        self.pipelines = InstantIDPipelines.from_store(SETTINGS)
        # The runner's own queue: it builds each pipeline call (runners/scheduler.py).
        self.scheduler = Scheduler(
            "instantid",
            self.pipelines.call_key,
            self.pipelines.run_call,
            SETTINGS.instantid_max_batch_size,
            prepare=self.pipelines.prepare,
        )

    @bentoml.api
    async def generate(self, jobs: list[InstantIDJob]) -> GenerationResults:
        """Run the jobs, one result each, once the pipeline calls holding their samples end.
        Jobs nobody waits for any more are not run (runners/deadlines.py)."""
        return await self.scheduler.submit(jobs)

    @bentoml.api
    async def cancel(self, tokens: list[str]) -> int:
        """The Gateway's callers of these requests went away: their jobs are not started, and
        a call running only them stops at its next step."""
        self.scheduler.cancel(tokens)
        return len(tokens)
