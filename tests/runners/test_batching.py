"""Adaptive batching: which jobs share a pipeline call, and that sharing one changes nothing
(runners/batching.py; the runner's queue that uses it: tests/runners/test_scheduler.py).

"The same image" below allows a grey level on a few pixels: the CPU's oneDNN convolutions and
channels-last GroupNorm round differently at another batch size (measured: at most 1 level on
about 1 value in 8,000); the starting noise, prompts and conditions of each sample are exact.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import io

import numpy as np
import pytest
from PIL import Image

from protocol.jobs import GenerationResult, JobFailure
from runners.batching import run_batched
from runners.flux_depth import FluxDepthJob
from runners.samples import merge_results, split_samples
from runners.sd15_depth import SD15DepthJob
from tests.support import jobs as shared_jobs
from tests.support.face_images import face_picture, payload_face, payload_pose
from tests.support.helpers import scene_image
from tests.support.jobs import instantid_job, pixels, seed_results


def assert_same_image(batched: bytes, alone: bytes) -> None:
    difference = np.abs(pixels(batched) - pixels(alone))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.005


def assert_batched_equals_alone(pipeline, jobs, expected_batch_sizes) -> list[GenerationResult]:
    batched = pipeline.run_batch(jobs)
    assert [result.batch_size for result in batched] == expected_batch_sizes
    for job, result in zip(jobs, batched, strict=True):
        alone = pipeline.run(job)
        assert result.failure == alone.failure and result.seed == alone.seed
        assert len(result.images) == len(alone.images)
        for batched_image, alone_image in zip(result.images, alone.images, strict=True):
            assert_same_image(batched_image, alone_image)
    return batched


# --- the grouping, on its own ---------------------------------------------------------------


def sd15_job(**fields) -> SD15DepthJob:
    """Few steps, and PNG: batched and alone images compare without JPEG's losses."""
    return shared_jobs.sd15_job(**{"num_inference_steps": 4, "output_format": "PNG", **fields})


def test_split_samples_seeds_each_sample_and_merge_restores_the_job():
    job = sd15_job(samples=3, seed=7)
    parts = split_samples(job)
    assert [(part.samples, part.seed) for part in parts] == [(1, 7), (1, 8), (1, 9)]
    assert all(part.prompt == job.prompt and part.image is job.image for part in parts)
    assert split_samples(sd15_job()) == [sd15_job()]

    results = [
        GenerationResult(
            request_id="r", images=[bytes([i])], seed=7 + i, inference_time=i, batch_size=2 + i
        )
        for i in range(3)
    ]
    merged = merge_results(job, results)
    assert merged.images == [b"\x00", b"\x01", b"\x02"] and merged.seed == 7
    assert (merged.inference_time, merged.batch_size, merged.failure) == (2, 4, None)

    failure = JobFailure(kind="invalid_input", field="image", message="no")
    results[1] = GenerationResult(
        request_id="r", images=[], seed=8, inference_time=0, failure=failure
    )
    failed = merge_results(job, results)
    assert failed.failure == failure and failed.images == []


def test_run_batched_groups_by_key_and_never_exceeds_the_max_batch_size():
    calls: list[list[tuple[int, int]]] = []

    def run_call(rows: list[SD15DepthJob]) -> list[GenerationResult]:
        calls.append([(row.num_inference_steps, row.seed) for row in rows])
        return seed_results(rows)

    jobs = [
        sd15_job(seed=10, samples=5, num_inference_steps=4),
        sd15_job(seed=20, num_inference_steps=8),
        sd15_job(seed=30, num_inference_steps=4),
    ]
    results = run_batched(jobs, lambda job: job.num_inference_steps, run_call, max_batch_size=4)
    # Same steps share calls of at most 4 rows; the 8-step job runs apart.
    assert calls == [[(4, 10), (4, 11), (4, 12), (4, 13)], [(4, 14), (4, 30)], [(8, 20)]]
    assert results[0].images == [b"10", b"11", b"12", b"13", b"14"] and results[0].seed == 10
    assert [r.images for r in results[1:]] == [[b"20"], [b"30"]]
    assert [r.batch_size for r in results] == [4, 1, 2]


@pytest.mark.parametrize(
    ("module", "service"),
    [("sd15_depth", "SD15Depth"), ("flux_depth", "FluxDepth"), ("instantid", "InstantID")],
)
def test_a_runner_answers_without_rebuilding_its_json_schema(module, service, monkeypatch):
    """BentoML derives an answer's media type from the output's JSON schema, per response,
    unless the type states it (runners/service_config.GenerationResults)."""
    from _bentoml_impl.serde import PickleSerde

    runner = getattr(importlib.import_module(f"runners.{module}"), service)
    output_spec = runner.apis["generate"].output_spec

    def no_schema(*args, **kwargs):
        raise AssertionError("the JSON schema was rebuilt for a response")

    monkeypatch.setattr(output_spec, "model_json_schema", classmethod(no_schema))
    result = GenerationResult(request_id="r", images=[b"jpeg"], seed=1, inference_time=0.1)
    response = asyncio.run(output_spec.to_http_response([result], PickleSerde()))
    assert response.media_type == "application/json"


def test_the_runner_cuts_a_whole_job_into_samples_and_merges_their_results():
    """The Gateway sends whole jobs; the runner's scheduler is the one place that cuts them
    into one-sample rows (each counts toward the batch size) and merges their results."""
    from runners.scheduler import Scheduler

    calls: list[list[SD15DepthJob]] = []

    def run_call(rows):
        calls.append(rows)
        return [
            GenerationResult(request_id=r.request_id, images=[b"%d" % r.seed], seed=r.seed,
                             inference_time=0.5, batch_size=len(rows))
            for r in rows
        ]  # fmt: skip

    scheduler = Scheduler("test", lambda row: "one shape", run_call, max_batch_size=4)
    try:
        [result] = asyncio.run(scheduler.submit([sd15_job(samples=4, seed=50)]))
    finally:
        scheduler.close()
    assert [(row.samples, row.seed) for row in calls[0]] == [(1, 50), (1, 51), (1, 52), (1, 53)]
    assert result.images == [b"50", b"51", b"52", b"53"] and result.seed == 50
    assert result.batch_size == 4


# --- each runner, on the tiny models --------------------------------------------------------


def test_sd15_batch_equals_each_job_alone(sd15):
    other_image = Image.open(io.BytesIO(scene_image(80, 80)))
    jobs = [
        sd15_job(seed=1, prompt="a red barn"),
        sd15_job(seed=2, prompt="a blue car", negative_prompt="", image=other_image),
        sd15_job(seed=3, samples=2),
        sd15_job(seed=4, num_inference_steps=5),  # other steps: a call of its own
    ]
    assert_batched_equals_alone(sd15, jobs, [4, 4, 4, 1])


def test_sd15_img2img_batches_apart_from_text_to_image(sd15):
    jobs = [sd15_job(seed=5, strength=0.5), sd15_job(seed=6, strength=0.5), sd15_job(seed=7)]
    assert_batched_equals_alone(sd15, jobs, [2, 2, 1])


# A short prompt, one of about 90 words (two 77-token windows for sd1.5, longer still for SDXL),
# and one with weights: different encoded lengths, padded and masked in one call.
PROMPTS = (
    "a barn",
    " ".join(["a very detailed cosy wooden cabin in the snowy mountains at dawn"] * 8),
    "a (red:1.3) house by a [quiet] lake",
)


def test_sd15_prompts_of_different_lengths_share_a_call_and_each_equals_its_image_alone(sd15):
    jobs = [sd15_job(seed=i, prompt=prompt) for i, prompt in enumerate(PROMPTS)]
    assert_batched_equals_alone(sd15, jobs, [3, 3, 3])


def test_instantid_prompts_of_different_lengths_share_a_call_and_each_equals_its_image_alone(
    instantid,
):
    jobs = [instantid_job(seed=i, prompt=prompt) for i, prompt in enumerate(PROMPTS)]
    assert_batched_equals_alone(instantid, jobs, [3, 3, 3])
    pose = payload_pose()
    depth_jobs = [
        instantid_job(seed=i, prompt=prompt, pose_image=pose, depth_strength=0.5)
        for i, prompt in enumerate(PROMPTS[:2])
    ]
    assert_batched_equals_alone(instantid, depth_jobs, [2, 2])


def test_sd15_max_batch_size_bounds_every_call(tiny_settings):
    from runners.sd15_pipeline import SD15DepthPipelines

    settings = tiny_settings.model_copy(update={"sd15_max_batch_size": 2})
    pipelines = SD15DepthPipelines.from_store(settings)
    results = pipelines.run_batch([sd15_job(samples=3), sd15_job(seed=9)])
    assert [r.batch_size for r in results] == [2, 2] and len(results[0].images) == 3


def flux_job(**fields) -> FluxDepthJob:
    """Few steps; the most lenient safety tolerance, so only the blocked prompt is blocked."""
    return shared_jobs.flux_job(**{"steps": 4, "safety_tolerance": 6, **fields})


def test_flux_batch_equals_each_job_alone_and_a_blocked_prompt_fails_alone(flux):
    blocked_term = sorted(flux.prompt_filter.terms)[0]
    jobs = [
        flux_job(seed=1, prompt="a lighthouse"),
        flux_job(seed=2, control_image=Image.open(io.BytesIO(scene_image(64, 96)))),
        flux_job(seed=3, prompt=f"a {blocked_term} here"),
        flux_job(seed=4, guidance=3.0),  # other guidance: a call of its own
    ]
    results = assert_batched_equals_alone(flux, jobs, [2, 2, 1, 1])
    assert results[2].failure is not None and results[2].failure.kind == "blocked"
    assert all(r.failure is None for i, r in enumerate(results) if i != 2)


def test_instantid_batch_equals_each_job_alone_with_per_sample_strengths(instantid):
    other_face = payload_face()
    other_face.paste((250, 250, 250), (90, 95, 166, 108))
    jobs = [
        instantid_job(seed=1),
        instantid_job(seed=2, face_image=other_face, prompt="photo of a woman"),
        instantid_job(seed=3, identity_strength=0.3, adapter_strength=0.0, samples=2),
        instantid_job(seed=4, enhance_face_region=False, identity_strength=0.0),
        instantid_job(seed=5, face_image=Image.new("RGB", (128, 128), "white")),  # no face
    ]
    # Six samples, at most 4 per call (the default): then the last two, one without a face.
    results = assert_batched_equals_alone(instantid, jobs, [4, 4, 4, 1, 1])
    assert results[4].failure is not None and results[4].failure.field == "face_image"


def test_insta_depth_batches_apart_from_instantid(instantid):
    pose = payload_pose()
    other_pose = face_picture(192, 256, [(80, 150, 36)], body=True)
    jobs = [
        instantid_job(seed=1, pose_image=pose, depth_strength=0.5),
        instantid_job(seed=2, pose_image=other_pose, depth_strength=0.2),
        instantid_job(seed=3),
    ]
    assert_batched_equals_alone(instantid, jobs, [2, 2, 1])


# --- the served runner's queue gathers concurrent calls ----------------------------------------


@pytest.mark.served
def test_a_served_runner_batches_concurrent_calls(tiny_settings):
    """The sd15 runner served on its own, called by 8 clients at once: its scheduler runs the
    jobs that wait while a call runs together in the next one."""
    import httpx

    from tests.support.served import serve

    def call(base_url: str, seed: int) -> GenerationResult:
        body = {"jobs": [sd15_job(seed=seed, request_id=f"r{seed}").model_dump(mode="json")]}
        response = httpx.post(f"{base_url}/generate", json=body, timeout=120)
        assert response.status_code == 200, response.text
        [result] = response.json()
        return GenerationResult.model_validate(result)

    with (
        serve("runners.sd15_depth:SD15Depth") as base_url,
        concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool,
    ):
        results = list(pool.map(lambda seed: call(base_url, seed), range(48)))
    assert all(r.failure is None and len(r.images) == 1 for r in results)
    assert [r.seed for r in results] == list(range(48))
    sizes = [r.batch_size for r in results]
    assert max(sizes) > 1, sizes
    assert max(sizes) <= tiny_settings.sd15_max_batch_size
