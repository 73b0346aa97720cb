"""flux-depth-pro: FLUX.1 Depth [dev] in diffusers' FluxControlPipeline, with content safety.

One request, in order: screen the prompt against the term list; expand it when prompt upsampling
is asked for (and screen the expansion); estimate the depth map of the control image (the shared
depth preprocessor); generate; score the image with the safety classifier. A blocked prompt or
image is a JobFailure of kind "blocked" with no images: never a blank or blurred picture.
"""

from __future__ import annotations

import logging
import threading
import time

import torch
from diffusers import FluxControlPipeline
from PIL import Image

from models.store import require_model
from runners.depth import DepthEstimator
from runners.device import pick_device, pick_dtype, set_cpu_threads
from runners.encoding import encode_image
from runners.jobs import FluxDepthJob, GenerationResult, JobFailure
from runners.prompt_filter import PromptFilter
from runners.safety import SafetyChecker
from runners.upsampler import make_upsampler
from settings import Settings

logger = logging.getLogger(__name__)

MAX_SEQUENCE_LENGTH = 512  # T5 tokens of the prompt FLUX.1 [dev] attends to
PROMPT_BLOCKED = "the prompt was blocked by the content filter: it contains {term!r}"
UPSAMPLED_PROMPT_BLOCKED = (
    "the upsampled prompt was blocked by the content filter: it contains {term!r}; "
    "try again without prompt_upsampling"
)
IMAGE_BLOCKED = (
    "the generated image was blocked by the safety checker at safety_tolerance {tolerance}; "
    "a higher safety_tolerance is more permissive"
)


class FluxDepthPipeline:
    def __init__(self, settings: Settings) -> None:
        self.device = pick_device(settings)
        set_cpu_threads(settings, self.device)
        # bf16 on GPU: FLUX.1 was trained in it, and fp16 overflows in its activations.
        self.dtype = pick_dtype(settings, self.device, gpu_default=torch.bfloat16)
        flux_dir = require_model(settings, "flux-depth-dev")
        depth_dir = require_model(settings, "depth-estimator")
        safety_dir = require_model(settings, "safety-checker")

        self.pipe = FluxControlPipeline.from_pretrained(flux_dir, dtype=self.dtype)
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.depth = DepthEstimator(depth_dir, self.device, self.dtype)
        self.safety = SafetyChecker(
            safety_dir, self.device, self.dtype, thresholds=settings.safety_thresholds
        )
        self.prompt_filter = PromptFilter.from_file(settings.blocked_terms_file)
        self.upsampler = make_upsampler(settings, self.device, self.dtype)
        # One pipeline call at a time per process: concurrent calls would only fight for the
        # same device. The scheduler is reset by every call (set_timesteps), so one pipeline
        # serves every request.
        self._lock = threading.Lock()
        logger.info(
            "flux_depth loaded: profile=%s device=%s dtype=%s terms=%d upsampler=%s",
            settings.profile,
            self.device,
            self.dtype,
            len(self.prompt_filter.terms),
            type(self.upsampler).__name__,
        )

    def run(self, job: FluxDepthJob) -> GenerationResult:
        start = time.perf_counter()

        def failed(message: str, prompt_used: str | None = None) -> GenerationResult:
            return GenerationResult(
                request_id=job.request_id,
                images=[],
                seed=job.seed,
                inference_time=time.perf_counter() - start,
                failure=JobFailure(kind="blocked", message=message),
                prompt_used=prompt_used,
            )

        term = self.prompt_filter.blocked_term(job.prompt)
        if term is not None:
            return failed(PROMPT_BLOCKED.format(term=term))

        size = (job.width, job.height)
        control = job.control_image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        prompt, prompt_used = job.prompt, None
        with self._lock:
            if job.prompt_upsampling:
                prompt = prompt_used = self.upsampler(job.prompt)
                # The expansion is new text: it passes the same screen as the user's.
                term = self.prompt_filter.blocked_term(prompt)
                if term is not None:
                    return failed(UPSAMPLED_PROMPT_BLOCKED.format(term=term), prompt_used)
            depth_map = self.depth(control, size)
            image = self.pipe(
                prompt=prompt,
                control_image=depth_map,
                height=job.height,
                width=job.width,
                num_inference_steps=job.steps,
                guidance_scale=job.guidance,
                generator=torch.Generator(device=self.device).manual_seed(job.seed),
                max_sequence_length=MAX_SEQUENCE_LENGTH,
            ).images[0]
            score = self.safety.score(image)

        if self.safety.blocks(score, job.safety_tolerance):
            logger.info(
                "request %s blocked: score %.4f at tolerance %d",
                job.request_id,
                score,
                job.safety_tolerance,
            )
            return failed(IMAGE_BLOCKED.format(tolerance=job.safety_tolerance), prompt_used)
        return GenerationResult(
            request_id=job.request_id,
            images=[encode_image(image, job.output_format)],
            seed=job.seed,
            inference_time=time.perf_counter() - start,
            prompt_used=prompt_used,
        )
