"""Half precision before the GPU: every runner's whole path, loaded by `from_store` with
DEPTHID_DTYPE=bfloat16, runs on the CPU at tiny size (depth estimation, face analysis, prompt
encoding, denoising, VAE decoding, the safety classifier) and gives each image close to what
float32 gives for the same job.

bfloat16 is what the CPU runs; on CUDA the SD1.5 and SDXL runners use float16, whose narrower
range is the one thing here no CPU run shows (fp16 overflow; the GPU hour's step a reports NaN
and blank outputs, docs/performance.md "The GPU hour"). The face models are ONNX in float32 in
every dtype (onnxruntime); their embeddings enter the pipeline in its dtype.

Closeness is measured as the mean absolute difference of the pixels (0-255) between the two
images: bfloat16 keeps 8 bits of mantissa, and a denoising loop of random tiny weights carries
its rounding through every step, so the images are near, not equal. A path that dropped to
noise, went black or NaN, or ignored its conditions would be far.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runners.flux_pipeline import FluxDepthPipeline
from runners.instantid_pipeline import InstantIDPipelines
from runners.sd15_pipeline import SD15DepthPipelines
from settings import Settings
from tests.support.jobs import flux_job, instantid_job, pixels, sd15_job

# Mean absolute pixel difference (of 255) a bfloat16 image may have from float32's: measured
# 0.7 (instantid) to 2.0 (flux) on the tiny models, 2026-12-07.
MAX_MEAN_DIFFERENCE = 6.0


def _settings(tiny_settings: Settings, dtype: str) -> Settings:
    return tiny_settings.model_copy(update={"dtype": dtype})


def _mean_difference(half: bytes, full: bytes) -> float:
    return float(np.abs(pixels(half) - pixels(full)).mean())


def _dtypes(modules: dict[str, torch.nn.Module]) -> dict[str, torch.dtype]:
    return {name: next(module.parameters()).dtype for name, module in modules.items()}


def _compare(runner_class, tiny_settings: Settings, jobs: list, modules_of) -> list[float]:
    """Each job's image from the runner in float32 and in bfloat16: their mean differences,
    after checking that the bfloat16 runner's modules are all in bfloat16."""
    images = {}
    for dtype in ("float32", "bfloat16"):
        runner = runner_class.from_store(_settings(tiny_settings, dtype))
        expected = getattr(torch, dtype)
        assert set(_dtypes(modules_of(runner)).values()) == {expected}, _dtypes(modules_of(runner))
        results = runner.run_batch(jobs)
        for result in results:
            assert result.failure is None, result.failure
        images[dtype] = [result.images[0] for result in results]
        del runner
    return [
        _mean_difference(half, full)
        for half, full in zip(images["bfloat16"], images["float32"], strict=True)
    ]


def test_sd15_in_bfloat16_is_close_to_float32(tiny_settings):
    jobs = [sd15_job(request_id="t2i"), sd15_job(request_id="i2i", strength=0.6)]

    def modules(runner: SD15DepthPipelines) -> dict[str, torch.nn.Module]:
        c = runner.components
        return {
            "unet": c["unet"],
            "controlnet": c["controlnet"],
            "vae": c["vae"],
            "text_encoder": c["text_encoder"],
            "depth": runner.depth.model,
        }

    for difference in _compare(SD15DepthPipelines, tiny_settings, jobs, modules):
        assert difference < MAX_MEAN_DIFFERENCE


@pytest.mark.parametrize("depth", [False, True], ids=["instantid", "insta-depth"])
def test_instantid_in_bfloat16_is_close_to_float32(tiny_settings, depth):
    job = instantid_job()
    if depth:
        job = job.model_copy(update={"pose_image": job.face_image, "depth_strength": 0.5})

    def modules(runner: InstantIDPipelines) -> dict[str, torch.nn.Module]:
        c = runner.components
        return {
            "unet": c["unet"],
            "identitynet": runner.identitynet,
            "depth_controlnet": runner.depth_controlnet,
            "vae": c["vae"],
            "text_encoder": c["text_encoder"],
            "text_encoder_2": c["text_encoder_2"],
            "face_projection": runner.face_projection,
            "depth": runner.depth.model,
        }

    [difference] = _compare(InstantIDPipelines, tiny_settings, [job], modules)
    assert difference < MAX_MEAN_DIFFERENCE


def test_flux_in_bfloat16_is_close_to_float32(tiny_settings):
    def modules(runner: FluxDepthPipeline) -> dict[str, torch.nn.Module]:
        pipe = runner.pipe
        return {
            "transformer": pipe.transformer,
            "vae": pipe.vae,
            "text_encoder": pipe.text_encoder,
            "text_encoder_2": pipe.text_encoder_2,
            "depth": runner.depth.model,
            "safety": runner.safety.model,
        }

    [difference] = _compare(FluxDepthPipeline, tiny_settings, [flux_job()], modules)
    assert difference < MAX_MEAN_DIFFERENCE
