"""BentoML service for the flux_depth runner (serves flux-depth-pro).

torch and diffusers are imported in `__init__`, inside the runner's own process, so importing
this module (as the Gateway does to declare its dependency) stays light.
"""

from __future__ import annotations

import bentoml

from runners.jobs import FluxDepthJob, GenerationResult
from runners.service_config import runner_service_config
from settings import get_settings


@bentoml.service(name="flux_depth", **runner_service_config(get_settings()))
class FluxDepth:
    def __init__(self) -> None:
        from runners.flux_pipeline import FluxDepthPipeline

        self.pipeline = FluxDepthPipeline(get_settings())

    @bentoml.api
    def generate(self, jobs: list[FluxDepthJob]) -> list[GenerationResult]:
        """Run each job. Batch-shaped, so adaptive batching can be switched on later
        without any caller changing."""
        return [self.pipeline.run(job) for job in jobs]
