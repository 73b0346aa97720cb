"""instantid and insta-depth: one SDXL base, held once, with InstantID's IdentityNet and face
IP-Adapter, plus (insta-depth) an SDXL depth ControlNet fed the depth map of the pose image.

A job becomes: the largest face of `face_image` (its embedding is the identity), the largest face
of `pose_image` or else of `face_image` (its keypoints, drawn, drive the IdentityNet; its padded
box is the face-region mask), then `instantid_sampler.sample`. Every call builds a lightweight
pipeline object with its own scheduler; strengths, masks and the set of ControlNets travel in the
call, so nothing of one request stays behind for the next.
"""

from __future__ import annotations

import logging
import threading
import time

import torch
from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionXLPipeline
from PIL import Image

from models.manifest import INSTANTID_IDENTITYNET_FOLDER, INSTANTID_IP_ADAPTER_FILE
from models.store import require_model
from runners.depth import DepthEstimator
from runners.device import pick_device, pick_dtype, set_cpu_threads
from runners.encoding import encode_image
from runners.faces import DetectedFace, FaceAnalyzer, draw_keypoints, face_region_mask
from runners.instantid_sampler import ControlUnit, SampleRequest, sample
from runners.ip_adapter_attention import use_per_call_scale
from runners.jobs import GenerationResult, InstantIDJob, JobFailure
from settings import Settings

logger = logging.getLogger(__name__)


class InstantIDPipelines:
    def __init__(self, settings: Settings) -> None:
        self.device = pick_device(settings)
        self.dtype = pick_dtype(settings, self.device, gpu_default=torch.float16)
        set_cpu_threads(settings, self.device)
        instantid_dir = require_model(settings, "instantid")
        vae = AutoencoderKL.from_pretrained(
            require_model(settings, "sdxl-vae"), torch_dtype=self.dtype
        )
        base = StableDiffusionXLPipeline.from_pretrained(
            require_model(settings, "sdxl-base"), vae=vae, torch_dtype=self.dtype
        )
        # diffusers reads InstantID's ip-adapter.bin; no CLIP image encoder: the face embedding
        # comes from insightface.
        base.load_ip_adapter(
            str(instantid_dir),
            subfolder="",
            weight_name=INSTANTID_IP_ADAPTER_FILE,
            image_encoder_folder=None,
        )
        self.face_projection = use_per_call_scale(base.unet)
        base.to(self.device)
        self.face_projection.to(self.device, self.dtype)
        self.components = {
            name: module
            for name, module in base.components.items()
            if name not in ("image_encoder", "feature_extractor")
        }
        self.scheduler_config = base.scheduler.config
        self.identitynet = ControlNetModel.from_pretrained(
            instantid_dir, subfolder=INSTANTID_IDENTITYNET_FOLDER, torch_dtype=self.dtype
        ).to(self.device)
        self.depth_controlnet = ControlNetModel.from_pretrained(
            require_model(settings, "sdxl-controlnet-depth"), torch_dtype=self.dtype
        ).to(self.device)
        self.depth = DepthEstimator(
            require_model(settings, "depth-estimator"), self.device, self.dtype
        )
        self.faces = FaceAnalyzer(
            require_model(settings, "face-analysis"), use_cuda=self.device.type == "cuda"
        )
        # One pipeline call at a time per process: concurrent calls would only fight for the
        # same device.
        self._lock = threading.Lock()
        logger.info(
            "instantid loaded: profile=%s device=%s dtype=%s",
            settings.profile,
            self.device,
            self.dtype,
        )

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
        start = time.perf_counter()
        with self._lock:
            identity = self.faces.largest_face(job.face_image)
            if identity is None:
                return _no_face(job, "face_image", start)
            pose_face = identity
            if job.pose_image is not None:
                pose_face = self.faces.largest_face(job.pose_image, embed=False)
                if pose_face is None:
                    return _no_face(job, "pose_image", start)
            request = self._sample_request(job, identity, pose_face)
            images = sample(self._pipeline(), self.face_projection, request)
        return GenerationResult(
            request_id=job.request_id,
            images=[encode_image(image, job.output_format) for image in images],
            seed=job.seed,
            inference_time=time.perf_counter() - start,
        )

    def _sample_request(
        self, job: InstantIDJob, identity: DetectedFace, pose_face: DetectedFace
    ) -> SampleRequest:
        size = (job.width, job.height)
        framing = job.pose_image if job.pose_image is not None else job.face_image
        # Faces were found on the input image; the output has its aspect ratio at another size.
        face = pose_face.scaled(job.width / framing.width, job.height / framing.height)
        controls = [
            ControlUnit(
                model=self.identitynet,
                image=draw_keypoints(face.keypoints, size),
                scale=job.identity_strength,
                sees_face=True,
                mask=face_region_mask(face.box, size) if job.enhance_face_region else None,
            )
        ]
        if job.depth_strength is not None:
            pose = job.pose_image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
            controls.append(
                ControlUnit(
                    model=self.depth_controlnet,
                    image=self.depth(pose, size),
                    scale=job.depth_strength,
                    sees_face=False,
                )
            )
        return SampleRequest(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            face_embedding=identity.embedding,
            adapter_scale=job.adapter_strength,
            controls=controls,
            num_inference_steps=job.num_inference_steps,
            guidance_scale=job.guidance_scale,
            width=job.width,
            height=job.height,
            seeds=[job.seed + i for i in range(job.samples)],
        )


def _no_face(job: InstantIDJob, field: str, start: float) -> GenerationResult:
    return GenerationResult(
        request_id=job.request_id,
        images=[],
        seed=job.seed,
        inference_time=time.perf_counter() - start,
        failure=JobFailure(kind="invalid_input", field=field, message=f"no face found in {field}"),
    )
