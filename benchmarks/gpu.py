"""GPU benchmark: seconds per image of each model at the contract's default parameters, on the
real architectures with random weights (nothing is downloaded), with the accelerations of
runners/acceleration.py switched on one after another. Prints one markdown table per model.

    make bench-gpu                                         (python -m benchmarks.gpu)
    python -m benchmarks.gpu --model flux-depth-pro --runs 1 --batches 1
    python -m benchmarks.gpu --rows baseline,compile --compile-mode default
    python -m benchmarks.gpu --scale tiny                  (toy sizes: any machine, seconds)

What runs is the served code: each runner pipeline class (runners/*_pipeline.py) is built
from random-weight parts (benchmarks/random_parts.py, from benchmarks/real_configs.py, created
directly on the GPU in fp16, bf16 for Flux) instead of loaded by its `from_store`, and its own
`run_batch` is timed on one-sample jobs (runners/<runner>.py) as the Gateway sends them for default
requests, each with its own input images. Accelerations are switched on by the runners' own
functions. Images are square at the contract's long side (512 for sd1.5, 1024 for the others),
with the request schemas' default steps and guidance.

A timed call is therefore what a runner does for a batch: depth estimation (Depth Anything V2
Small) of each input; for InstantID face detection, recognition and keypoints; for Flux the
prompt screen; prompt encoding (as served: SD1.5 pads CLIP to 77 tokens, Flux T5 to 512, SDXL
encodes the prompt's own length); denoising; VAE decoding; for Flux the safety classifier
(ViT-B/16) on each image; and the JPEG encoding of every image. Not timed: the Gateway's
decoding of the request before it, HTTP around it (benchmarks/latency.py measures those).
Caveats: face analysis uses the tiny profile's hand-set ONNX models (random weights find no
face), so InstantID's face step costs what they cost (on the CPU unless onnxruntime-gpu is
installed), not what antelopev2's SCRFD-10G and ResNet-100 would; Flux's classifier is set to
pass every image; tokenizers are the tiny profile's (built locally), so token counts differ a
little from the real vocabularies'.

A batch that does not run as one call (out of memory: the runner retries it in halves, as
runners/batching.py does for any failure) is reported as failed, with the runner's log above.

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
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.random_parts import Built, build_flux, build_instantid, build_sd15
from benchmarks.real_configs import SCALES
from gateway.schemas.flux_depth import FluxDepthRequest
from gateway.schemas.insta_depth import (
    ADAPTER_STRENGTH,
    DEPTH_STRENGTH,
    ENHANCE_FACE_REGION,
    IDENTITY_STRENGTH,
    InstaDepthRequest,
)
from gateway.schemas.instantid import InstantIDRequest
from gateway.schemas.sd15_depth import SD15DepthRequest
from protocol.jobs import GenerationResult
from runners import flux_depth, instantid, sd15_depth
from runners.acceleration import (
    apply_attention,
    apply_channels_last,
    apply_compile,
    apply_fused_qkv,
)
from runners.flux_depth import FluxDepthJob
from runners.instantid import InstantIDJob
from runners.sd15_depth import SD15DepthJob
from settings import FULL_FLUX_TEXT_TOKENS, TINY_LONG_SIDE, Settings

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
# Seconds per image each model should reach on one H100 with everything on (issue 24; issue 6
# had asked for 0.5, 1.2, 1.5 and 8).
TARGETS_S = {SD15: 0.3, INSTANTID: 0.8, INSTA_DEPTH: 1.0, FLUX: 4.0}
PROMPT = "a portrait photo of a person by a window, soft light, detailed, 35mm"
NEGATIVE_PROMPT = "lowres, blurry, watermark"
# A face the tiny face detector finds (models/tiny_faces.py): a bright disc on a dark ground.
PORTRAIT_BACKGROUND, PORTRAIT_SKIN, PORTRAIT_FACE_RADIUS = (28, 34, 48), (232, 192, 160), 0.2


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
    """One runner built from random-weight parts, and per model it serves, a function that
    makes the jobs of one batch."""

    built: Built
    jobs: dict[str, Callable[[int], list]]


@dataclass
class Result:
    """Seconds per image by row and batch size (None: failed, out of memory most likely)."""

    per_image: dict[str, dict[int, float | None]] = field(default_factory=dict)
    peak_gib: float | None = None


# --- the runners and their jobs --------------------------------------------------------------


def _scene(size: int, seed: int) -> Image.Image:
    """An input picture: smooth random colours."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)


def _portrait(size: int) -> Image.Image:
    """An input picture with one face, centred."""
    image = Image.new("RGB", (size, size), PORTRAIT_BACKGROUND)
    centre, radius = size / 2, size * PORTRAIT_FACE_RADIUS
    box = [centre - radius, centre - radius, centre + radius, centre + radius]
    ImageDraw.Draw(image).ellipse(box, fill=PORTRAIT_SKIN)
    return image


def sd15_jobs(size: int, steps: int | None) -> Callable[[int], list[SD15DepthJob]]:
    defaults, scene = DEFAULTS[SD15], _scene(size, seed=0)

    def make(batch: int) -> list[SD15DepthJob]:
        return [
            SD15DepthJob(
                request_id=f"bench-{seed}",
                prompt=PROMPT,
                negative_prompt=NEGATIVE_PROMPT,
                image=scene.copy(),  # each its own picture, as from different requests
                samples=1,
                scheduler=_default(SD15DepthRequest, "scheduler"),
                num_inference_steps=steps or defaults.steps,
                guidance_scale=defaults.guidance,
                strength=_default(SD15DepthRequest, "strength"),
                seed=seed,
                width=size,
                height=size,
            )
            for seed in range(batch)
        ]

    return make


def instantid_jobs(model: str, size: int, steps: int | None) -> Callable[[int], list]:
    defaults, portrait = DEFAULTS[model], _portrait(size)
    if model == INSTA_DEPTH:  # a pose picture; its fixed strengths (gateway/schemas)
        strengths = {
            "identity_strength": IDENTITY_STRENGTH,
            "adapter_strength": ADAPTER_STRENGTH,
            "depth_strength": DEPTH_STRENGTH,
            "enhance_face_region": ENHANCE_FACE_REGION,
        }
    else:
        names = ("identity_strength", "adapter_strength", "enhance_face_region")
        strengths = {name: _default(InstantIDRequest, name) for name in names}

    def make(batch: int) -> list[InstantIDJob]:
        return [
            InstantIDJob(
                request_id=f"bench-{seed}",
                prompt=PROMPT,
                negative_prompt=NEGATIVE_PROMPT,
                face_image=portrait.copy(),
                pose_image=portrait.copy() if model == INSTA_DEPTH else None,
                samples=1,
                num_inference_steps=steps or defaults.steps,
                guidance_scale=defaults.guidance,
                seed=seed,
                width=size,
                height=size,
                **strengths,
            )
            for seed in range(batch)
        ]

    return make


def flux_jobs(size: int, steps: int | None) -> Callable[[int], list[FluxDepthJob]]:
    defaults, scene = DEFAULTS[FLUX], _scene(size, seed=2)

    def make(batch: int) -> list[FluxDepthJob]:
        return [
            FluxDepthJob(
                request_id=f"bench-{seed}",
                prompt=PROMPT,
                control_image=scene.copy(),
                guidance=defaults.guidance,
                steps=steps or defaults.steps,
                seed=seed,
                width=size,
                height=size,
                safety_tolerance=_default(FluxDepthRequest, "safety_tolerance"),
                prompt_upsampling=_default(FluxDepthRequest, "prompt_upsampling"),
            )
            for seed in range(batch)
        ]

    return make


def build_family(name: str, models: list[str], args: argparse.Namespace) -> Family:
    """The family's runner from random-weight parts at `args.scale`, able to run the largest
    batch asked for any of its models in one call."""
    configs, device, dtype = SCALES[args.scale], args.device, family_dtype(name, args)
    size, steps = args.size[name], args.steps
    max_batch = max(batch for model in models for batch in args.batches[model])
    if name == "sd15":
        return Family(build_sd15(configs, device, dtype, max_batch), {SD15: sd15_jobs(size, steps)})
    if name == "sdxl":
        built = build_instantid(configs, device, dtype, max_batch)
        return Family(built, {model: instantid_jobs(model, size, steps) for model in models})
    built = build_flux(configs, device, dtype, max_batch, text_tokens=FULL_FLUX_TEXT_TOKENS)
    return Family(built, {FLUX: flux_jobs(size, steps)})


# family name -> the models it serves, the half-precision dtype its runner uses on GPU
FAMILIES = {
    "sd15": ((SD15,), torch.float16),
    "sdxl": ((INSTANTID, INSTA_DEPTH), torch.float16),
    "flux": ((FLUX,), torch.bfloat16),
}


def family_dtype(name: str, args: argparse.Namespace) -> torch.dtype:
    """The runner's half precision on the GPU; float32 on the CPU, as the runners."""
    return FAMILIES[name][1] if args.device.type == "cuda" else torch.float32


# --- measuring --------------------------------------------------------------------------------


def switch_on(row: str, family: Family, compile_mode: str) -> None:
    """Apply one row's acceleration to the runner's modules (the runners' own functions)."""
    modules = family.built.modules
    if row == "sdpa":
        apply_attention(modules, "sdpa")
    elif row == "xformers":
        apply_attention(modules, "xformers")
    elif row == "channels_last":
        apply_channels_last(modules)
    elif row == "fused_qkv":
        apply_fused_qkv(modules, "sdpa")
    elif row == "compile":
        apply_compile({name: modules[name] for name in family.built.compiled}, compile_mode)
    # baseline: the modules as built; only its attention kernel is held (in `seconds_per_call`)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BatchFailed(RuntimeError):
    """The batch did not run as one pipeline call with every image made."""


def check(results: list[GenerationResult], batch: int) -> None:
    """Every job got its image from one call of `batch` samples. run_batch never raises for a
    job's sake (runners/batching.py): a call that fails (out of memory, say) is run again in
    halves and its jobs answered as failed, with the reason in the runner's log."""
    for result in results:
        if result.failure is not None:
            raise BatchFailed(f"{result.failure.kind}: {result.failure.message}")
        if result.batch_size != batch:
            raise BatchFailed(f"the runner split the batch (a call of {result.batch_size})")


def seconds_per_call(
    family: Family,
    model: str,
    batch: int,
    runs: int,
    warmup: int,
    device: torch.device,
    math_attention: bool,
) -> float:
    """Median wall time of the runner's `run_batch` on `batch` jobs, after `warmup` untimed
    calls. The jobs are made before the clock starts (the Gateway's work)."""
    times = []
    with sdpa_kernel(SDPBackend.MATH) if math_attention else nullcontext():
        for i in range(warmup + runs):
            jobs = family.jobs[model](batch)
            _synchronize(device)
            start = time.perf_counter()
            results = family.built.runner.run_batch(jobs)
            _synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
            check(results, batch)
    return statistics.median(times)


def bench_family(
    name: str,
    models: list[str],
    args: argparse.Namespace,
    rows: list[str],
    batches: dict[str, list[int]],
) -> dict[str, Result]:
    if args.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(args.device)
    torch.manual_seed(0)
    start = time.perf_counter()
    family = build_family(name, models, args)
    _progress(f"{name}: built in {time.perf_counter() - start:.1f} s ({family_dtype(name, args)})")
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
            apply_attention(family.built.modules, "sdpa")
    if args.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(args.device) / 2**30
        for result in results.values():
            result.peak_gib = peak
    del family
    torch.compiler.reset()  # compiled code holds on to the modules it was compiled for
    gc.collect()
    if args.device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def _measure(
    family: Family, model: str, batch: int, row: str, args: argparse.Namespace
) -> float | None:
    try:
        seconds = seconds_per_call(
            family,
            model,
            batch,
            args.runs,
            args.warmup,
            args.device,
            math_attention=row == "baseline",
        )
    except BatchFailed as failure:
        gc.collect()
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
        _progress(f"{model} {row} batch {batch}: failed ({failure}); the runner's log says why")
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
            + (f"{top[1]:.3f} (batch {top[0]})" if top else "failed (out of memory?)")
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


FAMILY_OF = {model: name for name, (models, _) in FAMILIES.items() for model in models}
# The contract's long side of each family: its runner's output side in `full`.
FULL_LONG_SIDE = {
    "sd15": sd15_depth.FULL_LONG_SIDE,
    "sdxl": instantid.FULL_LONG_SIDE,
    "flux": flux_depth.FULL_LONG_SIDE,
}


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
    args.size = {name: args.size or default_side or FULL_LONG_SIDE[name] for name in FAMILIES}
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
    for name, (family_models, _) in FAMILIES.items():
        models = [model for model in family_models if model in args.models]
        if not models:
            continue
        results = bench_family(name, models, args, args.rows, args.batches)
        for model in models:
            print(table(model, results[model], args) + "\n", flush=True)


if __name__ == "__main__":
    main()
