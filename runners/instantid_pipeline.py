"""instantid and insta-depth: one SDXL base, held once, with InstantID's IdentityNet and face
IP-Adapter, plus (insta-depth) an SDXL depth ControlNet fed the depth map of the pose image.

A job becomes: the largest face of `face_image` (its embedding is the identity), the largest face
of `pose_image` or else of `face_image` (its keypoints, drawn, drive the IdentityNet; its padded
box is the face-region mask, for the IdentityNet and the face attention alike), then
`instantid_sampler.sample`. Every call builds a lightweight
pipeline object with its own scheduler; strengths, masks and the set of ControlNets travel in the
call, so nothing of one request stays behind for the next.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from models.manifest import (
    INSTANTID_IDENTITYNET_FOLDER,
    INSTANTID_IP_ADAPTER_FILE,
    weights_variant,
)
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
from runners.faces import DetectedFace, FaceAnalyzer, draw_keypoints, face_region_mask
from runners.instantid import FULL_LONG_SIDE, InstantIDJob
from runners.instantid_sampler import ControlUnit, Sample, SampleRequest, sample
from runners.ip_adapter_attention import use_per_call_scale
from runners.preparation import Preparations
from runners.startup import StartupTimer, load_largest_first, load_placement
from runners.text_padding import mask_text_attention
from settings import Settings

logger = logging.getLogger(__name__)

# Warm-up strengths and guidance: any non-zero strength runs its module (at 0 a ControlNet or
# the face attention is skipped), and guidance above 1 runs the unconditional half too.
WARMUP_STRENGTH = 1.0
WARMUP_GUIDANCE = 5.0
# Prepared inputs kept waiting per sample of a full call: a few calls' worth of queued samples.
PREPARED_PER_SAMPLE = 4


class InstantIDPipelines:
    """Serves requests from loaded parts; `from_store` loads them (as diffusers' pipelines take
    their modules in `__init__` and load in `from_pretrained`)."""

    def __init__(
        self,
        components: dict[str, Any],
        face_projection: torch.nn.Module,
        identitynet: ControlNetModel,
        depth_controlnet: ControlNetModel,
        depth: DepthEstimator,
        faces: FaceAnalyzer,
        device: torch.device,
        max_batch_size: int,
        face_region_padding: float,
    ) -> None:
        """`components`: a StableDiffusionXLPipeline's, whose UNet has the face IP-Adapter set up
        by `use_per_call_scale` (which returned `face_projection`); every request builds a
        pipeline around them with its own scheduler, configured as `components["scheduler"]`.
        All modules on `device` (or offloaded to it)."""
        self.components = components
        self.scheduler_config = components["scheduler"].config
        self.face_projection = face_projection
        self.identitynet = identitynet
        self.depth_controlnet = depth_controlnet
        self.depth = depth
        self.faces = faces
        self.device = device
        self.max_batch_size = max_batch_size
        self.face_region_padding = face_region_padding
        # Prompts of different lengths share a call: the modules reading the prompt mask the
        # padding (the IdentityNet reads the face tokens only).
        mask_text_attention(components["unet"])
        mask_text_attention(depth_controlnet)
        # Face analysis and depth maps of queued samples, ahead of their call.
        self.preparations = Preparations("instantid", capacity=PREPARED_PER_SAMPLE * max_batch_size)
        # One pipeline call at a time per process: concurrent calls would only fight for the
        # same device.
        self._lock = threading.Lock()

    @classmethod
    def from_store(cls, settings: Settings) -> InstantIDPipelines:
        """The runner from the model store's weights (profile, fp16 files), as settings say."""
        # Start-up only (load, accelerate, warm up): a caller with parts of its own does its own.
        timer = StartupTimer("instantid")
        device = pick_device(settings)
        accelerations = resolve_accelerations(settings, device, gpu_dtype=torch.float16)
        dtype = accelerations.dtype
        set_cpu_threads(settings, device)
        instantid_dir = require_model(settings, "instantid")
        timer.read_weights(settings, runner_models(settings, "instantid"))
        base_dir = require_model(settings, "sdxl-base")
        vae_dir = require_model(settings, "sdxl-vae")
        depth_controlnet_dir = require_model(settings, "sdxl-controlnet-depth")
        depth_dir = require_model(settings, "depth-estimator")
        identitynet_dir = instantid_dir / INSTANTID_IDENTITYNET_FOLDER
        with timer.phase("build"):
            placement = load_placement(accelerations, device)
            base_variant = weights_variant(settings.profile, "sdxl-base")
            # Each model on its own, largest first (runners/startup.py says why), then the
            # pipeline around them: it reads only the tokenizers' and scheduler's files (the
            # SDXL base's own VAE is never loaded: sdxl-vae replaces it). The IP-Adapter comes
            # last: it is loaded into the UNet.
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
                    "text_encoder_2": (
                        base_dir / "text_encoder_2",
                        lambda: CLIPTextModelWithProjection.from_pretrained(
                            base_dir,
                            subfolder="text_encoder_2",
                            dtype=dtype,
                            variant=base_variant,
                            **placement,
                        ),
                    ),
                    "vae": (
                        vae_dir,
                        lambda: AutoencoderKL.from_pretrained(
                            vae_dir, torch_dtype=dtype, **placement
                        ),
                    ),
                    "identitynet": (
                        identitynet_dir,
                        lambda: ControlNetModel.from_pretrained(
                            identitynet_dir, torch_dtype=dtype, **placement
                        ),
                    ),
                    "depth_controlnet": (
                        depth_controlnet_dir,
                        lambda: ControlNetModel.from_pretrained(
                            depth_controlnet_dir,
                            torch_dtype=dtype,
                            variant=weights_variant(settings.profile, "sdxl-controlnet-depth"),
                            **placement,
                        ),
                    ),
                    "depth": (
                        depth_dir,
                        lambda: DepthEstimator.from_pretrained(depth_dir, device, dtype),
                    ),
                }
            )
            identitynet = models.pop("identitynet")
            depth_controlnet = models.pop("depth_controlnet")
            depth = models.pop("depth")
            vae = models["vae"]
            base = StableDiffusionXLPipeline.from_pretrained(base_dir, **models)
            # diffusers reads InstantID's ip-adapter.bin; no CLIP image encoder: the face
            # embedding comes from insightface.
            base.load_ip_adapter(
                str(instantid_dir),
                subfolder="",
                weight_name=INSTANTID_IP_ADAPTER_FILE,
                image_encoder_folder=None,
            )
            face_projection = use_per_call_scale(base.unet)
            faces = FaceAnalyzer(
                require_model(settings, "face-analysis"), use_cuda=device.type == "cuda"
            )
        with timer.phase("to_device"):
            placed = place_on_device(accelerations, base, device)
            # Detached from the UNet (use_per_call_scale) and small: on the device at all times.
            face_projection.to(device, dtype)
            identitynet.to(device)
            depth_controlnet.to(device)
        timer.loaded(
            *base.components.values(), face_projection, identitynet, depth_controlnet, depth.model
        )
        components = {
            name: module
            for name, module in base.components.items()
            if name not in ("image_encoder", "feature_extractor")
        }
        with timer.phase("accelerations"):
            accelerated = accelerate(
                accelerations,
                {
                    "unet": base.unet,
                    "identitynet": identitynet,
                    "depth_controlnet": depth_controlnet,
                    "vae": vae,
                },
                compiled=("unet", "identitynet", "depth_controlnet"),
            )
            accelerated.update(placed)
            guard_finite_decode(vae, "instantid")
        pipelines = cls(
            components=components,
            face_projection=face_projection,
            identitynet=identitynet,
            depth_controlnet=depth_controlnet,
            depth=depth,
            faces=faces,
            device=device,
            max_batch_size=settings.instantid_max_batch_size,
            face_region_padding=settings.face_region_padding,
        )
        if accelerations.warmup:
            side = settings.long_side(FULL_LONG_SIDE)  # the output size
            with timer.phase("warmup"):
                accelerated["warmup"] = warm_up(lambda: pipelines._warm_up(side))
        log_accelerations(
            "instantid", accelerations, accelerated, faces=pipelines.faces.providers[0]
        )
        logger.info(
            "instantid loaded: profile=%s device=%s dtype=%s", settings.profile, device, dtype
        )
        timer.ready()
        return pipelines

    def _warm_up(self, side: int) -> None:
        """One insta-depth generation at the default output size (both ControlNets, the face
        region mask, classifier-free guidance), with a zero face embedding and fewer steps. The
        face detector runs on a blank picture (no face, so the recogniser waits for a request)."""
        size = (side, side)
        blank = Image.new("RGB", size)
        box = (side / 4, side / 4, 3 * side / 4, 3 * side / 4)
        mask = face_region_mask(box, size, self.face_region_padding)
        self.faces.largest_face(blank)
        keypoints = np.array([[0.4, 0.4], [0.6, 0.4], [0.5, 0.5], [0.4, 0.6], [0.6, 0.6]]) * side
        controls = [
            ControlUnit(
                model=self.identitynet,
                image=draw_keypoints(keypoints, size),
                scale=WARMUP_STRENGTH,
                sees_face=True,
                mask=mask,
            ),
            ControlUnit(
                model=self.depth_controlnet,
                image=self.depth(blank, size),
                scale=WARMUP_STRENGTH,
                sees_face=False,
            ),
        ]
        embedding_size = self.face_projection.proj_in.in_features
        warm = Sample(
            prompt="warm-up",
            negative_prompt="",
            face_embedding=np.zeros(embedding_size, dtype=np.float32),
            adapter_scale=WARMUP_STRENGTH,
            controls=controls,
            seed=0,
            adapter_mask=mask,
        )
        request = SampleRequest(
            samples=[warm],
            num_inference_steps=WARMUP_STEPS,
            guidance_scale=WARMUP_GUIDANCE,
            width=side,
            height=side,
        )
        sample(self._pipeline(), self.face_projection, request)

    def _pipeline(self) -> StableDiffusionXLPipeline:
        """A pipeline object around the loaded modules, with a scheduler of its own."""
        scheduler_class = type(self.components["scheduler"])
        components = {
            **self.components,
            "scheduler": scheduler_class.from_config(self.scheduler_config),
        }
        pipe = StableDiffusionXLPipeline(**components, add_watermarker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def run(self, job: InstantIDJob) -> GenerationResult:
        return self.run_batch([job])[0]

    def run_batch(self, jobs: list[InstantIDJob]) -> list[GenerationResult]:
        """One result per job. Samples of the same route (instantid or insta-depth), size,
        steps and guidance share one denoising loop, each with its own prompt, seed, face,
        keypoints, depth map, mask and strengths. A job without a usable face fails alone."""
        return run_batched(jobs, self.call_key, self.run_call, self.max_batch_size)

    def prepare(self, row: InstantIDJob) -> None:
        """Start the sample's face analysis (and insta-depth's depth map of the pose) while the
        running call denoises (runners/preparation.py); `run_call` takes the results."""
        self.preparations.start(
            row.face_image, ("face", True), lambda: self.faces.largest_face(row.face_image, True)
        )
        if row.pose_image is None:
            return
        self.preparations.start(
            row.pose_image, ("face", False), lambda: self.faces.largest_face(row.pose_image, False)
        )
        if row.depth_strength is not None:
            size = (row.width, row.height)
            self.preparations.start(
                row.pose_image, ("depth", size), lambda: self._pose_depth(row.pose_image, size)
            )

    def _pose_depth(self, pose: Image.Image, size: tuple[int, int]) -> Image.Image:
        """insta-depth's depth map: of the pose image at the output size."""
        return self.depth(pose.convert("RGB").resize(size, Image.Resampling.LANCZOS), size)

    def call_key(self, job: InstantIDJob) -> tuple:
        """What must be equal for samples to share one denoising loop: the route, size, steps
        and guidance. Prompts of any length share one (padded and masked,
        runners/text_padding.py)."""
        insta_depth = job.depth_strength is not None
        return (insta_depth, job.width, job.height, job.num_inference_steps, job.guidance_scale)

    def run_call(self, rows: list[InstantIDJob]) -> list[GenerationResult]:
        """Find each sample's faces, then one denoising loop for those that have them."""
        start = time.perf_counter()
        results: dict[int, GenerationResult] = {}
        ready: list[tuple[int, Sample]] = []
        with self._lock:
            # Samples of one request share its image objects: analyse each image once.
            faces: dict[tuple[int, bool], DetectedFace | None] = {}

            def largest_face(image: Image.Image, embed: bool) -> DetectedFace | None:
                if (id(image), embed) not in faces:
                    faces[id(image), embed] = self.preparations.take(
                        image, ("face", embed), lambda: self.faces.largest_face(image, embed)
                    )
                return faces[id(image), embed]

            for index, row in enumerate(rows):
                identity = largest_face(row.face_image, embed=True)
                pose_face = identity
                if row.pose_image is not None and identity is not None:
                    pose_face = largest_face(row.pose_image, embed=False)
                if identity is None or pose_face is None:
                    field = "face_image" if identity is None else "pose_image"
                    results[index] = _no_face(row, field, start)
                    continue
                ready.append((index, self._sample(row, identity, pose_face)))
            if ready:
                first = rows[ready[0][0]]
                request = SampleRequest(
                    samples=[sample for _, sample in ready],
                    num_inference_steps=first.num_inference_steps,
                    guidance_scale=first.guidance_scale,
                    width=first.width,
                    height=first.height,
                    # Stops the loop once nobody waits for any of these samples.
                    before_step=deadlines.stop_when_abandoned([rows[i] for i, _ in ready]),
                )
                images = sample(self._pipeline(), self.face_projection, request)
                elapsed = time.perf_counter() - start
                for (index, _), image in zip(ready, images, strict=True):
                    row = rows[index]
                    results[index] = GenerationResult(
                        request_id=row.request_id,
                        images=[encode_image(image, row.output_format)],
                        seed=row.seed,
                        inference_time=elapsed,
                        batch_size=len(ready),
                    )
        return [results[i] for i in range(len(rows))]

    def _sample(self, row: InstantIDJob, identity: DetectedFace, pose_face: DetectedFace) -> Sample:
        size = (row.width, row.height)
        framing = row.pose_image if row.pose_image is not None else row.face_image
        # Faces were found on the input image; the output has its aspect ratio at another size.
        face = pose_face.scaled(row.width / framing.width, row.height / framing.height)
        # enhance_face_region: the IdentityNet and the face attention act on the face alone.
        mask = None
        if row.enhance_face_region:
            mask = face_region_mask(face.box, size, self.face_region_padding)
        return Sample(
            prompt=row.prompt,
            negative_prompt=row.negative_prompt,
            face_embedding=identity.embedding,
            adapter_scale=row.adapter_strength,
            controls=self._controls(row, face, mask),
            seed=row.seed,
            adapter_mask=mask,
        )

    def _controls(
        self, job: InstantIDJob, face: DetectedFace, mask: Image.Image | None
    ) -> list[ControlUnit]:
        """`face`: the pose face at the output size."""
        size = (job.width, job.height)
        controls = [
            ControlUnit(
                model=self.identitynet,
                image=draw_keypoints(face.keypoints, size),
                scale=job.identity_strength,
                sees_face=True,
                mask=mask,
            )
        ]
        if job.depth_strength is not None:
            depth_map = self.preparations.take(
                job.pose_image, ("depth", size), lambda: self._pose_depth(job.pose_image, size)
            )
            controls.append(
                ControlUnit(
                    model=self.depth_controlnet,
                    image=depth_map,
                    scale=job.depth_strength,
                    sees_face=False,
                )
            )
        return controls


def _no_face(job: InstantIDJob, field: str, start: float) -> GenerationResult:
    return GenerationResult.failed(
        job,
        JobFailure(kind="invalid_input", field=field, message=f"no face found in {field}"),
        inference_time=time.perf_counter() - start,
    )
