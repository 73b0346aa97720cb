"""The sd15_depth runner (serves sd1.5-controlnet-depth): its API, the job it takes and the
BentoML service that runs it.

torch and diffusers are imported in `__init__`, inside the runner's own process, so importing
this module (as the Gateway does, for the job type and to declare its dependency) stays light.
"""

from __future__ import annotations

import bentoml
from pydantic import BaseModel, ConfigDict, Field

from protocol.jobs import OutputFormat, PILImage, Text
from runners.scheduler import Scheduler
from runners.service_config import GenerationResults, runner_service_config
from settings import get_settings

SETTINGS = get_settings()
# The output long side in the `full` profile (the hosted API's): the Gateway sizes jobs to it and
# the runner warms up at it (settings.long_side).
FULL_LONG_SIDE = 512


class SD15DepthJob(BaseModel):
    """One sd1.5-controlnet-depth request: `samples` images, sample i seeded with `seed + i`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    request_id: str
    prompt: Text
    negative_prompt: Text = ""
    image: PILImage
    samples: int = Field(ge=1)
    scheduler: str
    num_inference_steps: int = Field(ge=1)
    guidance_scale: float
    strength: float = Field(gt=0, le=1)
    seed: int = Field(ge=0)
    width: int = Field(ge=8)
    height: int = Field(ge=8)
    output_format: OutputFormat = "JPEG"
    deadline: float | None = None  # see Abandonable in protocol/jobs.py
    token: str = ""


@bentoml.service(name="sd15_depth", **runner_service_config(SETTINGS))
class SD15Depth:
    def __init__(self) -> None:
        from runners.sd15_pipeline import SD15DepthPipelines

        self.pipelines = SD15DepthPipelines.from_store(SETTINGS)
        # The runner's own queue: it builds each pipeline call (runners/scheduler.py).
        self.scheduler = Scheduler(
            "sd15_depth",
            self.pipelines.call_key,
            self.pipelines.run_call,
            SETTINGS.sd15_max_batch_size,
            prepare=self.pipelines.prepare,
        )

    @bentoml.api
    async def generate(self, jobs: list[SD15DepthJob]) -> GenerationResults:
        """Run the jobs, one result each, once the pipeline calls holding their samples end.
        Jobs nobody waits for any more are not run (runners/deadlines.py)."""
        return await self.scheduler.submit(jobs)

    @bentoml.api
    async def cancel(self, tokens: list[str]) -> int:
        """The Gateway's callers of these requests went away: their jobs are not started, and
        a call running only them stops at its next step."""
        self.scheduler.cancel(tokens)
        return len(tokens)
