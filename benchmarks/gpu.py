"""GPU benchmark: seconds per image of each model at the contract's default parameters, on the
real architectures with random weights (nothing is downloaded), with the accelerations of
runners/acceleration.py switched on one after another. Prints one markdown table per model.

    make bench-gpu                                         (python -m benchmarks.gpu)
    python -m benchmarks.gpu --model flux-depth-pro --runs 1 --batches 1
    python -m benchmarks.gpu --rows baseline,compile --compile-mode default
    python -m benchmarks.gpu --scale tiny                  (toy sizes: any machine, seconds)

What runs is the serving code from the loaded modules on: the diffusers pipelines the runners
call (StableDiffusionControlNetPipeline; runners.instantid_sampler over an SDXL pipeline with the
IP-Adapter set up by runners.ip_adapter_attention; FluxControlPipeline), accelerated by the
runners' own functions. Modules are built from benchmarks/real_configs.py directly on the GPU in
fp16 (bf16 for Flux): a 12B transformer never passes through the CPU or fp32. Images are square
at the contract's long side (512 for sd1.5, 1024 for the others) with the request schemas'
default steps and guidance; a timed call covers prompt encoding, denoising, VAE decoding and
the conversion to PIL, not the depth/face preprocessing before it nor the JPEG encoding after.
Tokenizers are the tiny profile's (built locally); prompts are padded to the real lengths (77
CLIP tokens, 512 T5 tokens), so the text encoders do the real work.

Rows are cumulative, each keeping those above it on:
  baseline       fp16/bf16, PyTorch's SDPA held to its math kernel (plain eager attention)
  sdpa           SDPA with its fused kernels (flash, memory-efficient, cuDNN), set explicitly
  xformers       only with xformers installed: in place of sdpa, then back to sdpa
  channels_last  UNet / ControlNet / VAE weights in NHWC
  fused_qkv      one projection for query, key and value (the InstantID UNet keeps its own)
  compile        torch.compile of the UNet, ControlNets and Flux transformer; the untimed
                 warm-up call of each batch size is where compiling happens

Batch sizes default to the powers of two up to each runner's DEPTHID_*_MAX_BATCH_SIZE; "best
batch" is the one with the lowest seconds per image. One full run on an H100 takes long (Flux
alone: minutes per row, compiling more): use --model, --rows, --runs to fit a time budget.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxControlPipeline,
    FluxTransformer2DModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import IPAdapterPlusImageProjection, MultiIPAdapterImageProjection
from PIL import Image
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from benchmarks.real_configs import SCALES, Configs
from gateway.schemas.flux_depth import FluxDepthRequest
from gateway.schemas.insta_depth import (
    ADAPTER_STRENGTH,
    DEPTH_STRENGTH,
    IDENTITY_STRENGTH,
    InstaDepthRequest,
)
from gateway.schemas.instantid import InstantIDRequest
from gateway.schemas.sd15_depth import SD15DepthRequest
from models.tiny_flux import build_t5_tokenizer
from models.tiny_tokenizer import build_clip_tokenizer
from runners.acceleration import (
    apply_attention,
    apply_channels_last,
    apply_compile,
    apply_fused_qkv,
)
from runners.faces import draw_keypoints, face_region_mask
from runners.instantid_sampler import ControlUnit, Sample, SampleRequest, sample
from runners.ip_adapter_attention import use_per_call_scale
from runners.schedulers import make_scheduler
from settings import FULL_FLUX_TEXT_TOKENS, FULL_LONG_SIDE, TINY_LONG_SIDE, Settings

SD15, INSTANTID, INSTA_DEPTH, FLUX = (
    "sd1.5-controlnet-depth",
    "instantid",
    "insta-depth",
    "flux-depth-pro",
)
MODELS = (SD15, INSTANTID, INSTA_DEPTH, FLUX)
ROWS = ("baseline", "sdpa", "xformers", "channels_last", "fused_qkv", "compile")
ROW_LABELS = {
    "baseline": "baseline (math attention)",
    "sdpa": "+ sdpa",
    "xformers": "+ xformers (in place of sdpa)",
    "channels_last": "+ channels_last",
    "fused_qkv": "+ fused qkv",
    "compile": "+ torch.compile",
}
# Seconds per image each model should reach on one H100 with everything on (issue 6).
TARGETS_S = {SD15: 0.5, INSTANTID: 1.2, INSTA_DEPTH: 1.5, FLUX: 8.0}
PROMPT = "a portrait photo of a person by a window, soft light, detailed, 35mm"
NEGATIVE_PROMPT = "lowres, blurry, watermark"
# The face InstantID sees: keypoints and box as fractions of the (square) image.
FACE_KEYPOINTS = np.array([[0.42, 0.40], [0.58, 0.40], [0.50, 0.50], [0.44, 0.60], [0.56, 0.60]])
FACE_BOX = (0.30, 0.25, 0.70, 0.72)


@dataclass(frozen=True)
class Defaults:
    """A model's request defaults, read from its Gateway schema (the contract's)."""

    steps: int
    guidance: float


def _default(request: type, name: str) -> object:
    return request.model_fields[name].default


DEFAULTS = {
    SD15: Defaults(
        _default(SD15DepthRequest, "num_inference_steps"),
        _default(SD15DepthRequest, "guidance_scale"),
    ),
    INSTANTID: Defaults(
        _default(InstantIDRequest, "num_inference_steps"),
        _default(InstantIDRequest, "guidance_scale"),
    ),
    INSTA_DEPTH: Defaults(
        _default(InstaDepthRequest, "num_inference_steps"),
        _default(InstaDepthRequest, "guidance_scale"),
    ),
    FLUX: Defaults(_default(FluxDepthRequest, "steps"), _default(FluxDepthRequest, "guidance")),
}


@dataclass
class Family:
    """One runner's modules, as its `__init__` hands them to `accelerate`, and the models it
    serves, each as a function that generates one batch."""

    modules: dict[str, nn.Module]
    compiled: tuple[str, ...]
    generate: dict[str, Callable[[int], object]]


@dataclass
class Result:
    """Seconds per image by row and batch size (None: out of memory)."""

    per_image: dict[str, dict[int, float | None]] = field(default_factory=dict)
    peak_gib: float | None = None


# --- building random-weight modules -----------------------------------------------------------


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


def _generators(device: torch.device, batch: int) -> list[torch.Generator]:
    # As the runners: one generator per sample, on the pipeline's device.
    return [torch.Generator(device=device).manual_seed(seed) for seed in range(batch)]


def _grey(size: int, seed: int) -> Image.Image:
    """A stand-in depth map: smooth random greys, RGB, as runners/depth.py returns them."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    grey = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return grey.convert("RGB")


def build_sd15(
    configs: Configs, device: torch.device, dtype: torch.dtype, size: int, steps: int | None
) -> Family:
    c = configs.sd15
    tokenizer = build_clip_tokenizer()
    with creating(device, dtype):
        unet = _ready(UNet2DConditionModel(**c.unet), device, dtype)
        controlnet = _ready(ControlNetModel(**c.controlnet), device, dtype)
        vae = _ready(AutoencoderKL(**c.vae), device, dtype)
        text_encoder = _ready(CLIPTextModel(_clip_config(c.text_encoder, tokenizer)), device, dtype)
    defaults = DEFAULTS[SD15]
    scheduler_name = _default(SD15DepthRequest, "scheduler")
    depth_map = _grey(size, seed=0)

    def generate(batch: int) -> object:
        # As runners/sd15_pipeline.py: a pipeline object per call with its own scheduler.
        pipe = StableDiffusionControlNetPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=make_scheduler(scheduler_name, c.scheduler),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe(
            prompt=[PROMPT] * batch,
            negative_prompt=[NEGATIVE_PROMPT] * batch,
            image=[depth_map] * batch,
            num_inference_steps=steps or defaults.steps,
            guidance_scale=defaults.guidance,
            generator=_generators(device, batch),
            height=size,
            width=size,
        )

    return Family(
        modules={"unet": unet, "controlnet": controlnet, "vae": vae},
        compiled=("unet", "controlnet"),
        generate={SD15: generate},
    )


def _attach_ip_adapter(unet: UNet2DConditionModel, resampler: dict) -> None:
    """What diffusers' `load_ip_adapter` makes of InstantID's ip-adapter.bin, with random
    weights: IP-Adapter processors (to_k_ip / to_v_ip) on every cross-attention layer, and the
    Resampler as the UNet's image projection. use_per_call_scale then converts them, as the
    runner does."""
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


def build_sdxl(
    configs: Configs, device: torch.device, dtype: torch.dtype, size: int, steps: int | None
) -> Family:
    c = configs.sdxl
    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_clip_tokenizer()
    with creating(device, dtype):
        unet = UNet2DConditionModel(**c.unet)
        _attach_ip_adapter(unet, c.resampler)
        unet = _ready(unet, device, dtype)
        identitynet = _ready(ControlNetModel(**c.identitynet), device, dtype)
        depth_controlnet = _ready(ControlNetModel(**c.depth_controlnet), device, dtype)
        vae = _ready(AutoencoderKL(**c.vae), device, dtype)
        text_encoder = _ready(CLIPTextModel(_clip_config(c.text_encoder, tokenizer)), device, dtype)
        text_encoder_2 = _ready(
            CLIPTextModelWithProjection(_clip_config(c.text_encoder_2, tokenizer_2)), device, dtype
        )
    face_projection = _ready(use_per_call_scale(unet), device, dtype)
    size_pair = (size, size)
    keypoints = draw_keypoints(FACE_KEYPOINTS * size, size_pair)
    face_box = tuple(value * size for value in FACE_BOX)
    # enhance_face_region is on by default: IdentityNet and face attention confined to the face
    mask = face_region_mask(face_box, size_pair, Settings().face_region_padding)
    depth_map = _grey(size, seed=1)
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal(c.resampler["embed_dims"]).astype(np.float32)

    def generator_for(model: str) -> Callable[[int], object]:
        with_depth = model == INSTA_DEPTH
        defaults = DEFAULTS[model]

        def generate(batch: int) -> object:
            # As runners/instantid_pipeline.py: IdentityNet on the face keypoints (confined to
            # the face region), insta-depth adds the depth ControlNet.
            controls = [
                ControlUnit(
                    model=identitynet,
                    image=keypoints,
                    scale=IDENTITY_STRENGTH,
                    sees_face=True,
                    mask=mask,
                )
            ]
            if with_depth:
                controls.append(
                    ControlUnit(
                        model=depth_controlnet,
                        image=depth_map,
                        scale=DEPTH_STRENGTH,
                        sees_face=False,
                    )
                )
            samples = [
                Sample(
                    prompt=PROMPT,
                    negative_prompt=NEGATIVE_PROMPT,
                    face_embedding=embedding,
                    adapter_scale=ADAPTER_STRENGTH,
                    controls=controls,
                    seed=seed,
                    adapter_mask=mask,
                )
                for seed in range(batch)
            ]
            pipe = StableDiffusionXLPipeline(
                vae=vae,
                text_encoder=text_encoder,
                text_encoder_2=text_encoder_2,
                tokenizer=tokenizer,
                tokenizer_2=tokenizer_2,
                unet=unet,
                scheduler=EulerDiscreteScheduler(**c.scheduler),
                add_watermarker=False,
            )
            pipe.set_progress_bar_config(disable=True)
            request = SampleRequest(
                samples=samples,
                num_inference_steps=steps or defaults.steps,
                guidance_scale=defaults.guidance,
                width=size,
                height=size,
            )
            return sample(pipe, face_projection, request)

        return generate

    return Family(
        modules={
            "unet": unet,
            "identitynet": identitynet,
            "depth_controlnet": depth_controlnet,
            "vae": vae,
        },
        compiled=("unet", "identitynet", "depth_controlnet"),
        generate={INSTANTID: generator_for(INSTANTID), INSTA_DEPTH: generator_for(INSTA_DEPTH)},
    )


def build_flux(
    configs: Configs, device: torch.device, dtype: torch.dtype, size: int, steps: int | None
) -> Family:
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
        scheduler=FlowMatchEulerDiscreteScheduler(**c.scheduler),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    defaults = DEFAULTS[FLUX]
    depth_map = _grey(size, seed=2)

    def generate(batch: int) -> object:
        # As runners/flux_pipeline.py: one pipeline, reset by every call.
        return pipe(
            prompt=[PROMPT] * batch,
            control_image=[depth_map] * batch,
            height=size,
            width=size,
            num_inference_steps=steps or defaults.steps,
            guidance_scale=defaults.guidance,
            generator=_generators(device, batch),
            max_sequence_length=FULL_FLUX_TEXT_TOKENS,
        )

    return Family(
        modules={"transformer": transformer, "vae": vae},
        compiled=("transformer",),
        generate={FLUX: generate},
    )


# family builder, the models it serves, the half-precision dtype the runner uses on GPU
FAMILIES = {
    "sd15": (build_sd15, (SD15,), torch.float16),
    "sdxl": (build_sdxl, (INSTANTID, INSTA_DEPTH), torch.float16),
    "flux": (build_flux, (FLUX,), torch.bfloat16),
}


def family_dtype(name: str, args: argparse.Namespace) -> torch.dtype:
    """The runner's half precision on the GPU; float32 on the CPU, as the runners."""
    return FAMILIES[name][2] if args.device.type == "cuda" else torch.float32


# --- measuring --------------------------------------------------------------------------------


def switch_on(row: str, family: Family, compile_mode: str) -> None:
    """Apply one row's acceleration to the family's modules (the runners' own functions)."""
    if row == "sdpa":
        apply_attention(family.modules, "sdpa")
    elif row == "xformers":
        apply_attention(family.modules, "xformers")
    elif row == "channels_last":
        apply_channels_last(family.modules)
    elif row == "fused_qkv":
        apply_fused_qkv(family.modules, "sdpa")
    elif row == "compile":
        apply_compile({name: family.modules[name] for name in family.compiled}, compile_mode)
    # baseline: the modules as built; only its attention kernel is held (in `seconds_per_call`)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(
    generate: Callable[[int], object],
    batch: int,
    runs: int,
    warmup: int,
    device: torch.device,
    math_attention: bool,
) -> float:
    """Median wall time of one call, after `warmup` untimed calls."""
    times = []
    with sdpa_kernel(SDPBackend.MATH) if math_attention else nullcontext():
        for i in range(warmup + runs):
            _synchronize(device)
            start = time.perf_counter()
            generate(batch)
            _synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_family(
    name: str,
    models: list[str],
    args: argparse.Namespace,
    rows: list[str],
    batches: dict[str, list[int]],
) -> dict[str, Result]:
    build = FAMILIES[name][0]
    dtype = family_dtype(name, args)
    if args.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(args.device)
    torch.manual_seed(0)
    start = time.perf_counter()
    family = build(SCALES[args.scale], args.device, dtype, args.size[name], args.steps)
    _progress(f"{name}: built in {time.perf_counter() - start:.1f} s ({dtype})")
    results = {model: Result() for model in models}
    last = max(ROWS.index(row) for row in rows)
    for row in ROWS[: last + 1]:
        if row == "xformers" and row not in rows:
            continue  # the others are cumulative: applied whether measured or not
        switch_on(row, family, args.compile_mode)
        if row in rows:
            for model in models:
                results[model].per_image[row] = {
                    batch: _measure(family, model, batch, row, args) for batch in batches[model]
                }
        if row == "xformers":
            apply_attention(family.modules, "sdpa")
    if args.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(args.device) / 2**30
        for result in results.values():
            result.peak_gib = peak
    del family
    torch._dynamo.reset()  # compiled code holds on to the modules it was compiled for
    gc.collect()
    if args.device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def _measure(
    family: Family, model: str, batch: int, row: str, args: argparse.Namespace
) -> float | None:
    try:
        seconds = seconds_per_call(
            family.generate[model],
            batch,
            args.runs,
            args.warmup,
            args.device,
            math_attention=row == "baseline",
        )
    except torch.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        _progress(f"{model} {row} batch {batch}: out of memory")
        return None
    _progress(f"{model} {row} batch {batch}: {seconds / batch:.3f} s/image")
    return seconds / batch


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- reporting --------------------------------------------------------------------------------


def best(per_batch: dict[int, float | None]) -> tuple[int, float] | None:
    """(batch, seconds per image) of the fastest batch size, or None if none ran."""
    ran = [(batch, seconds) for batch, seconds in per_batch.items() if seconds is not None]
    return min(ran, key=lambda item: item[1]) if ran else None


def table(model: str, result: Result, args: argparse.Namespace) -> str:
    defaults = DEFAULTS[model]
    name = FAMILY_OF[model]
    size, steps, dtype = args.size[name], args.steps or defaults.steps, family_dtype(name, args)
    target = TARGETS_S[model]
    lines = [
        f"### {model}: {size}x{size}, {steps} steps, guidance {defaults.guidance:g}, "
        f"{str(dtype).removeprefix('torch.')}"
        + (f"; target <= {target:g} s/image on one H100" if args.scale == "real" else ""),
        "",
        "| acceleration | batch 1 (s/image) | best batch (s/image) |",
        "| --- | ---: | ---: |",
    ]
    for row, per_batch in result.per_image.items():
        one = per_batch.get(1)
        top = best(per_batch)
        lines.append(
            f"| {ROW_LABELS[row]} | {_seconds(one)} | "
            + (f"{top[1]:.3f} (batch {top[0]})" if top else "out of memory")
            + " |"
        )
    if result.peak_gib is not None:
        lines += ["", f"Peak GPU memory: {result.peak_gib:.1f} GiB."]
    if args.scale == "real" and result.per_image:
        last_row, per_batch = list(result.per_image.items())[-1]
        top = best(per_batch)
        if top is not None:
            verdict = "meets" if top[1] <= target else "misses"
            lines.append(
                f"With {ROW_LABELS[last_row].removeprefix('+ ')}: {top[1]:.3f} s/image at batch "
                f"{top[0]}, {verdict} the target of {target:g} s."
            )
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


FAMILY_OF = {model: name for name, (_, models, _) in FAMILIES.items() for model in models}


# --- command line -----------------------------------------------------------------------------


def _max_batch(model: str, settings: Settings) -> int:
    return {
        SD15: settings.sd15_max_batch_size,
        INSTANTID: settings.instantid_max_batch_size,
        INSTA_DEPTH: settings.instantid_max_batch_size,
        FLUX: settings.flux_max_batch_size,
    }[model]


def _powers_of_two_to(limit: int) -> list[int]:
    return [2**i for i in range(limit.bit_length()) if 2**i <= limit]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", choices=sorted(SCALES), default="real")
    parser.add_argument("--device", help="cuda (default when present) or cpu")
    parser.add_argument("--model", action="append", choices=MODELS, help="repeatable; all")
    parser.add_argument("--rows", help=f"comma-separated subset of {','.join(ROWS)}; all")
    parser.add_argument("--batches", help="comma-separated batch sizes; default: powers of two "
                        "up to each runner's max batch size")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="timed calls per point (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before them")
    parser.add_argument("--size", type=int, help="long side; default: the contract's per model")
    parser.add_argument("--steps", type=int, help="denoising steps; default: the contract's")
    parser.add_argument("--compile-mode", default=Settings().compile_mode)
    args = parser.parse_args(argv)

    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but no CUDA device is available")
    if args.scale == "real" and args.device.type != "cuda":
        parser.error("the real scale needs a CUDA GPU (tens of GB); --scale tiny runs anywhere")
    args.models = args.model or list(MODELS)
    xformers = args.device.type == "cuda" and importlib.util.find_spec("xformers") is not None
    available = [row for row in ROWS if row != "xformers" or xformers]
    args.rows = args.rows.split(",") if args.rows else available
    for row in args.rows:
        if row not in available:
            parser.error(f"unknown or unavailable row {row!r}; available: {','.join(available)}")
    settings = Settings()
    args.batches = {
        model: [int(b) for b in args.batches.split(",")]
        if args.batches
        else _powers_of_two_to(_max_batch(model, settings))
        for model in args.models
    }
    default_side = TINY_LONG_SIDE if args.scale == "tiny" else None
    args.size = {
        name: args.size or default_side or max(FULL_LONG_SIDE[m] for m in models)
        for name, (_, models, _) in FAMILIES.items()
    }
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Random weights in half precision may overflow: their NaN images only cost the same time.
    warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
    device_name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    print(
        f"## GPU benchmark ({args.scale} scale, random weights) on {device_name}\n\n"
        f"torch {torch.__version__}, diffusers {importlib.import_module('diffusers').__version__};"
        f" {args.runs} timed run(s) after {args.warmup} warm-up(s), median; seconds per image."
        f"\n",
        flush=True,
    )
    for name, (_, family_models, _) in FAMILIES.items():
        models = [model for model in family_models if model in args.models]
        if not models:
            continue
        results = bench_family(name, models, args, args.rows, args.batches)
        for model in models:
            print(table(model, results[model], args) + "\n", flush=True)


if __name__ == "__main__":
    main()
