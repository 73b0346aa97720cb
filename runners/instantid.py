"""BentoML service for the instantid runner (serves instantid and insta-depth on one SDXL base).

torch, diffusers and insightface are imported in `__init__`, inside the runner's own process, so
importing this module (as the Gateway does to declare its dependency) stays light.
"""

from __future__ import annotations

import bentoml

from runners.jobs import GenerationResult, InstantIDJob
from runners.service_config import runner_service_config
from settings import get_settings


@bentoml.service(name="instantid", **runner_service_config(get_settings()))
class InstantID:
    def __init__(self) -> None:
        from runners.instantid_pipeline import InstantIDPipelines

        self.pipelines = InstantIDPipelines(get_settings())

    @bentoml.api
    def generate(self, jobs: list[InstantIDJob]) -> list[GenerationResult]:
        """Run each job; a job without a usable face answers its failure, not an exception.
        Batch-shaped, so adaptive batching can be switched on later without any caller
        changing."""
        return [self.pipelines.run(job) for job in jobs]
