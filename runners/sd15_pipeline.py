"""sd1.5-controlnet-depth: SD1.5 + a depth ControlNet, text-to-image and img2img forms.

Both forms share one set of weights. Every call builds a lightweight pipeline object around the
loaded modules with its own scheduler, so per-request state (scheduler, timesteps) never leaks.
"""

from __future__ import annotations

import logging
import threading
import time

import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetPipeline,
)
from PIL import Image

from models.store import require_model
from runners.depth import DepthEstimator
from runners.device import pick_device, pick_dtype, set_cpu_threads
from runners.encoding import encode_image
from runners.jobs import GenerationResult, SD15DepthJob
from runners.schedulers import make_scheduler
from settings import Settings

logger = logging.getLogger(__name__)


class SD15DepthPipelines:
    def __init__(self, settings: Settings) -> None:
        self.device = pick_device(settings)
        set_cpu_threads(settings, self.device)
        self.dtype = pick_dtype(settings, self.device, gpu_default=torch.float16)
        base_dir = require_model(settings, "sd15-base")
        controlnet_dir = require_model(settings, "sd15-controlnet-depth")
        depth_dir = require_model(settings, "depth-estimator")

        controlnet = ControlNetModel.from_pretrained(controlnet_dir, torch_dtype=self.dtype)
        base = StableDiffusionControlNetPipeline.from_pretrained(
            base_dir,
            controlnet=controlnet,
            safety_checker=None,
            requires_safety_checker=False,
            torch_dtype=self.dtype,
        )
        base.to(self.device)
        self.components = base.components
        self.scheduler_config = base.scheduler.config
        self.depth = DepthEstimator(depth_dir, self.device, self.dtype)
        # One pipeline call at a time per process: concurrent calls would only fight for the
        # same device; adaptive batching is what runs several requests in one call.
        self._lock = threading.Lock()
        logger.info(
            "sd15_depth loaded: profile=%s device=%s dtype=%s",
            settings.profile,
            self.device,
            self.dtype,
        )

    def _pipeline(
        self, scheduler_name: str, img2img: bool
    ) -> StableDiffusionControlNetPipeline | StableDiffusionControlNetImg2ImgPipeline:
        cls = (
            StableDiffusionControlNetImg2ImgPipeline
            if img2img
            else StableDiffusionControlNetPipeline
        )
        components = {
            **self.components,
            "scheduler": make_scheduler(scheduler_name, self.scheduler_config),
        }
        pipe = cls(**components, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def run(self, job: SD15DepthJob) -> GenerationResult:
        start = time.perf_counter()
        size = (job.width, job.height)
        init_image = job.image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        # strength 1 means "from noise, guided by depth only": the text-to-image form is exact,
        # where img2img at strength 1 would still mix in a trace of the input.
        img2img = job.strength < 1.0
        with self._lock:
            depth_map = self.depth(init_image, size)
            pipe = self._pipeline(job.scheduler, img2img)
            generators = [
                torch.Generator(device=self.device).manual_seed(job.seed + i)
                for i in range(job.samples)
            ]
            common = {
                "prompt": [job.prompt] * job.samples,
                "negative_prompt": [job.negative_prompt] * job.samples,
                "num_inference_steps": job.num_inference_steps,
                "guidance_scale": job.guidance_scale,
                "generator": generators,
                "height": job.height,
                "width": job.width,
            }
            if img2img:
                output = pipe(
                    image=init_image, control_image=depth_map, strength=job.strength, **common
                )
            else:
                output = pipe(image=depth_map, **common)
        images = [encode_image(image, job.output_format) for image in output.images]
        return GenerationResult(
            request_id=job.request_id,
            images=images,
            seed=job.seed,
            inference_time=time.perf_counter() - start,
        )
