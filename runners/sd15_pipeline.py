"""sd1.5-controlnet-depth: SD1.5 + a depth ControlNet, text-to-image and img2img forms.

Both forms share one set of weights. Every call builds a lightweight pipeline object around the
loaded modules with its own scheduler, so per-request state (scheduler, timesteps) never leaks.
Prompts are encoded with long-prompt weighting (`runners/prompt_weighting.py`): no 77-token cut,
A1111 weights; a prompt without weights within 75 tokens encodes exactly as diffusers does.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextModel

from compat.diffusers_pipelines import execution_device
from models.manifest import weights_variant
from models.store import require_model, runner_models
from protocol.jobs import GenerationResult
from runners import deadlines
from runners.acceleration import (
    WARMUP_STEPS,
    accelerate,
    guard_finite_decode,
    log_accelerations,
    place_on_device,
    resolve_accelerations,
    warm_up,
)
from runners.batching import run_batched
from runners.depth import DepthEstimator
from runners.device import pick_device, set_cpu_threads
from runners.encoding import encode_image
from runners.preparation import Preparations
from runners.prompt_weighting import encode_sd15
from runners.schedulers import make_scheduler
from runners.sd15_depth import FULL_LONG_SIDE, SD15DepthJob
from runners.startup import StartupTimer, load_largest_first, load_placement
from runners.text_padding import mask_text_attention, pad_texts, padding_masked
from settings import Settings

logger = logging.getLogger(__name__)

WARMUP_SCHEDULER = "UniPC"  # the contract's default
# Prepared inputs kept waiting per sample of a full call: a few calls' worth of queued samples.
PREPARED_PER_SAMPLE = 4


class SD15DepthPipelines:
    """Serves requests from loaded parts; `from_store` loads them (as diffusers' pipelines take
    their modules in `__init__` and load in `from_pretrained`)."""

    def __init__(
        self,
        components: dict[str, Any],
        depth: DepthEstimator,
        device: torch.device,
        max_batch_size: int,
    ) -> None:
        """`components`: a StableDiffusionControlNetPipeline's (its `components`), on `device`
        or offloaded to it; every request builds a pipeline around them with its own scheduler,
        configured as `components["scheduler"]`, which itself is never used."""
        self.components = components
        self.scheduler_config = components["scheduler"].config
        self.depth = depth
        self.device = device
        self.max_batch_size = max_batch_size
        # Prompts of different lengths share a call: the text-reading modules mask the padding.
        mask_text_attention(components["unet"])
        mask_text_attention(components["controlnet"])
        # Input images and depth maps of queued samples, ahead of their call.
        self.preparations = Preparations(
            "sd15_depth", capacity=PREPARED_PER_SAMPLE * max_batch_size
        )
        # One pipeline call at a time per process: concurrent calls would only fight for the
        # same device; adaptive batching is what runs several requests in one call.
        self._lock = threading.Lock()

    @classmethod
    def from_store(cls, settings: Settings) -> SD15DepthPipelines:
        """The runner from the model store's weights (profile, fp16 files), as settings say."""
        # Start-up only (load, accelerate, warm up): a caller with parts of its own does its own.
        timer = StartupTimer("sd15_depth")
        device = pick_device(settings)
        set_cpu_threads(settings, device)
        accelerations = resolve_accelerations(settings, device, gpu_dtype=torch.float16)
        dtype = accelerations.dtype
        timer.read_weights(settings, runner_models(settings, "sd15_depth"))
        base_dir = require_model(settings, "sd15-base")
        controlnet_dir = require_model(settings, "sd15-controlnet-depth")
        depth_dir = require_model(settings, "depth-estimator")

        with timer.phase("build"):
            placement = load_placement(accelerations, device)
            base_variant = weights_variant(settings.profile, "sd15-base")
            # Each model on its own, largest first (runners/startup.py says why), then the
            # pipeline around them: it reads only the tokenizer's and scheduler's files.
            models = load_largest_first(
                {
                    "unet": (
                        base_dir / "unet",
                        lambda: UNet2DConditionModel.from_pretrained(
                            base_dir,
                            subfolder="unet",
                            torch_dtype=dtype,
                            variant=base_variant,
                            **placement,
                        ),
                    ),
                    "controlnet": (
                        controlnet_dir,
                        lambda: ControlNetModel.from_pretrained(
                            controlnet_dir,
                            torch_dtype=dtype,
                            variant=weights_variant(settings.profile, "sd15-controlnet-depth"),
                            **placement,
                        ),
                    ),
                    "text_encoder": (
                        base_dir / "text_encoder",
                        lambda: CLIPTextModel.from_pretrained(
                            base_dir,
                            subfolder="text_encoder",
                            dtype=dtype,
                            variant=base_variant,
                            **placement,
                        ),
                    ),
                    "vae": (
                        base_dir / "vae",
                        lambda: AutoencoderKL.from_pretrained(
                            base_dir,
                            subfolder="vae",
                            torch_dtype=dtype,
                            variant=base_variant,
                            **placement,
                        ),
                    ),
                    "depth": (
                        depth_dir,
                        lambda: DepthEstimator.from_pretrained(depth_dir, device, dtype),
                    ),
                }
            )
            depth = models.pop("depth")
            base = StableDiffusionControlNetPipeline.from_pretrained(
                base_dir, **models, safety_checker=None, requires_safety_checker=False
            )
        with timer.phase("to_device"):
            placed = place_on_device(accelerations, base, device)
        timer.loaded(*base.components.values(), depth.model)
        with timer.phase("accelerations"):
            accelerated = accelerate(
                accelerations,
                {"unet": base.unet, "controlnet": base.controlnet, "vae": base.vae},
                compiled=("unet", "controlnet"),
            )
            accelerated.update(placed)
            guard_finite_decode(base.vae, "sd15_depth")
        pipelines = cls(
            components=base.components,
            depth=depth,
            device=device,
            max_batch_size=settings.sd15_max_batch_size,
        )
        if accelerations.warmup:
            side = settings.long_side(FULL_LONG_SIDE)  # the output size
            with timer.phase("warmup"):
                accelerated["warmup"] = warm_up(lambda: pipelines._warm_up(side))
        log_accelerations("sd15_depth", accelerations, accelerated)
        logger.info(
            "sd15_depth loaded: profile=%s device=%s dtype=%s", settings.profile, device, dtype
        )
        timer.ready()
        return pipelines

    def _warm_up(self, side: int) -> None:
        """One text-to-image generation at the default output size, as a request runs it (depth
        map, classifier-free guidance, VAE decode), only with fewer steps."""
        blank = Image.new("RGB", (side, side))
        self._pipeline(WARMUP_SCHEDULER, img2img=False)(
            prompt="warm-up",
            image=self.depth(blank, (side, side)),
            num_inference_steps=WARMUP_STEPS,
            height=side,
            width=side,
            generator=torch.Generator(device=self.device).manual_seed(0),
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
        return self.run_batch([job])[0]

    def run_batch(self, jobs: list[SD15DepthJob]) -> list[GenerationResult]:
        """One result per job. Samples that agree on everything a pipeline call holds fixed
        (form, size, steps, scheduler, guidance, strength) share one call, each with its own
        prompt, seed, depth map and input image."""
        return run_batched(jobs, self.call_key, self.run_call, self.max_batch_size)

    def prepare(self, row: SD15DepthJob) -> None:
        """Start the sample's input image and depth map while the running call denoises
        (runners/preparation.py); `run_call` takes them."""
        size = (row.width, row.height)
        self.preparations.start(row.image, ("input", size), lambda: self._input(row.image, size))

    def _input(self, image: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
        """The input at the output size (img2img's start) and its depth map (the control)."""
        resized = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        return resized, self.depth(resized, size)

    def call_key(self, job: SD15DepthJob) -> tuple:
        """What must be equal for samples to share one pipeline call: the form, size, steps,
        scheduler, guidance and strength. Prompts of any length share one (padded and masked,
        runners/text_padding.py)."""
        img2img = job.strength < 1.0
        return (
            img2img,
            job.width,
            job.height,
            job.num_inference_steps,
            job.scheduler,
            job.guidance_scale,
            job.strength if img2img else None,
        )

    def run_call(self, rows: list[SD15DepthJob]) -> list[GenerationResult]:
        """One pipeline call for one-sample jobs with the same `call_key`."""
        start = time.perf_counter()
        first = rows[0]
        size = (first.width, first.height)
        # strength 1 means "from noise, guided by depth only": the text-to-image form is exact,
        # where img2img at strength 1 would still mix in a trace of the input.
        img2img = first.strength < 1.0
        with self._lock:
            # Samples of one request share its image object: estimate its depth once.
            prepared: dict[int, tuple[Image.Image, Image.Image]] = {}
            for row in rows:
                if id(row.image) not in prepared:
                    prepared[id(row.image)] = self.preparations.take(
                        row.image, ("input", size), lambda row=row: self._input(row.image, size)
                    )
            inputs = [prepared[id(row.image)][0] for row in rows]
            depth_maps = [prepared[id(row.image)][1] for row in rows]
            pipe = self._pipeline(first.scheduler, img2img)
            texts = [
                encode_sd15(
                    pipe.tokenizer,
                    pipe.text_encoder,
                    row.prompt,
                    row.negative_prompt,
                    execution_device(pipe),  # with model CPU offload, where the hooks move it
                )
                for row in rows
            ]
            # A prompt and its negative encode to the same length: one mask serves both halves.
            prompt_embeds, padding = pad_texts([prompt for prompt, _ in texts])
            negative_embeds, _ = pad_texts([negative for _, negative in texts])
            common = {
                "prompt_embeds": prompt_embeds,
                "negative_prompt_embeds": negative_embeds,
                "num_inference_steps": first.num_inference_steps,
                "guidance_scale": first.guidance_scale,
                "generator": [
                    torch.Generator(device=self.device).manual_seed(row.seed) for row in rows
                ],
                "height": first.height,
                "width": first.width,
                # Stops the call once nobody waits for any of its rows (runners/deadlines.py).
                "callback_on_step_end": deadlines.stop_when_abandoned(rows),
            }
            with padding_masked(padding):
                if img2img:
                    output = pipe(
                        image=inputs, control_image=depth_maps, strength=first.strength, **common
                    )
                else:
                    output = pipe(image=depth_maps, **common)
        elapsed = time.perf_counter() - start
        return [
            GenerationResult(
                request_id=row.request_id,
                images=[encode_image(image, row.output_format)],
                seed=row.seed,
                inference_time=elapsed,
                batch_size=len(rows),
            )
            for row, image in zip(rows, output.images, strict=True)
        ]
