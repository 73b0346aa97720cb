"""A stand-in sd15_depth runner for end-to-end tests (`bentoml serve
tests.support.crashing_runner:CrashingSD15`, named by DEPTHID_SD15_RUNNER_URL): the same
`generate` and `cancel` APIs as runners/sd15_depth.py, answering a small JPEG at once, except
that a job whose prompt holds "crash" kills its process (SIGKILL) every time, as a job that
crashes a real runner would. Each crash first appends a line to the file CRASH_LOG_ENV names."""

from __future__ import annotations

import io
import os
import signal

import bentoml
from PIL import Image

from protocol.jobs import GenerationResult
from runners.sd15_depth import SD15DepthJob
from runners.service_config import GenerationResults

CRASH_LOG_ENV = "DEPTHID_TEST_CRASH_LOG"


def _jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 40, 20)).save(buffer, format="JPEG")
    return buffer.getvalue()


@bentoml.service(name="sd15_depth")
class CrashingSD15:
    @bentoml.api
    async def generate(self, jobs: list[SD15DepthJob]) -> GenerationResults:
        for job in jobs:
            if "crash" in job.prompt:
                with open(os.environ[CRASH_LOG_ENV], "a") as log:
                    log.write(f"{job.request_id}\n")
                os.kill(os.getpid(), signal.SIGKILL)
        return [
            GenerationResult(
                request_id=job.request_id,
                images=[_jpeg(job.width, job.height)],
                seed=job.seed,
                inference_time=0.01,
            )
            for job in jobs
        ]

    @bentoml.api
    async def cancel(self, tokens: list[str]) -> int:
        return len(tokens)
