"""BentoML service for the sd15_depth runner (serves sd1.5-controlnet-depth).

torch and diffusers are imported in `__init__`, inside the runner's own process, so importing
this module (as the Gateway does to declare its dependency) stays light.
"""

from __future__ import annotations

import bentoml

from runners.jobs import GenerationResult, SD15DepthJob
from runners.service_config import runner_service_config
from settings import get_settings


@bentoml.service(name="sd15_depth", **runner_service_config(get_settings()))
class SD15Depth:
    def __init__(self) -> None:
        from runners.sd15_pipeline import SD15DepthPipelines

        self.pipelines = SD15DepthPipelines(get_settings())

    @bentoml.api
    def generate(self, jobs: list[SD15DepthJob]) -> list[GenerationResult]:
        """Run each job. Batch-shaped, so adaptive batching can be switched on later
        without any caller changing."""
        return [self.pipelines.run(job) for job in jobs]
