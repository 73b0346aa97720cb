"""The InstantID denoising loop on an SDXL base: text + face IP-Adapter in the UNet, and any
number of ControlNets, each with its own scale, optional mask and cross-attention context.

Everything a call varies (prompts, face, scales, masks, which ControlNets, seeds, size) arrives
in a `SampleRequest`; the loaded modules are only read. That is why this is a loop of its own
rather than a diffusers pipeline: InstantID needs the IdentityNet to attend to the face tokens
instead of the text, its residuals masked to the face region, and the adapter scale per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, StableDiffusionXLPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import nn

from runners.ip_adapter_attention import SCALE_KWARG


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet's part in a call."""

    model: ControlNetModel
    image: Image.Image  # the condition, at the output size
    scale: float
    # IdentityNet attends to the face tokens, as InstantID trained it; others to the prompt.
    sees_face: bool
    # Where its residuals act (L, 255 = fully); None: everywhere.
    mask: Image.Image | None = None


@dataclass(frozen=True)
class SampleRequest:
    prompt: str
    negative_prompt: str
    face_embedding: np.ndarray  # (512,) ArcFace embedding of the identity
    adapter_scale: float
    controls: list[ControlUnit]
    num_inference_steps: int
    guidance_scale: float
    width: int
    height: int
    seeds: list[int]  # one image per seed


@torch.inference_mode()
def sample(
    pipe: StableDiffusionXLPipeline, face_projection: nn.Module, request: SampleRequest
) -> list[Image.Image]:
    """Generate one image per seed. `pipe` must hold a scheduler of its own (it is stepped)."""
    unet, device, dtype = pipe.unet, pipe.unet.device, pipe.unet.dtype
    batch = len(request.seeds)
    # As diffusers: at guidance 1 the unconditional half changes nothing, so it is not run.
    guided = request.guidance_scale > 1.0

    prompt_embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        device=device,
        num_images_per_prompt=batch,
        do_classifier_free_guidance=guided,
    )
    embedding = torch.as_tensor(request.face_embedding, device=device, dtype=dtype)
    embedding = embedding.reshape(1, 1, -1).expand(batch, -1, -1)
    face_tokens = face_projection(embedding)
    # SDXL micro-conditioning: original size, crop top-left, target size.
    time_ids = torch.tensor(
        [[request.height, request.width, 0, 0, request.height, request.width]],
        device=device,
        dtype=dtype,
    ).expand(batch, -1)
    if guided:
        # The unconditional half: negative prompt, and (as InstantID) a zero face embedding.
        face_tokens = torch.cat([face_projection(torch.zeros_like(embedding)), face_tokens])
        prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
        pooled = torch.cat([negative_pooled, pooled])
        time_ids = torch.cat([time_ids, time_ids])
    rows = prompt_embeds.shape[0]
    added_cond = {"text_embeds": pooled, "time_ids": time_ids}
    controls = [
        (unit, _control_tensor(unit.image, rows, device, dtype), _mask_tensor(unit.mask, device))
        for unit in request.controls
        if unit.scale > 0  # a ControlNet at scale 0 adds exactly nothing: skip it
    ]

    generators = [torch.Generator(device=device).manual_seed(seed) for seed in request.seeds]
    scale_factor = pipe.vae_scale_factor
    shape = (
        batch,
        unet.config.in_channels,
        request.height // scale_factor,
        request.width // scale_factor,
    )
    scheduler = pipe.scheduler
    latents = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
    scheduler.set_timesteps(request.num_inference_steps, device=device)
    latents = latents * scheduler.init_noise_sigma

    for t in scheduler.timesteps:
        model_input = torch.cat([latents, latents]) if guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        down, mid = None, None
        for unit, image, mask in controls:
            unit_down, unit_mid = unit.model(
                model_input,
                t,
                encoder_hidden_states=face_tokens if unit.sees_face else prompt_embeds,
                controlnet_cond=image,
                conditioning_scale=unit.scale,
                added_cond_kwargs=added_cond,
                return_dict=False,
            )
            if mask is not None:
                unit_down = [_masked(residual, mask) for residual in unit_down]
                unit_mid = _masked(unit_mid, mask)
            down = (
                unit_down if down is None else [a + b for a, b in zip(down, unit_down, strict=True)]
            )
            mid = unit_mid if mid is None else mid + unit_mid
        noise = unet(
            model_input,
            t,
            encoder_hidden_states=(prompt_embeds, face_tokens),
            cross_attention_kwargs={SCALE_KWARG: request.adapter_scale},
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            added_cond_kwargs=added_cond,
            return_dict=False,
        )[0]
        if guided:
            unconditional, conditional = noise.chunk(2)
            noise = unconditional + request.guidance_scale * (conditional - unconditional)
        latents = scheduler.step(noise, t, latents, return_dict=False)[0]

    vae = pipe.vae
    decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(decoded, output_type="pil")


def _control_tensor(
    image: Image.Image, rows: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """A ControlNet condition: RGB in 0..1, (rows, 3, H, W)."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    return pixels.permute(2, 0, 1)[None].expand(rows, -1, -1, -1).to(device, dtype)


def _mask_tensor(mask: Image.Image | None, device: torch.device) -> torch.Tensor | None:
    if mask is None:
        return None
    weights = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)
    return weights[None, None].to(device)


def _masked(residual: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`residual` weighted by `mask` resized to its grid (each block's resolution)."""
    weights = F.interpolate(mask, size=residual.shape[-2:], mode="bilinear", align_corners=False)
    return residual * weights.to(residual.dtype)
