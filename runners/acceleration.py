"""GPU accelerations of the runners' diffusion modules: which are on, and switching each one on.

`resolve_accelerations` turns the settings and the device into an `Accelerations`, every "auto"
decided: on for CUDA, off on the CPU (the tiny profile keeps its plain fp32 path). `accelerate`
applies them in a fixed order to a runner's loaded modules and returns what each step did, for
the one start-up line `log_accelerations` writes per runner. Each step is also a function of its
own (`apply_attention`, `apply_channels_last`, `apply_fused_qkv`, `apply_compile`), so
benchmarks/gpu.py switches them on one at a time on the same modules the runners use.

Two more things half precision needs: `guard_finite_decode` turns a VAE that overflowed (NaN or
inf, which would be saved as a black image) into a clear error, and `warm_up` runs one generation
at start-up so that the first request does not pay for CUDA's lazy initialisation, cuDNN's
algorithm search or torch.compile.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DiffusionPipeline
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    XFormersAttnProcessor,
)
from torch import nn

from runners.device import pick_dtype
from settings import Settings

logger = logging.getLogger(__name__)

AttentionKind = Literal["sdpa", "xformers"]
Switch = Literal["auto", "on", "off"]

# The order `accelerate` applies the steps in: fusing replaces processors, so it comes after
# the attention choice; compiling traces the final modules, so it comes last.
STEPS = ("attention", "channels_last", "fused_qkv", "compile")
# For smaller GPUs, applied when the pipeline is put on its device (`place_on_device`).
MEMORY_STEPS = ("cpu_offload", "vae_tiling")

# Denoising steps of the start-up warm-up generation: every module runs (and compiles) at the
# default output size; more steps would only repeat the same kernels.
WARMUP_STEPS = 2

# diffusers' own processors for its classic `Attention` layers: these may be swapped for the
# chosen kind. Any other processor (the IP-Adapter's per-call-scale ones, or fused ones) is kept.
_STOCK_PROCESSORS = (AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor)
_PROCESSOR_FOR = {"sdpa": AttnProcessor2_0, "xformers": XFormersAttnProcessor}
# The same choice for models whose attention goes through diffusers' dispatcher (Flux).
_BACKEND_FOR = {"sdpa": "native", "xformers": "xformers"}


class NonFiniteOutputError(RuntimeError):
    """The VAE decoded NaN or inf: saved, the image would be black."""


@dataclass(frozen=True)
class Accelerations:
    """What a runner switches on, every "auto" already decided for its device."""

    dtype: torch.dtype
    attention: AttentionKind
    channels_last: bool
    fuse_qkv: bool
    compile: bool
    compile_mode: str
    warmup: bool
    cpu_offload: bool = False
    vae_tiling: bool = False


def resolve_accelerations(
    settings: Settings, device: torch.device, gpu_dtype: torch.dtype
) -> Accelerations:
    """The settings' accelerations for `device`: "auto" is on for CUDA and off on the CPU (except
    the attention kind: "auto" is PyTorch's SDPA everywhere). Impossible combinations are a
    start-up error that says what to change."""
    on_gpu = device.type == "cuda"
    attention: AttentionKind = "sdpa" if settings.attention == "auto" else settings.attention
    if attention == "xformers":
        if not on_gpu:
            raise RuntimeError("DEPTHID_ATTENTION=xformers needs CUDA; use sdpa on the CPU")
        if importlib.util.find_spec("xformers") is None:
            raise RuntimeError(
                "DEPTHID_ATTENTION=xformers but xformers is not installed: install the xformers "
                "build for this torch, or use DEPTHID_ATTENTION=sdpa"
            )
    return Accelerations(
        dtype=pick_dtype(settings, device, gpu_default=gpu_dtype),
        attention=attention,
        channels_last=_decide(settings.channels_last, on_gpu),
        fuse_qkv=_decide(settings.fuse_qkv, on_gpu),
        compile=_decide(settings.compile, on_gpu),
        compile_mode=settings.compile_mode,
        warmup=_decide(settings.warmup, on_gpu),
        cpu_offload=settings.cpu_offload == "on",
        vae_tiling=settings.vae_tiling == "on",
    )


def _decide(switch: Switch, on_gpu: bool) -> bool:
    return on_gpu if switch == "auto" else switch == "on"


def place_on_device(
    accelerations: Accelerations, pipe: DiffusionPipeline, device: torch.device
) -> dict[str, str]:
    """Put `pipe`'s models on `device`, and apply the settings for smaller GPUs: with
    cpu_offload, diffusers' model CPU offload instead (each model is moved to `device` when it
    runs and back to the CPU when the next one in the pipeline's order does, so the largest
    model, not the sum, bounds the memory); with vae_tiling, the VAE works in tiles. Returns
    what it did, for `log_accelerations`. Pipelines built later around the same modules keep
    both (the offload hooks and the tiling live on the modules)."""
    done = {}
    if accelerations.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
        models = [name for name, module in pipe.components.items() if hasattr(module, "_hf_hook")]
        done["cpu_offload"] = f"on[{', '.join(models)}]"
    else:
        pipe.to(device)
    if accelerations.vae_tiling:
        pipe.vae.enable_tiling()
        done["vae_tiling"] = "on[vae]"
    return done


def accelerate(
    accelerations: Accelerations,
    modules: Mapping[str, nn.Module],
    compiled: Collection[str],
) -> dict[str, str]:
    """Switch the accelerations on for a runner's loaded `modules` (already on their device and
    dtype), by name; only those named in `compiled` are compiled. Returns, per step, what it did
    (for `log_accelerations`)."""
    done = {"attention": apply_attention(modules, accelerations.attention)}
    if accelerations.channels_last:
        done["channels_last"] = apply_channels_last(modules)
    if accelerations.fuse_qkv:
        done["fused_qkv"] = apply_fused_qkv(modules, accelerations.attention)
    if accelerations.compile:
        chosen = {name: module for name, module in modules.items() if name in compiled}
        done["compile"] = apply_compile(chosen, accelerations.compile_mode)
    return done


def apply_attention(modules: Mapping[str, nn.Module], attention: AttentionKind) -> str:
    """Make `attention` (PyTorch's SDPA or xformers) the explicit attention of every module.

    Classic diffusers layers get the matching processor; processors of our own (the IP-Adapter's
    per-call-scale ones, which call SDPA themselves) and fused ones are kept. Models whose layers
    go through diffusers' attention dispatcher (Flux) get the matching backend.
    """
    notes = []
    for name, module in modules.items():
        if _dispatched(module):
            module.set_attention_backend(_BACKEND_FOR[attention])
            notes.append(name)
            continue
        processor = _PROCESSOR_FOR[attention]()
        current = module.attn_processors
        kept = sum(type(p) not in _STOCK_PROCESSORS for p in current.values())
        module.set_attn_processor(
            {key: processor if type(p) in _STOCK_PROCESSORS else p for key, p in current.items()}
        )
        notes.append(f"{name} ({kept} own processors kept)" if kept else name)
    return f"{attention}[{', '.join(notes)}]"


def apply_channels_last(modules: Mapping[str, nn.Module]) -> str:
    """Store the convolution weights of every convolutional module channels-last (NHWC), the
    layout tensor cores read directly; modules without convolutions (Flux's transformer) are
    left alone."""
    names = []
    for name, module in modules.items():
        if any(isinstance(layer, nn.Conv2d) for layer in module.modules()):
            module.to(memory_format=torch.channels_last)
            names.append(name)
    return f"on[{', '.join(names)}]"


def apply_fused_qkv(modules: Mapping[str, nn.Module], attention: AttentionKind) -> str:
    """Fuse each attention layer's query/key/value projections into one matrix multiply (key and
    value only, in cross-attention), where that composes with the module's processors; a module
    where it does not is skipped, and the reason logged. The separate projections the fused ones
    were copied from are then freed (`free_unfused_projections`)."""
    fused, skipped = [], []
    for name, module in modules.items():
        reason = _cannot_fuse(module, attention)
        if reason is not None:
            logger.info("fused QKV projections skipped for %s: %s", name, reason)
            skipped.append(f"{name}: {reason}")
            continue
        if _dispatched(module):  # Flux: its processors read the fused projections when present
            module.fuse_qkv_projections()
        else:
            # What UNet2DConditionModel.fuse_qkv_projections does, for any model (diffusers'
            # ControlNetModel has no working method of its own).
            for layer in module.modules():
                if isinstance(layer, Attention):
                    layer.fuse_projections(fuse=True)
            module.set_attn_processor(FusedAttnProcessor2_0())
        freed = free_unfused_projections(module)
        logger.info("fused QKV projections of %s: %d unfused parameters freed", name, freed)
        fused.append(name)
    note = f"on[{', '.join(fused)}]"
    return f"{note} skipped[{'; '.join(skipped)}]" if skipped else note


# After fusing, each fused projection and the separate ones it was copied from. diffusers keeps
# the separate ones (to unfuse later), which doubles the projections' memory: about 2.15B
# parameters on FLUX.1. The fused processors read only the fused ones (to_q stays in
# cross-attention, where only key and value are fused).
_FUSED_FROM = {
    "to_qkv": ("to_q", "to_k", "to_v"),
    "to_kv": ("to_k", "to_v"),
    "to_added_qkv": ("add_q_proj", "add_k_proj", "add_v_proj"),
}


def free_unfused_projections(module: nn.Module) -> int:
    """Delete, in every fused attention layer of `module`, the separate projections its fused
    ones replace; returns how many parameters that frees. The fused weights are left as they
    are, so outputs do not change; the layers can no longer be unfused (nothing here unfuses)."""
    freed = 0
    for layer in module.modules():
        if not getattr(layer, "fused_projections", False):
            continue
        for fused, separate in _FUSED_FROM.items():
            if getattr(layer, fused, None) is None:
                continue
            for name in separate:
                projection = getattr(layer, name, None)
                if projection is not None:
                    freed += sum(p.numel() for p in projection.parameters())
                    delattr(layer, name)
    return freed


def _cannot_fuse(module: nn.Module, attention: AttentionKind) -> str | None:
    """Why fusing `module`'s projections would change what it computes, or None."""
    if _dispatched(module):
        return None
    if any(type(p) not in _STOCK_PROCESSORS for p in module.attn_processors.values()):
        # The InstantID UNet: fusing swaps every processor for FusedAttnProcessor2_0, which
        # would drop the face tokens and the per-call adapter scale.
        return "it has attention processors of its own (IP-Adapter), which fusing would replace"
    if attention == "xformers":
        return "the fused processor is SDPA only, and xformers is the chosen attention"
    return None


def apply_compile(modules: Mapping[str, nn.Module], mode: str) -> str:
    """torch.compile each module's forward in place (the module keeps its class, so pipelines and
    type checks see no difference). The first call of each new input shape compiles."""
    for module in modules.values():
        module.compile(mode=mode)
    return f"{mode}[{', '.join(modules)}]"


def _dispatched(module: nn.Module) -> bool:
    """Whether the module's attention layers are the newer kind whose processors dispatch to a
    selectable backend (Flux), rather than diffusers' classic `Attention` with processors."""
    return any(isinstance(layer, AttentionModuleMixin) for layer in module.modules())


def guard_finite_decode(vae: nn.Module, runner: str) -> None:
    """Make the VAE's decoder raise NonFiniteOutputError when it outputs NaN or inf: in half
    precision an overflowing VAE (SDXL's original one in fp16) would otherwise give a black
    image, silently. The check is one reduction over the decoded batch."""

    def check(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if not torch.isfinite(output).all():
            raise NonFiniteOutputError(
                f"{runner}: the VAE decoded NaN/inf in {output.dtype}, which would be a black "
                "image; use an fp16-safe VAE (the full profile's sdxl-vae is one) or "
                "DEPTHID_DTYPE=float32"
            )

    vae.decoder.register_forward_hook(check)


def warm_up(generate: Callable[[], object]) -> str:
    """Run `generate` (one small generation) once, synchronised; returns the note for the
    start-up line, with how long it took."""
    start = time.perf_counter()
    generate()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return f"on[{time.perf_counter() - start:.1f} s]"


def log_accelerations(
    runner: str, accelerations: Accelerations, done: Mapping[str, str], **extra: str
) -> str:
    """Log (and return) the runner's one start-up line naming every path that is on."""
    dtype = str(accelerations.dtype).removeprefix("torch.")
    parts = [f"dtype={dtype}"]
    parts += [f"{step}={done.get(step, 'off')}" for step in STEPS]
    parts += [f"{step}={done.get(step, 'off')}" for step in ("warmup", *MEMORY_STEPS)]
    parts += [f"{key}={value}" for key, value in extra.items()]
    line = f"{runner} accelerations: {' '.join(parts)}"
    logger.info(line)
    return line
