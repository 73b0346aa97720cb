"""The InstantID denoising loop on an SDXL base: text + face IP-Adapter in the UNet, and any
number of ControlNets, each with its own scale, optional mask and cross-attention context.

Everything a call varies (prompts, face, scales, masks, which ControlNets, seeds, size) arrives
in a `SampleRequest`; the loaded modules are only read. That is why this is a loop of its own
rather than a diffusers pipeline: InstantID needs the IdentityNet to attend to the face tokens
instead of the text, its residuals and the face attention masked to the face region, and the
adapter scale per call. Prompts are encoded with long-prompt weighting as InstantID's demo does
(`runners/prompt_weighting.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, StableDiffusionXLPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import nn

from compat.diffusers_pipelines import execution_device
from runners.ip_adapter_attention import MASK_KWARG, SCALE_KWARG
from runners.prompt_weighting import encode_sdxl
from runners.text_padding import pad_texts, padding_masked


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet's part in one sample."""

    model: ControlNetModel
    image: Image.Image  # the condition, at the output size
    scale: float
    # IdentityNet attends to the face tokens, as InstantID trained it; others to the prompt.
    sees_face: bool
    # Where its residuals act (L, 255 = fully); None: everywhere.
    mask: Image.Image | None = None


@dataclass(frozen=True)
class Sample:
    """One image to generate: everything that may differ between samples of one call."""

    prompt: str
    negative_prompt: str
    face_embedding: np.ndarray  # (512,) ArcFace embedding of the identity
    adapter_scale: float
    controls: list[ControlUnit]  # the call's ControlNets, in the same order in every sample
    seed: int
    # Where the face embedding's attention acts (L, 255 = fully, at the output size); None:
    # everywhere.
    adapter_mask: Image.Image | None = None


@dataclass(frozen=True)
class SampleRequest:
    """One denoising loop for a batch of samples that share steps, guidance and size."""

    samples: list[Sample]
    num_inference_steps: int
    guidance_scale: float
    width: int
    height: int
    # Called before every denoising step; may raise to stop the loop (runners/deadlines.py).
    before_step: Callable[[], object] = lambda: None


@torch.inference_mode()
def sample(
    pipe: StableDiffusionXLPipeline, face_projection: nn.Module, request: SampleRequest
) -> list[Image.Image]:
    """Generate one image per sample. `pipe` must hold a scheduler of its own (it is stepped)."""
    # The device the models run on: the UNet's, or with model CPU offload (the UNet then rests
    # on the CPU) the one the offload hooks move each model to.
    unet, device, dtype = pipe.unet, execution_device(pipe), pipe.unet.dtype
    samples = request.samples
    batch = len(samples)
    # As diffusers: at guidance 1 the unconditional half changes nothing, so it is not run.
    guided = request.guidance_scale > 1.0

    def both_halves(rows: torch.Tensor) -> torch.Tensor:
        """Per-sample rows for the model input: [unconditional; conditional] when guided."""
        return torch.cat([rows, rows]) if guided else rows

    texts = [
        encode_sdxl(
            pipe.tokenizer,
            pipe.text_encoder,
            pipe.text_encoder_2,
            s.prompt,
            s.negative_prompt,
            device,
        )
        for s in samples
    ]
    # Prompts of different lengths: padded to the longest, the padding masked out of the text
    # attention (runners/text_padding.py). A prompt and its negative have the same length.
    prompt_embeds, padding = pad_texts([text.prompt for text in texts])
    negative_embeds, _ = pad_texts([text.negative for text in texts])
    prompt_embeds = prompt_embeds.to(device, dtype)
    negative_embeds = negative_embeds.to(device, dtype)
    pooled = torch.cat([text.pooled for text in texts]).to(device, dtype)
    negative_pooled = torch.cat([text.negative_pooled for text in texts]).to(device, dtype)
    embedding = torch.stack(
        [torch.as_tensor(s.face_embedding, dtype=dtype) for s in samples]
    ).reshape(batch, 1, -1)
    embedding = embedding.to(device)
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
    added_cond = {"text_embeds": pooled, "time_ids": time_ids}
    adapter_scale = _per_row([s.adapter_scale for s in samples], both_halves, device)
    attention_kwargs: dict = {SCALE_KWARG: adapter_scale}
    if any(s.adapter_mask is not None for s in samples):
        size = (request.width, request.height)
        masks = [_mask_tensor(s.adapter_mask, size, device) for s in samples]
        attention_kwargs[MASK_KWARG] = both_halves(torch.cat(masks)).to(dtype)

    controls = []
    for index, unit in enumerate(samples[0].controls):
        units = [s.controls[index] for s in samples]
        scales = [u.scale for u in units]
        if not any(scales):
            continue  # a ControlNet at scale 0 adds exactly nothing: skip it
        images = both_halves(torch.cat([_control_tensor(u.image, device, dtype) for u in units]))
        masks = None
        if any(u.mask is not None for u in units):
            masks = [_mask_tensor(u.mask, u.image.size, device) for u in units]
            masks = both_halves(torch.cat(masks))
        controls.append((unit, images, _per_row(scales, both_halves, device), masks))

    generators = [torch.Generator(device=device).manual_seed(s.seed) for s in samples]
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

    with padding_masked(padding):
        for t in scheduler.timesteps:
            request.before_step()
            model_input = both_halves(latents)
            model_input = scheduler.scale_model_input(model_input, t)
            down, mid = _control_residuals(
                controls, model_input, t, face_tokens, prompt_embeds, added_cond
            )
            noise = unet(
                model_input,
                t,
                encoder_hidden_states=(prompt_embeds, face_tokens),
                cross_attention_kwargs=attention_kwargs,
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


def _control_residuals(
    controls: list,
    model_input: torch.Tensor,
    t: torch.Tensor,
    face_tokens: torch.Tensor,
    prompt_embeds: torch.Tensor,
    added_cond: dict,
) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
    """Every ControlNet's residuals at this step, scaled and masked per sample, summed."""
    down, mid = None, None
    for unit, images, scale, masks in controls:
        unit_down, unit_mid = unit.model(
            model_input,
            t,
            encoder_hidden_states=face_tokens if unit.sees_face else prompt_embeds,
            controlnet_cond=images,
            conditioning_scale=scale if isinstance(scale, float) else 1.0,
            added_cond_kwargs=added_cond,
            return_dict=False,
        )
        if isinstance(scale, torch.Tensor):  # different scales per sample
            unit_down = [_scaled(residual, scale) for residual in unit_down]
            unit_mid = _scaled(unit_mid, scale)
        if masks is not None:
            unit_down = [_masked(residual, masks) for residual in unit_down]
            unit_mid = _masked(unit_mid, masks)
        down = unit_down if down is None else [a + b for a, b in zip(down, unit_down, strict=True)]
        mid = unit_mid if mid is None else mid + unit_mid
    return down, mid


def _per_row(
    values: list[float], both_halves: Callable[[torch.Tensor], torch.Tensor], device: torch.device
) -> float | torch.Tensor:
    """A scale for the model input's rows: one float when every sample has the same (exactly
    what a call of one sample computes), else a tensor of one value per row."""
    if len(set(values)) == 1:
        return float(values[0])
    return both_halves(torch.tensor(values, dtype=torch.float32, device=device))


def _scaled(residual: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return residual * scale.view(-1, 1, 1, 1).to(residual.dtype)


def _control_tensor(image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A ControlNet condition: RGB in 0..1, (1, 3, H, W)."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    return pixels.permute(2, 0, 1)[None].to(device, dtype)


def _mask_tensor(
    mask: Image.Image | None, size: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """Weights (1, 1, H, W) at `size` (W, H): the mask, or ones (everywhere) for a sample
    without one."""
    if mask is None:
        return torch.ones((1, 1, size[1], size[0]), device=device)
    weights = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)
    return weights[None, None].to(device)


def _masked(residual: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`residual` weighted by `mask` resized to its grid (each block's resolution)."""
    weights = F.interpolate(mask, size=residual.shape[-2:], mode="bilinear", align_corners=False)
    return residual * weights.to(residual.dtype)
