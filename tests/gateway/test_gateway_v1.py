"""The v1 HTTP contract, in process: schema edge cases, answers, headers and every error body.

The runner here is a recording double that answers with real encoded images of the requested
size; the real pipeline is exercised in test_sd15_runner.py and over HTTP in test_e2e.py.
"""

from __future__ import annotations

import asyncio
import io

import aiohttp
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.schemas.normalize import MAX_SEED
from protocol.jobs import GenerationResult, JobFailure
from runners.schedulers import SCHEDULERS
from tests.support.gateway_client import make_client
from tests.support.helpers import RecordingRunner, assert_bound, assert_error, b64, scene_image

ROUTE = "/v1/sd1.5-controlnet-depth"
MODEL = "sd1.5-controlnet-depth"


@pytest.fixture
def client(recorder: RecordingRunner) -> TestClient:
    return make_client(recorder)


def body(**fields) -> dict:
    return {"image": b64(scene_image(96, 64)), "prompt": "a house", **fields}


# --- defaults and normalisation ------------------------------------------------------------


def test_defaults_reach_the_runner(client, recorder):
    response = client.post(ROUTE, json=body())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    [job] = recorder.jobs
    assert (job.samples, job.scheduler, job.num_inference_steps) == (1, "UniPC", 20)
    assert (job.guidance_scale, job.strength, job.negative_prompt) == (7.5, 1.0, "")
    assert 0 <= job.seed <= MAX_SEED
    assert job.output_format == "JPEG"
    # 96x64 keeps its aspect ratio with the tiny long side 64: 64 x 42.7 -> multiples of 8.
    assert (job.width, job.height) == (64, 40)
    assert Image.open(io.BytesIO(response.content)).size == (64, 40)


def test_long_side_is_a_setting(recorder):
    client = make_client(recorder, output_long_side=128)
    assert client.post(ROUTE, json=body()).status_code == 200
    assert (recorder.jobs[0].width, recorder.jobs[0].height) == (128, 88)


def test_seed_is_returned_and_random_when_minus_one(client, recorder):
    response = client.post(ROUTE, json=body(seed=42))
    assert response.headers["x-seed"] == "42"
    seeds = {int(client.post(ROUTE, json=body()).headers["x-seed"]) for _ in range(3)}
    assert len(seeds) == 3 and all(0 <= s <= MAX_SEED for s in seeds)
    assert recorder.jobs[-1].seed in seeds


def test_generation_headers(client):
    response = client.post(ROUTE, json=body(seed=7))
    assert response.headers["x-request-id"]
    assert float(response.headers["x-inference-time"]) >= 0
    echoed = client.post(ROUTE, json=body(), headers={"x-request-id": "caller-id-1"})
    assert echoed.headers["x-request-id"] == "caller-id-1"
    unsafe = client.post(ROUTE, json=body(), headers={"x-request-id": "bad id\twith tab"})
    assert unsafe.headers["x-request-id"] != "bad id\twith tab"


def test_base64_answer_shape(client):
    response = client.post(ROUTE, json=body(base64=True, seed=5))
    assert response.status_code == 200
    payload = response.json()
    assert set(payload) == {"image", "images", "seed", "metrics"}
    assert payload["image"] == payload["images"][0] and len(payload["images"]) == 1
    assert payload["seed"] == 5 and payload["metrics"]["inference_time"] >= 0


def test_several_samples_answer_json(client, recorder):
    response = client.post(ROUTE, json=body(samples=3))
    assert response.status_code == 200
    assert len(response.json()["images"]) == 3
    # Sent whole: the runner cuts it into samples (runners/scheduler.py).
    [job] = recorder.jobs
    assert job.samples == 3
    assert response.json()["seed"] == job.seed


def test_unknown_fields_are_ignored(client, recorder):
    response = client.post(ROUTE, json=body(width=9999, foo={"nested": [1]}, style="Neon"))
    assert response.status_code == 200
    assert recorder.jobs[0].width == 64


# --- every bound, every enum value, wrong types ---------------------------------------------

BOUNDS = [
    ("samples", 0, False),
    ("samples", 1, True),
    ("samples", 4, True),
    ("samples", 5, False),
    ("num_inference_steps", 19, False),
    ("num_inference_steps", 20, True),
    ("num_inference_steps", 100, True),
    ("num_inference_steps", 101, False),
    ("guidance_scale", 0.09, False),
    ("guidance_scale", 0.1, True),
    ("guidance_scale", 25, True),
    ("guidance_scale", 25.01, False),
    ("strength", 0.09, False),
    ("strength", 0.1, True),
    ("strength", 1, True),
    ("strength", 1.01, False),
    ("seed", -2, False),
    ("seed", -1, True),
    ("seed", 0, True),
    ("seed", MAX_SEED, True),
    ("seed", MAX_SEED + 1, False),
]


@pytest.mark.parametrize(("field", "value", "ok"), BOUNDS)
def test_bounds(client, recorder, field, value, ok):
    response = client.post(ROUTE, json=body(**{field: value}))
    assert_bound(response, recorder, field, value, ok)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_each_scheduler_is_accepted(client, recorder, name):
    assert client.post(ROUTE, json=body(scheduler=name)).status_code == 200
    assert recorder.jobs[0].scheduler == name


def test_exactly_the_contract_schedulers():
    assert set(SCHEDULERS) == {
        "UniPC", "Euler a", "DDIM", "DPM Multi", "DPM Single", "Euler", "Heun",
        "DPM2 a Karras", "DPM2 Karras", "LMS", "PNDM", "DDPM",
    }  # fmt: skip


def test_unknown_scheduler_lists_the_allowed(client):
    payload = assert_error(client.post(ROUTE, json=body(scheduler="Karras")), 400, "scheduler")
    assert "UniPC" in payload["error"] and "DDPM" in payload["error"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("samples", "2"),
        ("samples", 2.5),
        ("num_inference_steps", 20.0),
        ("guidance_scale", "7"),
        ("strength", True),
        ("seed", "1"),
        ("base64", "true"),
        ("base64", 1),
        ("prompt", 5),
        ("negative_prompt", ["x"]),
        ("image", 5),
        ("scheduler", None),
    ],
)
def test_wrong_types(client, field, value):
    assert_error(client.post(ROUTE, json=body(**{field: value})), 400, field)


@pytest.mark.parametrize("field", ["image", "prompt"])
def test_required_fields(client, field):
    payload = body()
    del payload[field]
    assert_error(client.post(ROUTE, json=payload), 400, field)


def test_empty_prompt_is_rejected(client):
    assert_error(client.post(ROUTE, json=body(prompt="")), 400, "prompt")


def test_malformed_json(client):
    response = client.post(
        ROUTE, content=b'{"prompt": "x",', headers={"content-type": "application/json"}
    )
    assert "malformed JSON" in assert_error(response, 400)["error"]


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"null"])
def test_body_must_be_an_object(client, payload):
    response = client.post(ROUTE, content=payload, headers={"content-type": "application/json"})
    assert_error(response, 400)


def test_missing_body(client):
    assert_error(client.post(ROUTE), 400)


# --- image input --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_image_as_base64_and_data_uri(client, recorder, fmt):
    raw = scene_image(80, 80, fmt)
    mime = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}[fmt]
    assert client.post(ROUTE, json=body(image=b64(raw))).status_code == 200
    uri = f"data:image/{mime};base64,{b64(raw)}"
    assert client.post(ROUTE, json=body(image=uri)).status_code == 200
    assert recorder.jobs[0].image.size == (80, 80)


def test_large_inputs_are_shrunk_before_the_runner(client, recorder):
    # Tiny long side 64: inputs are kept at most 2 x 64 on their long side, aspect intact.
    assert client.post(ROUTE, json=body(image=b64(scene_image(1000, 600)))).status_code == 200
    [job] = recorder.jobs
    assert job.image.size == (128, 77)
    assert (job.width, job.height) == (64, 40)  # the output size follows the original


def test_undecodable_image(client):
    assert_error(client.post(ROUTE, json=body(image=b64(b"not an image at all"))), 400, None)
    payload = client.post(ROUTE, json=body(image="%%%not base64%%%")).json()
    assert "image" in payload["error"]


# --- errors of every code -------------------------------------------------------------------


def test_unknown_model_is_404(client):
    payload = assert_error(client.post("/v1/no-such-model", json=body()), 404)
    assert "no-such-model" in payload["error"]


def test_unknown_route_is_404(client):
    assert_error(client.get("/nowhere"), 404)
    assert_error(client.post("/v1/sd1.5-controlnet-depth/extra", json=body()), 404)


def test_wrong_method_is_405(client):
    response = client.get(ROUTE)
    assert_error(response, 405)
    assert response.headers["allow"] == "POST"


def test_body_too_large_is_413():
    client = make_client(max_body_bytes=4096)
    big = body(prompt="x" * 10_000)
    assert "limit" in assert_error(client.post(ROUTE, json=big), 413)["error"]


def test_body_too_large_without_content_length_is_413():
    client = make_client(max_body_bytes=4096)

    def chunks():
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = client.post(ROUTE, content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413)


def test_image_too_large_is_413():
    client = make_client(max_image_bytes=2048)
    noisy = Image.effect_noise((256, 256), 100).convert("RGB")
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    assert_error(client.post(ROUTE, json=body(image=b64(buffer.getvalue()))), 413)


def test_internal_fault_is_500_without_a_trace():
    async def broken(jobs):
        raise RuntimeError("secret internal detail /srv/app/file.py")

    response = make_client(broken).post(ROUTE, json=body())
    payload = assert_error(response, 500)
    assert "secret" not in response.text and "/srv" not in response.text
    assert response.headers["x-request-id"] in payload["error"]


def test_runner_unreachable_is_502():
    async def unreachable(jobs):
        raise aiohttp.ClientConnectionError("connection refused")

    assert (
        "unreachable"
        in assert_error(make_client(unreachable).post(ROUTE, json=body()), 502)["error"]
    )


def test_deadline_is_504():
    async def slow(jobs):
        await asyncio.sleep(5)

    response = make_client(slow, deadline_s=0.2).post(ROUTE, json=body())
    assert "deadline" in assert_error(response, 504)["error"]


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        (JobFailure(kind="invalid_input", message="no face found in image", field="image"), 400),
        (JobFailure(kind="blocked", message="the result was blocked by the safety checker"), 422),
    ],
)
def test_job_failures_answer_their_code_without_images(failure, status):
    async def failing(jobs):
        return [
            GenerationResult(
                request_id=job.request_id, images=[], seed=job.seed, inference_time=0.1,
                failure=failure,
            )
            for job in jobs
        ]  # fmt: skip

    response = make_client(failing).post(ROUTE, json=body())
    payload = assert_error(response, status, failure.field)
    assert payload["error"] == failure.message


def test_openapi_shows_the_schema(client):
    spec = client.get("/openapi.json").json()
    operation = spec["paths"][ROUTE]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.split("/")[-1]]
    assert schema["required"] == ["image", "prompt"]
    assert schema["properties"]["num_inference_steps"]["minimum"] == 20
    assert len(schema["properties"]["scheduler"]["enum"]) == 12
    assert client.get("/docs").status_code == 200
