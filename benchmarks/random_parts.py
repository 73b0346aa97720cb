"""The runners built from random-weight parts: each runner pipeline class (runners/*_pipeline.py)
constructed with modules made from benchmarks/real_configs.py instead of loaded by `from_store`,
so benchmarks/gpu.py times the served classes on machines that hold no weights.

Modules are created directly on the device in the runner's dtype (`creating`): a 12B
transformer never passes through the CPU or fp32. `from_store` also switches accelerations on
and warms up; here the caller does both (the benchmark switches them on one at a time).

Face analysis is the one part not built from a config: its ONNX models are the tiny profile's
hand-set detector and recogniser (models/tiny_faces.py) at every scale, since a detector with
random weights would find no face and InstantID would refuse every job.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxControlPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import IPAdapterPlusImageProjection, MultiIPAdapterImageProjection
from torch import nn
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    DPTImageProcessorPil,
    T5Config,
    T5EncoderModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

from benchmarks.real_configs import Configs
from models.tiny_faces import build_face_models
from models.tiny_flux import build_t5_tokenizer
from models.tiny_safety import LABELS, NORMAL_MARGIN
from models.tiny_tokenizer import build_clip_tokenizer
from runners.depth import DepthEstimator
from runners.faces import FaceAnalyzer
from runners.flux_pipeline import FluxDepthPipeline
from runners.instantid_pipeline import InstantIDPipelines
from runners.ip_adapter_attention import use_per_call_scale
from runners.prompt_filter import PromptFilter
from runners.safety import SafetyChecker
from runners.sd15_pipeline import SD15DepthPipelines
from runners.upsampler import RuleUpsampler
from settings import Settings

Runner = SD15DepthPipelines | InstantIDPipelines | FluxDepthPipeline


@dataclass
class Built:
    """A runner and its modules by name, as its `from_store` hands them to `accelerate` (the same
    objects the runner holds), with the names `from_store` compiles."""

    runner: Runner
    modules: dict[str, nn.Module]
    compiled: tuple[str, ...]
    # Files the runner reads while it runs (insightface opens a detector file per input size):
    # removed when this is.
    folder: tempfile.TemporaryDirectory | None = None


@contextmanager
def creating(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Modules created in here get their (random) weights directly on `device` in `dtype`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _ready(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """In inference mode, on `device` in `dtype` (where `creating` did not already put it)."""
    if any(p.dtype != dtype for p in module.parameters()):
        module.to(dtype=dtype)
    return module.to(device).eval().requires_grad_(False)


def _clip_config(config: dict, tokenizer) -> CLIPTextConfig:
    # The locally built tokenizer's special ids: pooling finds the end-of-text token by its id.
    return CLIPTextConfig(
        **config,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# --- the preprocessing parts ---------------------------------------------------------------------


def depth_estimator(configs: Configs, device: torch.device, dtype: torch.dtype) -> DepthEstimator:
    p = configs.preprocessors
    config = DepthAnythingConfig(backbone_config=Dinov2Config(**p.depth_backbone), **p.depth)
    with creating(device, dtype):
        model = _ready(DepthAnythingForDepthEstimation(config), device, dtype)
    return DepthEstimator(DPTImageProcessorPil(**p.depth_processor), model)


def safety_checker(configs: Configs, device: torch.device, dtype: torch.dtype) -> SafetyChecker:
    p = configs.preprocessors
    with creating(device, dtype):
        model = _ready(ViTForImageClassification(ViTConfig(**p.safety)), device, dtype)
    # Random weights would block about half the images (no image to encode): the head leans to
    # "normal" as models/tiny_safety.py's does, so every image goes the served way to the end.
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[LABELS.index("normal")] = NORMAL_MARGIN
    processor = ViTImageProcessorPil(**p.safety_processor)
    return SafetyChecker(processor, model, thresholds=Settings().safety_thresholds)


def face_analyzer(
    device: torch.device,
) -> tuple[FaceAnalyzer, tempfile.TemporaryDirectory]:
    """The tiny profile's face models (see the module's docstring), on CUDA when the runner is
    and onnxruntime can; and the folder they are read from, to keep while they are used."""
    folder = tempfile.TemporaryDirectory(prefix="depthid-faces-")
    build_face_models(Path(folder.name))
    return FaceAnalyzer(Path(folder.name), use_cuda=device.type == "cuda"), folder


# --- the runners ---------------------------------------------------------------------------------


def build_sd15(
    configs: Configs, device: torch.device, dtype: torch.dtype, max_batch_size: int
) -> Built:
    c = configs.sd15
    tokenizer = build_clip_tokenizer()
    with creating(device, dtype):
        unet = _ready(UNet2DConditionModel(**c.unet), device, dtype)
        controlnet = _ready(ControlNetModel(**c.controlnet), device, dtype)
        vae = _ready(AutoencoderKL(**c.vae), device, dtype)
        text_encoder = _ready(CLIPTextModel(_clip_config(c.text_encoder, tokenizer)), device, dtype)
    components = {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "controlnet": controlnet,
        "scheduler": PNDMScheduler.from_config(c.scheduler),
        "safety_checker": None,
        "feature_extractor": None,
    }
    runner = SD15DepthPipelines(
        components=components,
        depth=depth_estimator(configs, device, dtype),
        device=device,
        max_batch_size=max_batch_size,
    )
    return Built(
        runner=runner,
        modules={"unet": unet, "controlnet": controlnet, "vae": vae},
        compiled=("unet", "controlnet"),
    )


def attach_ip_adapter(unet: UNet2DConditionModel, resampler: dict) -> None:
    """What diffusers' `load_ip_adapter` makes of InstantID's ip-adapter.bin, with random
    weights: IP-Adapter processors (to_k_ip / to_v_ip) on every cross-attention layer, and the
    Resampler as the UNet's image projection. use_per_call_scale then converts them, as the
    runner's `from_store` does."""
    processors: dict[str, nn.Module] = {}
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            layer = unet.get_submodule(name.removesuffix(".processor"))
            processors[name] = IPAdapterAttnProcessor2_0(
                hidden_size=layer.to_k.out_features,
                cross_attention_dim=unet.config.cross_attention_dim,
                num_tokens=(resampler["num_queries"],),
            )
        else:
            processors[name] = AttnProcessor2_0()
    unet.set_attn_processor(processors)
    unet.encoder_hid_proj = MultiIPAdapterImageProjection(
        [IPAdapterPlusImageProjection(**resampler)]
    )


def build_instantid(
    configs: Configs, device: torch.device, dtype: torch.dtype, max_batch_size: int
) -> Built:
    c = configs.sdxl
    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_clip_tokenizer()
    with creating(device, dtype):
        unet = UNet2DConditionModel(**c.unet)
        attach_ip_adapter(unet, c.resampler)
        unet = _ready(unet, device, dtype)
        identitynet = _ready(ControlNetModel(**c.identitynet), device, dtype)
        depth_controlnet = _ready(ControlNetModel(**c.depth_controlnet), device, dtype)
        vae = _ready(AutoencoderKL(**c.vae), device, dtype)
        text_encoder = _ready(CLIPTextModel(_clip_config(c.text_encoder, tokenizer)), device, dtype)
        text_encoder_2 = _ready(
            CLIPTextModelWithProjection(_clip_config(c.text_encoder_2, tokenizer_2)), device, dtype
        )
    face_projection = _ready(use_per_call_scale(unet), device, dtype)
    faces, faces_folder = face_analyzer(device)
    components = {
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "unet": unet,
        "scheduler": EulerDiscreteScheduler.from_config(c.scheduler),
    }
    runner = InstantIDPipelines(
        components=components,
        face_projection=face_projection,
        identitynet=identitynet,
        depth_controlnet=depth_controlnet,
        depth=depth_estimator(configs, device, dtype),
        faces=faces,
        device=device,
        max_batch_size=max_batch_size,
        face_region_padding=Settings().face_region_padding,
    )
    return Built(
        runner=runner,
        modules={
            "unet": unet,
            "identitynet": identitynet,
            "depth_controlnet": depth_controlnet,
            "vae": vae,
        },
        compiled=("unet", "identitynet", "depth_controlnet"),
        folder=faces_folder,
    )


def build_flux(
    configs: Configs,
    device: torch.device,
    dtype: torch.dtype,
    max_batch_size: int,
    text_tokens: int,
) -> Built:
    c = configs.flux
    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_t5_tokenizer()
    t5_config = T5Config(
        **c.text_encoder_2,
        pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
        is_encoder_decoder=False,
        use_cache=False,
    )
    with creating(device, dtype):
        transformer = _ready(FluxTransformer2DModel(**c.transformer), device, dtype)
        vae = _ready(AutoencoderKL(**c.vae), device, dtype)
        text_encoder = _ready(CLIPTextModel(_clip_config(c.text_encoder, tokenizer)), device, dtype)
        text_encoder_2 = _ready(T5EncoderModel(t5_config), device, dtype)
    pipe = FluxControlPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(c.scheduler),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    runner = FluxDepthPipeline(
        pipe=pipe,
        depth=depth_estimator(configs, device, dtype),
        safety=safety_checker(configs, device, dtype),
        prompt_filter=PromptFilter.from_file(Settings().blocked_terms_file),
        upsampler=RuleUpsampler(),  # the default requests do not ask for upsampling
        device=device,
        max_batch_size=max_batch_size,
        text_tokens=text_tokens,
    )
    return Built(
        runner=runner,
        modules={"transformer": transformer, "vae": vae},
        compiled=("transformer",),
    )
