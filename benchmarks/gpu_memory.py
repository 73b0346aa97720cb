"""Each runner's GPU memory for its weights, computed from parameter counts: no GPU, no download.

The real architectures (benchmarks/real_configs.py, and the config of the prompt upsampler
written below) are built on PyTorch's meta device (shapes only, no memory), their parameters
counted, and priced at the dtype each runner uses on CUDA: fp16 (sd15, instantid) and bf16
(flux), 2 bytes a parameter either way. Prints markdown tables for docs/performance.md ("GPU
memory"):

    python -m benchmarks.gpu_memory          # make gpu-memory

What the numbers are: weights only, as the runner holds them after start-up (fused QKV frees
the projections it copies, so fusing changes nothing here). Activations (they grow with the
output size and batch), the CUDA context (about 0.5 GiB a process) and PyTorch's cache come on
top: `make gpu-check` measures peaks where a GPU is at hand. The face models are ONNX files run
by onnxruntime in fp32; their size is their parameter count from the published architectures
(ResNet-100 ArcFace, SCRFD-10G), not computed here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, ControlNetModel, FluxTransformer2DModel, UNet2DConditionModel
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5EncoderModel,
    ViTConfig,
    ViTForImageClassification,
)

from benchmarks.random_parts import attach_ip_adapter  # what load_ip_adapter adds
from benchmarks.real_configs import REAL

GIB = 1024**3
BYTES_PER_PARAMETER = 2  # fp16 / bf16 on CUDA (DEPTHID_DTYPE=auto)
FP32 = 4

# Qwen/Qwen2.5-0.5B-Instruct config.json (flux's prompt upsampler, `llm`).
QWEN25_05B = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}
# antelopev2's ONNX models, fp32 on onnxruntime's CUDA provider: glintr100 (ResNet-100 ArcFace,
# about 65M parameters) and scrfd_10g_bnkps (about 4M).
FACE_MODELS_PARAMETERS = 69_000_000


@dataclass(frozen=True)
class Part:
    """One model a runner holds on the GPU, and whether model CPU offload moves it off."""

    name: str
    parameters: int
    offloaded: bool  # DEPTHID_CPU_OFFLOAD=on: on the GPU only while it runs
    bytes_per_parameter: int = BYTES_PER_PARAMETER

    @property
    def gib(self) -> float:
        return self.parameters * self.bytes_per_parameter / GIB


def count(build: Callable[[], nn.Module]) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def sdxl_unet_with_adapter() -> tuple[int, int]:
    """The InstantID runner's SDXL UNet with the IP-Adapter layers, and the Resampler apart
    (the runner detaches it: use_per_call_scale)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**REAL.sdxl.unet)
        attach_ip_adapter(unet, REAL.sdxl.resampler)
        resampler = sum(p.numel() for p in unet.encoder_hid_proj.parameters())
        return sum(p.numel() for p in unet.parameters()) - resampler, resampler


def depth_estimator() -> Part:
    depth = REAL.preprocessors  # Depth Anything V2 Small (every runner's depth estimator)
    backbone = Dinov2Config(**depth.depth_backbone)
    config = DepthAnythingConfig(backbone_config=backbone, **depth.depth)
    return Part("depth estimator", count(lambda: DepthAnythingForDepthEstimation(config)), False)


def sd15_parts() -> list[Part]:
    sd15 = REAL.sd15
    return [
        Part("UNet", count(lambda: UNet2DConditionModel(**sd15.unet)), True),
        Part("depth ControlNet", count(lambda: ControlNetModel(**sd15.controlnet)), False),
        Part("VAE", count(lambda: AutoencoderKL(**sd15.vae)), False),
        Part(
            "CLIP-L text encoder",
            count(lambda: CLIPTextModel(CLIPTextConfig(**sd15.text_encoder))),
            True,
        ),
        depth_estimator(),
    ]


def instantid_parts() -> list[Part]:
    sdxl = REAL.sdxl
    unet_xl, resampler = sdxl_unet_with_adapter()
    return [
        Part("SDXL UNet + IP-Adapter", unet_xl, True),
        Part("InstantID Resampler", resampler, False),
        Part("IdentityNet", count(lambda: ControlNetModel(**sdxl.identitynet)), False),
        Part("depth ControlNet", count(lambda: ControlNetModel(**sdxl.depth_controlnet)), False),
        Part("VAE (fp16-fix)", count(lambda: AutoencoderKL(**sdxl.vae)), False),
        Part(
            "CLIP-L text encoder",
            count(lambda: CLIPTextModel(CLIPTextConfig(**sdxl.text_encoder))),
            True,
        ),
        Part(
            "OpenCLIP-bigG text encoder",
            count(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**sdxl.text_encoder_2))),
            True,
        ),
        depth_estimator(),
        Part("face models (antelopev2, fp32)", FACE_MODELS_PARAMETERS, False, FP32),
    ]


def flux_parts() -> list[Part]:
    flux = REAL.flux
    t5 = T5Config(**flux.text_encoder_2, is_encoder_decoder=False, use_cache=False)
    return [
        Part("Flux transformer", count(lambda: FluxTransformer2DModel(**flux.transformer)), True),
        Part("T5-XXL encoder", count(lambda: T5EncoderModel(t5)), True),
        Part(
            "CLIP-L text encoder",
            count(lambda: CLIPTextModel(CLIPTextConfig(**flux.text_encoder))),
            True,
        ),
        Part("VAE", count(lambda: AutoencoderKL(**flux.vae)), True),
        depth_estimator(),
        Part(
            "safety classifier (ViT-B/16)",
            count(lambda: ViTForImageClassification(ViTConfig(**REAL.preprocessors.safety))),
            False,
        ),
        Part(
            "prompt upsampler (Qwen2.5-0.5B)",
            count(lambda: Qwen2ForCausalLM(Qwen2Config(**QWEN25_05B))),
            False,
        ),
    ]


def runners() -> dict[str, list[Part]]:
    """Per runner, the models it holds on the GPU. With model CPU offload the pipeline's text
    encoders and denoiser leave the GPU between uses; ControlNets (they run every step with the
    denoiser), VAEs of pipelines built per call, the face projection and the small models stay.
    """
    by_runner = {}
    for runner, parts in RUNNER_PARTS.items():
        print(f"counting {runner}'s parameters ...", file=sys.stderr, flush=True)
        by_runner[runner] = parts()
    return by_runner


RUNNER_PARTS: dict[str, Callable[[], list[Part]]] = {
    "sd15_depth": sd15_parts,
    "instantid": instantid_parts,
    "flux_depth": flux_parts,
}


def total_gib(parts: list[Part]) -> float:
    return sum(part.gib for part in parts)


def offloaded_gib(parts: list[Part]) -> float:
    """With model CPU offload: what stays, plus the largest model that comes and goes."""
    stays = sum(part.gib for part in parts if not part.offloaded)
    return stays + max((part.gib for part in parts if part.offloaded), default=0.0)


def unfused_projection_parameters() -> int:
    """What diffusers' fused QKV would keep twice on FLUX.1 without the freeing (acceleration.py):
    the parameters of the fused projections, each a copy of separate ones."""
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**REAL.flux.transformer)
        transformer.fuse_qkv_projections()
        return sum(
            p.numel()
            for layer in transformer.modules()
            for name in ("to_qkv", "to_added_qkv")
            if isinstance(getattr(layer, name, None), nn.Module)
            for p in getattr(layer, name).parameters()
        )


def tables() -> str:
    by_runner = runners()
    lines = [
        "| runner | model | parameters | GiB | leaves the GPU with offload |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for runner, parts in by_runner.items():
        for part in parts:
            lines.append(
                f"| {runner} | {part.name} | {part.parameters / 1e6:,.0f}M | {part.gib:.2f} | "
                f"{'yes' if part.offloaded else 'no'} |"
            )
    lines += [
        "",
        "| runner | weights, GiB (computed) | with `DEPTHID_CPU_OFFLOAD=on`, GiB (computed) |",
        "| --- | ---: | ---: |",
    ]
    for runner, parts in by_runner.items():
        lines.append(f"| {runner} | {total_gib(parts):.1f} | {offloaded_gib(parts):.1f} |")
    every = [part for parts in by_runner.values() for part in parts]
    together = sum(offloaded_gib(parts) for parts in by_runner.values())
    lines.append(
        f"| all three in one container (one GPU) | {total_gib(every):.1f} | {together:.1f} |"
    )
    lines += [
        "",
        f"Fused QKV without freeing the separate projections would add "
        f"{unfused_projection_parameters() / 1e9:.2f}B parameters to the Flux transformer.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    print(tables())


if __name__ == "__main__":
    main()
