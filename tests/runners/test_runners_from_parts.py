"""Each runner pipeline class built from tiny random-weight parts, without the model store (as
diffusers' fast tests build pipelines from `get_dummy_components()`): its constructor takes the
loaded modules, and `run_batch` serves a job with them. The parts are benchmarks/random_parts.py's
(what benchmarks/gpu.py times) at the tiny configs of benchmarks/real_configs.py."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from benchmarks import random_parts
from benchmarks.real_configs import TINY
from protocol.jobs import GenerationResult
from runners import flux_pipeline, instantid_pipeline, sd15_pipeline
from tests.support.jobs import flux_job, instantid_job, sd15_job

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def no_store(monkeypatch):
    """Any look into the model store fails the test: the parts come from elsewhere."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("the runner read the model store")

    for module in (sd15_pipeline, flux_pipeline, instantid_pipeline):
        monkeypatch.setattr(module, "require_model", refuse)


def assert_one_image(result: GenerationResult, job, image_format: str) -> None:
    assert result.failure is None, result.failure
    assert (result.request_id, result.seed, result.batch_size) == (job.request_id, job.seed, 1)
    assert result.inference_time > 0
    [data] = result.images
    image = Image.open(io.BytesIO(data))
    assert image.format == image_format and image.size == (job.width, job.height)


def test_sd15_runs_a_job_from_parts(tiny_settings):
    built = random_parts.build_sd15(TINY, CPU, torch.float32, tiny_settings.sd15_max_batch_size)
    assert isinstance(built.runner, sd15_pipeline.SD15DepthPipelines)
    assert built.runner.components["unet"] is built.modules["unet"]  # the parts it was given
    job = sd15_job(num_inference_steps=2)
    [result] = built.runner.run_batch([job])
    assert_one_image(result, job, "JPEG")


def test_flux_runs_a_job_from_parts(tiny_settings):
    built = random_parts.build_flux(
        TINY,
        CPU,
        torch.float32,
        tiny_settings.flux_max_batch_size,
        text_tokens=tiny_settings.flux_text_tokens(),
    )
    assert isinstance(built.runner, flux_pipeline.FluxDepthPipeline)
    assert built.runner.pipe.transformer is built.modules["transformer"]
    job = flux_job(steps=2)
    [result] = built.runner.run_batch([job])
    assert_one_image(result, job, "PNG")
    assert result.prompt_used is None and not result.prompt_truncated


@pytest.mark.parametrize("depth", [False, True], ids=["instantid", "insta-depth"])
def test_instantid_runs_a_job_from_parts(tiny_settings, depth):
    built = random_parts.build_instantid(
        TINY, CPU, torch.float32, tiny_settings.instantid_max_batch_size
    )
    assert isinstance(built.runner, instantid_pipeline.InstantIDPipelines)
    assert built.runner.identitynet is built.modules["identitynet"]
    job = instantid_job(num_inference_steps=2)
    if depth:
        job = job.model_copy(update={"pose_image": job.face_image, "depth_strength": 0.5})
    [result] = built.runner.run_batch([job])
    assert_one_image(result, job, "PNG")
