"""One caller's job never fails the others batched with it (runners/batching.py).

A crafted job (a lone UTF-16 surrogate in a prompt, or an image of extreme aspect ratio that the
Gateway now refuses, sent straight to the runner as a runner reached by URL could be) shares a
full batch with six good ones, on every runner: the good ones get the images they get alone,
the crafted ones fail alone, each with its own failure. Then the same through the Gateway, in
process: v1 answers 200 and a v2 job COMPLETES while a crafted job poisons its pipeline call.
"""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.app import create_app
from gateway.runner_client import RunnerClient
from protocol.jobs import GenerationResult
from runners.batching import INTERNAL_FAILURE, run_batched, run_isolated
from settings import Settings
from tests.runners.test_batching import assert_same_image
from tests.support import jobs as shared_jobs
from tests.support.face_images import payload_face, payload_pose
from tests.support.helpers import b64, scene_image, wait_until
from tests.support.jobs import instantid_job, seed_results

SURROGATE = "\ud800"


def with_surrogate(job, field: str):
    """`job` with a lone surrogate in `field`: copied without validation, as a runner reached
    by URL might receive it from any client."""
    return job.model_copy(update={field: getattr(job, field) + " " + SURROGATE})


def assert_isolated(pipeline, jobs, crafted: set[int]) -> list[GenerationResult]:
    """The batch's good jobs have their images, the same as alone; the crafted ones fail."""
    results = pipeline.run_batch(jobs)
    assert len(results) == len(jobs)
    for index, (job, result) in enumerate(zip(jobs, results, strict=True)):
        if index in crafted:
            assert result.images == [] and result.failure is not None, index
            assert result.failure.kind == "internal"
            assert result.failure.message == INTERNAL_FAILURE
            assert result.request_id == job.request_id
            continue
        assert result.failure is None, (index, result.failure)
        alone = pipeline.run(job)
        assert len(result.images) == len(alone.images) == 1
        assert_same_image(result.images[0], alone.images[0])
    return results


# --- the splitting, on its own --------------------------------------------------------------


def fake_call(calls: list[list[int]]):
    """A pipeline call that fails whenever a row with a negative seed is in it."""

    def run_call(rows):
        calls.append([row.seed for row in rows])
        if any(row.seed < 0 for row in rows):
            raise ValueError("a poisoned row")
        return seed_results(rows)

    return run_call


class Row:
    def __init__(self, seed: int) -> None:
        self.seed, self.request_id = seed, f"r{seed}"


def test_a_failed_call_is_split_until_only_the_failing_rows_fail():
    calls: list[list[int]] = []
    rows = [Row(s) for s in (1, 2, -3, 4, 5, 6, -7, 8)]
    results = run_isolated(rows, fake_call(calls))
    assert [r.images for r in results] == [
        [b"1"], [b"2"], [], [b"4"], [b"5"], [b"6"], [], [b"8"]
    ]  # fmt: skip
    assert [r.failure.kind for r in results if r.failure] == ["internal", "internal"]
    assert [r.request_id for r in results] == [row.request_id for row in rows]
    # Halves, not one call per row: 8 -> 4+4 -> 2+2+2+2 -> the two poisoned pairs in ones.
    assert calls[0] == [1, 2, -3, 4, 5, 6, -7, 8]
    assert len(calls) == 1 + 2 + 4 + 4


def test_a_call_that_succeeds_runs_once():
    calls: list[list[int]] = []
    results = run_isolated([Row(s) for s in (1, 2, 3)], fake_call(calls))
    assert calls == [[1, 2, 3]] and all(r.failure is None for r in results)


def test_run_batched_never_raises_for_a_job(tiny_settings):
    calls: list[list[int]] = []
    jobs = [shared_jobs.sd15_job(seed=s) for s in (10, 20)]
    jobs.append(shared_jobs.sd15_job(seed=30).model_copy(update={"seed": -1}))
    results = run_batched(jobs, lambda job: 0, fake_call(calls), max_batch_size=8)
    assert [r.images for r in results] == [[b"10"], [b"20"], []]
    assert results[2].failure.kind == "internal"


# --- every runner, a full batch with crafted jobs, on the tiny models ------------------------


def sd15_job(**fields):
    return shared_jobs.sd15_job(**{"num_inference_steps": 4, "output_format": "PNG", **fields})


def test_sd15_crafted_jobs_fail_alone_in_a_full_batch(sd15):
    # 64x8: what a 1000x1 image made before the Gateway refused it; the depth preprocessor
    # cannot take it. And a lone surrogate in negative_prompt, which no tokenizer takes.
    sliver = Image.new("RGB", (128, 1), "teal")
    jobs = [sd15_job(seed=seed, request_id=f"good{seed}") for seed in range(6)]
    jobs.insert(2, sd15_job(seed=90, image=sliver, width=64, height=8, request_id="sliver"))
    jobs.insert(5, with_surrogate(sd15_job(seed=91, request_id="surrogate"), "negative_prompt"))
    assert len(jobs) == sd15.max_batch_size
    assert_isolated(sd15, jobs, crafted={2, 5})


def test_flux_crafted_jobs_fail_alone_in_full_batches(flux):
    def job(seed: int, **fields):
        return shared_jobs.flux_job(
            **{"steps": 4, "safety_tolerance": 6, "seed": seed, "request_id": f"r{seed}", **fields}
        )

    jobs = [job(seed) for seed in range(6)]
    jobs.insert(1, with_surrogate(job(90), "prompt"))
    jobs.insert(6, with_surrogate(job(91, prompt_upsampling=True), "prompt"))
    assert_isolated(flux, jobs, crafted={1, 6})


def test_instantid_crafted_jobs_fail_alone_in_full_batches(instantid):
    # A 1280x1 face image (what a 1000x1 one became before the Gateway refused it) crashes the
    # face detector; a surrogate in negative_prompt the SDXL tokenizers.
    sliver = Image.new("RGB", (1280, 1), "teal")
    jobs = [instantid_job(seed=seed, request_id=f"r{seed}") for seed in range(6)]
    jobs.insert(0, instantid_job(seed=90, face_image=sliver, request_id="sliver"))
    jobs.insert(6, with_surrogate(instantid_job(seed=91, request_id="s"), "negative_prompt"))
    assert_isolated(instantid, jobs, crafted={0, 6})


def test_insta_depth_crafted_jobs_fail_alone_in_full_batches(instantid):
    pose = payload_pose()

    def job(seed: int, **fields):
        return instantid_job(
            seed=seed, request_id=f"r{seed}", pose_image=pose, depth_strength=0.5, **fields
        )

    sliver = Image.new("RGB", (1, 1280), "teal")
    jobs = [job(seed) for seed in range(6)]
    jobs.insert(3, job(90, face_image=payload_face()).model_copy(update={"pose_image": sliver}))
    jobs.insert(7, with_surrogate(job(91), "negative_prompt"))
    assert_isolated(instantid, jobs, crafted={3, 7})


# --- through the Gateway: v1 200 and v2 COMPLETED beside a poisoned job ---------------------


class PoisonedBatches:
    """The sd15 runner as BentoML would run it for the Gateway, in process, with a crafted job
    from another caller in every pipeline call."""

    def __init__(self, pipelines) -> None:
        self.pipelines = pipelines
        self.crafted: list[GenerationResult] = []

    async def __call__(self, jobs: list) -> list[GenerationResult]:
        crafted = with_surrogate(sd15_job(request_id="crafted"), "prompt")
        results = await asyncio.to_thread(self.pipelines.run_batch, [crafted, *jobs])
        self.crafted.append(results[0])
        return results[1:]


def test_v1_and_v2_answer_beside_a_poisoned_job(sd15):
    runner = PoisonedBatches(sd15)
    settings = Settings(job_workers=1)
    app = create_app(settings, runners={"sd1.5-controlnet-depth": RunnerClient("r", runner, 60)})
    body = {"image": b64(scene_image(96, 64)), "prompt": "a house", "seed": 5, "samples": 2}
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post("/v1/sd1.5-controlnet-depth", json={**body, "base64": True})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["images"]) == 2

        submitted = client.post("/v2/sd1.5-controlnet-depth", json=body)
        assert submitted.status_code == 200, submitted.text
        request_id = submitted.json()["request_id"]

        def finished() -> bool:
            status = client.get(f"/v2/requests/{request_id}/status").json()["status"]
            return status in ("COMPLETED", "FAILED")

        assert wait_until(finished, 60)
        final = client.get(f"/v2/requests/{request_id}")
        assert final.status_code == 200 and final.json()["status"] == "COMPLETED", final.text
        assert len(final.json()["output"]) == 2
    assert len(runner.crafted) == 2
    assert all(r.failure is not None and r.failure.kind == "internal" for r in runner.crafted)


def test_v1_answers_500_naming_the_request_id_for_a_job_that_fails_alone(sd15):
    class CraftedOnly:
        async def __call__(self, jobs):
            crafted = [with_surrogate(job, "prompt") for job in jobs]
            return await asyncio.to_thread(sd15.run_batch, crafted)

    app = create_app(
        Settings(), runners={"sd1.5-controlnet-depth": RunnerClient("r", CraftedOnly(), 60)}
    )
    body = {"image": b64(scene_image(96, 64)), "prompt": "a house"}
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post(
            "/v1/sd1.5-controlnet-depth", json=body, headers={"x-request-id": "crafted-1"}
        )
    assert answer.status_code == 500
    assert answer.json() == {"error": f"{INTERNAL_FAILURE} (request id crafted-1)"}


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (shared_jobs.sd15_job, "prompt"),
        (shared_jobs.sd15_job, "negative_prompt"),
        (shared_jobs.flux_job, "prompt"),
        (instantid_job, "prompt"),
        (instantid_job, "negative_prompt"),
    ],
)
def test_a_runner_refuses_a_job_with_a_lone_surrogate_on_receipt(make, field):
    """Jobs are validated when a runner receives them, each call apart, before BentoML
    batches them: such a job is refused alone and never reaches a pipeline call."""
    from pydantic import ValidationError

    job = make()
    with pytest.raises(ValidationError) as refused:
        type(job).model_validate(with_surrogate(job, field).model_dump())
    assert refused.value.errors()[0]["loc"] == (field,)
    assert type(job).model_validate(job.model_dump()) == job
