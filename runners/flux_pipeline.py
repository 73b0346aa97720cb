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
from diffusers import AutoencoderKL, FluxControlPipeline, FluxTransformer2DModel
from PIL import Image
from transformers import CLIPTextModel, T5EncoderModel

from models.store import require_model, runner_models
from protocol.jobs import GenerationResult, JobFailure
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
from runners.flux_depth import FULL_LONG_SIDE, FluxDepthJob
from runners.preparation import Preparations
from runners.prompt_filter import PromptFilter
from runners.safety import SafetyChecker
from runners.startup import StartupTimer, load_largest_first, load_placement
from runners.upsampler import LLMUpsampler, Upsampler, make_upsampler
from settings import Settings

logger = logging.getLogger(__name__)

# Prepared inputs kept waiting per sample of a full call: a few calls' worth of queued jobs.
PREPARED_PER_SAMPLE = 4
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
    """Serves requests from loaded parts; `from_store` loads them (as diffusers' pipelines take
    their modules in `__init__` and load in `from_pretrained`)."""

    def __init__(
        self,
        pipe: FluxControlPipeline,
        depth: DepthEstimator,
        safety: SafetyChecker,
        prompt_filter: PromptFilter,
        upsampler: Upsampler,
        device: torch.device,
        max_batch_size: int,
        text_tokens: int,
    ) -> None:
        """`pipe` on `device` or offloaded to it; `text_tokens`: the T5 sequence length."""
        self.pipe = pipe
        self.pipe.set_progress_bar_config(disable=True)
        self.depth = depth
        self.safety = safety
        self.prompt_filter = prompt_filter
        self.upsampler = upsampler
        self.device = device
        self.max_batch_size = max_batch_size
        self.text_tokens = text_tokens
        # Depth maps of queued jobs, ahead of their call.
        self.preparations = Preparations(
            "flux_depth", capacity=PREPARED_PER_SAMPLE * max_batch_size
        )
        # One pipeline call at a time per process: concurrent calls would only fight for the
        # same device. The scheduler is reset by every call (set_timesteps), so one pipeline
        # serves every request.
        self._lock = threading.Lock()

    @classmethod
    def from_store(cls, settings: Settings) -> FluxDepthPipeline:
        """The runner from the model store's weights, as settings say."""
        # Start-up only (load, accelerate, warm up): a caller with parts of its own does its own.
        timer = StartupTimer("flux_depth")
        device = pick_device(settings)
        set_cpu_threads(settings, device)
        # bf16 on GPU: FLUX.1 was trained in it, and fp16 overflows in its activations.
        accelerations = resolve_accelerations(settings, device, gpu_dtype=torch.bfloat16)
        dtype = accelerations.dtype
        flux_dir = require_model(settings, "flux-depth-dev")
        depth_dir = require_model(settings, "depth-estimator")
        safety_dir = require_model(settings, "safety-checker")
        timer.read_weights(settings, runner_models(settings, "flux_depth"))

        upsampler_dir = (
            require_model(settings, "prompt-upsampler")
            if "prompt-upsampler" in runner_models(settings, "flux_depth")
            else None  # the rule-based upsampler: no weights
        )

        with timer.phase("build"):
            placement = load_placement(accelerations, device)
            # Each model on its own, largest first (runners/startup.py says why), then the
            # pipeline around them: it reads only the tokenizers' and scheduler's files.
            models = load_largest_first(
                {
                    "transformer": (
                        flux_dir / "transformer",
                        lambda: FluxTransformer2DModel.from_pretrained(
                            flux_dir, subfolder="transformer", torch_dtype=dtype, **placement
                        ),
                    ),
                    "text_encoder_2": (
                        flux_dir / "text_encoder_2",
                        lambda: T5EncoderModel.from_pretrained(
                            flux_dir, subfolder="text_encoder_2", dtype=dtype, **placement
                        ),
                    ),
                    "text_encoder": (
                        flux_dir / "text_encoder",
                        lambda: CLIPTextModel.from_pretrained(
                            flux_dir, subfolder="text_encoder", dtype=dtype, **placement
                        ),
                    ),
                    "vae": (
                        flux_dir / "vae",
                        lambda: AutoencoderKL.from_pretrained(
                            flux_dir, subfolder="vae", torch_dtype=dtype, **placement
                        ),
                    ),
                    "depth": (
                        depth_dir,
                        lambda: DepthEstimator.from_pretrained(depth_dir, device, dtype),
                    ),
                    "safety": (
                        safety_dir,
                        lambda: SafetyChecker.from_pretrained(
                            safety_dir, device, dtype, thresholds=settings.safety_thresholds
                        ),
                    ),
                    "upsampler": (
                        upsampler_dir,
                        lambda: make_upsampler(settings, device, dtype),
                    ),
                }
            )
            depth = models.pop("depth")
            safety = models.pop("safety")
            upsampler = models.pop("upsampler")
            pipe = FluxControlPipeline.from_pretrained(flux_dir, **models)
        with timer.phase("to_device"):
            placed = place_on_device(accelerations, pipe, device)
        timer.loaded(
            *pipe.components.values(),
            depth.model,
            safety.model,
            upsampler.model if isinstance(upsampler, LLMUpsampler) else None,
        )
        with timer.phase("accelerations"):
            accelerated = accelerate(
                accelerations,
                {"transformer": pipe.transformer, "vae": pipe.vae},
                compiled=("transformer",),
            )
            accelerated.update(placed)
            guard_finite_decode(pipe.vae, "flux_depth")
        pipeline = cls(
            pipe=pipe,
            depth=depth,
            safety=safety,
            prompt_filter=PromptFilter.from_file(settings.blocked_terms_file),
            upsampler=upsampler,
            device=device,
            max_batch_size=settings.flux_max_batch_size,
            text_tokens=settings.flux_text_tokens(),
        )
        if accelerations.warmup:
            side = settings.long_side(FULL_LONG_SIDE)  # the output size
            with timer.phase("warmup"):
                accelerated["warmup"] = warm_up(lambda: pipeline._warm_up(side))
        log_accelerations("flux_depth", accelerations, accelerated)
        logger.info(
            "flux_depth loaded: profile=%s device=%s dtype=%s terms=%d upsampler=%s",
            settings.profile,
            device,
            dtype,
            len(pipeline.prompt_filter.terms),
            type(pipeline.upsampler).__name__,
        )
        timer.ready()
        return pipeline

    def _warm_up(self, side: int) -> None:
        """One generation at the default output size, as a request runs it (depth map, T5 at
        its full sequence length, VAE decode, safety score), only with fewer steps."""
        blank = Image.new("RGB", (side, side))
        image = self.pipe(
            prompt="warm-up",
            control_image=self.depth(blank, (side, side)),
            height=side,
            width=side,
            num_inference_steps=WARMUP_STEPS,
            generator=torch.Generator(device=self.device).manual_seed(0),
            max_sequence_length=self.text_tokens,
        ).images[0]
        self.safety.score(image)

    def run(self, job: FluxDepthJob) -> GenerationResult:
        return self.run_batch([job])[0]

    def run_batch(self, jobs: list[FluxDepthJob]) -> list[GenerationResult]:
        """One result per job. Jobs with the same size, steps and guidance share one pipeline
        call, each with its own prompt, seed and depth map; each image is screened at its own
        job's tolerance."""
        return run_batched(jobs, self.call_key, self.run_call, self.max_batch_size)

    def prepare(self, job: FluxDepthJob) -> None:
        """Start the job's depth map while the running call denoises (runners/preparation.py);
        the call takes it."""
        size = (job.width, job.height)
        self.preparations.start(job.control_image, ("depth", size), lambda: self._depth(job, size))

    def _depth(self, job: FluxDepthJob, size: tuple[int, int]) -> Image.Image:
        """The depth map of the control image at the output size."""
        resized = job.control_image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        return self.depth(resized, size)

    @staticmethod
    def call_key(job: FluxDepthJob) -> tuple:
        """What must be equal for jobs to share one pipeline call (T5 prompts are always
        padded to the same length: no prompt splits a call)."""
        return (job.width, job.height, job.steps, job.guidance)

    def run_call(self, jobs: list[FluxDepthJob]) -> list[GenerationResult]:
        """Screen each prompt, then one pipeline call for the jobs that pass."""
        start = time.perf_counter()
        results: dict[int, GenerationResult] = {}
        passed: list[tuple[int, str, str | None]] = []
        for index, job in enumerate(jobs):
            prompt, prompt_used, blocked = self._screened_prompt(job)
            if blocked is not None:
                results[index] = _failed(job, blocked, prompt_used, start)
            else:
                passed.append((index, prompt, prompt_used))
        if passed:
            group = [jobs[index] for index, _, _ in passed]
            images, scores = self._generate(group, [prompt for _, prompt, _ in passed])
            elapsed = time.perf_counter() - start
            for (index, prompt, prompt_used), job, image, score in zip(
                passed, group, images, scores, strict=True
            ):
                if self.safety.blocks(score, job.safety_tolerance):
                    logger.info(
                        "request %s blocked: score %.4f at tolerance %d",
                        job.request_id,
                        score,
                        job.safety_tolerance,
                    )
                    message = IMAGE_BLOCKED.format(tolerance=job.safety_tolerance)
                    results[index] = _failed(job, message, prompt_used, start)
                    continue
                results[index] = GenerationResult(
                    request_id=job.request_id,
                    images=[encode_image(image, job.output_format)],
                    seed=job.seed,
                    inference_time=elapsed,
                    prompt_used=prompt_used,
                    prompt_truncated=self._truncated(prompt),
                    batch_size=len(group),
                )
        return [results[i] for i in range(len(jobs))]

    def _truncated(self, prompt: str) -> bool:
        """Whether T5 sees only the start of `prompt`: its tokens (with the end token) past the
        sequence length the pipeline cuts them to. (CLIP gives Flux only a pooled summary.)"""
        return len(self.pipe.tokenizer_2(prompt).input_ids) > self.text_tokens

    def _screened_prompt(self, job: FluxDepthJob) -> tuple[str, str | None, str | None]:
        """(prompt to generate from, the upsampled prompt if any, why it is blocked if it is)."""
        term = self.prompt_filter.blocked_term(job.prompt)
        if term is not None:
            return job.prompt, None, PROMPT_BLOCKED.format(term=term)
        if not job.prompt_upsampling:
            return job.prompt, None, None
        with self._lock:
            prompt = self.upsampler(job.prompt)
        # The expansion is new text: it passes the same screen as the user's.
        term = self.prompt_filter.blocked_term(prompt)
        if term is not None:
            return prompt, prompt, UPSAMPLED_PROMPT_BLOCKED.format(term=term)
        return prompt, prompt, None

    def _generate(
        self, jobs: list[FluxDepthJob], prompts: list[str]
    ) -> tuple[list[Image.Image], list[float]]:
        """One pipeline call for jobs of one size, steps and guidance; with safety scores."""
        first = jobs[0]
        size = (first.width, first.height)
        with self._lock:
            depth_maps = [
                self.preparations.take(
                    job.control_image, ("depth", size), lambda job=job: self._depth(job, size)
                )
                for job in jobs
            ]
            images = self.pipe(
                prompt=prompts,
                control_image=depth_maps,
                height=first.height,
                width=first.width,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance,
                generator=[
                    torch.Generator(device=self.device).manual_seed(job.seed) for job in jobs
                ],
                max_sequence_length=self.text_tokens,
                # Stops the call once nobody waits for any of its jobs (runners/deadlines.py).
                callback_on_step_end=deadlines.stop_when_abandoned(jobs),
            ).images
            scores = [self.safety.score(image) for image in images]
        return images, scores


def _failed(
    job: FluxDepthJob, message: str, prompt_used: str | None, start: float
) -> GenerationResult:
    return GenerationResult.failed(
        job,
        JobFailure(kind="blocked", message=message),
        inference_time=time.perf_counter() - start,
        prompt_used=prompt_used,
    )
