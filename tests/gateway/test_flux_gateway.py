"""flux-depth-pro's v1 contract, in process: schema ranges and defaults, JPEG vs PNG answers, the
prompt-used header and the 422 of a blocked result.

Most tests use a recording double that answers with real encoded images of the requested size
and format; the last ones wire the real tiny runner into the app (no BentoML in between).
"""

from __future__ import annotations

import io
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gateway.jobs.store import JobRecord
from gateway.jobs.worker import completed_body
from gateway.schemas.normalize import MAX_SEED
from protocol.jobs import GenerationResult, JobFailure
from runners.flux_depth import FluxDepthJob
from settings import DEFAULT_SAFETY_THRESHOLDS
from tests.support.flux_helpers import drive_score, restored_classifier
from tests.support.gateway_client import make_client
from tests.support.helpers import (
    RecordingRunner,
    assert_bound,
    assert_error,
    b64,
    scene_image,
    wait_until,
)

ROUTE = "/v1/flux-depth-pro"
MODEL = "flux-depth-pro"
BLOCKED = "the generated image was blocked by the safety checker at safety_tolerance 2"


@pytest.fixture
def client(recorder: RecordingRunner) -> TestClient:
    return make_client(recorder, [MODEL])


def body(**fields) -> dict:
    return {"control_image": b64(scene_image(96, 64)), "prompt": "a house", **fields}


# --- defaults and normalisation --------------------------------------------------------------


def test_defaults_reach_the_runner(client, recorder):
    response = client.post(ROUTE, json=body())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-seed"] == "96522"  # the page's default seed, not a random one
    [job] = recorder.jobs
    assert (job.guidance, job.steps, job.seed) == (7.0, 40, 96522)
    assert (job.output_format, job.safety_tolerance, job.prompt_upsampling) == ("JPEG", 2, False)
    # 96x64 keeps its aspect ratio with the tiny long side 64: 64 x 42.7 -> multiples of 16.
    assert (job.width, job.height) == (64, 48)
    assert job.control_image.size == (96, 64)
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG" and image.size == (64, 48)
    assert "x-prompt-used" not in response.headers


def test_long_side_is_a_setting_and_sides_are_multiples_of_16(recorder):
    client = make_client(recorder, [MODEL], output_long_side=1024)
    assert client.post(ROUTE, json=body()).status_code == 200
    assert (recorder.jobs[0].width, recorder.jobs[0].height) == (1024, 688)
    assert client.post(ROUTE, json=body(control_image=b64(scene_image(50, 150)))).status_code == 200
    assert (recorder.jobs[1].width, recorder.jobs[1].height) == (336, 1024)


def test_png_answers_png_bytes(client, recorder):
    response = client.post(ROUTE, json=body(output_format="png"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).format == "PNG"
    assert recorder.jobs[0].output_format == "PNG"


def test_seed_minus_one_is_random_and_returned(client, recorder):
    seeds = {int(client.post(ROUTE, json=body(seed=-1)).headers["x-seed"]) for _ in range(3)}
    assert len(seeds) == 3 and all(0 <= seed <= MAX_SEED for seed in seeds)
    assert client.post(ROUTE, json=body(seed=5)).headers["x-seed"] == "5"


def test_one_image_per_request_and_no_base64_field(client, recorder):
    response = client.post(ROUTE, json=body(samples=3, base64=True))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"  # bytes, not JSON
    assert len(recorder.jobs) == 1


# --- every bound, every enum value, wrong types -----------------------------------------------

BOUNDS = [
    ("steps", 14, False),
    ("steps", 15, True),
    ("steps", 50, True),
    ("steps", 51, False),
    ("guidance", 0.99, False),
    ("guidance", 1, True),
    ("guidance", 50, True),
    ("guidance", 50.01, False),
    ("safety_tolerance", 0, False),
    ("safety_tolerance", 1, True),
    ("safety_tolerance", 6, True),
    ("safety_tolerance", 7, False),
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


def test_output_format_is_jpg_or_png(client):
    payload = assert_error(client.post(ROUTE, json=body(output_format="jpeg")), 400)
    assert payload["details"][0]["field"] == "output_format"
    assert "'jpg'" in payload["error"] and "'png'" in payload["error"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", "40"),
        ("steps", 40.5),
        ("guidance", "7"),
        ("seed", "96522"),
        ("safety_tolerance", 2.5),
        ("prompt_upsampling", "true"),
        ("prompt_upsampling", 1),
        ("output_format", None),
        ("prompt", 5),
        ("control_image", 5),
    ],
)
def test_wrong_types(client, field, value):
    assert_error(client.post(ROUTE, json=body(**{field: value})), 400, field)


@pytest.mark.parametrize("field", ["control_image", "prompt"])
def test_required_fields(client, field):
    payload = body()
    del payload[field]
    assert_error(client.post(ROUTE, json=payload), 400, field)


def test_undecodable_control_image(client):
    payload = assert_error(client.post(ROUTE, json=body(control_image=b64(b"junk"))), 400)
    assert "control_image" in payload["error"]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_control_image_formats(client, recorder, fmt):
    assert client.post(ROUTE, json=body(control_image=b64(scene_image(80, 80, fmt)))).is_success
    assert recorder.jobs[0].control_image.size == (80, 80)


# --- blocked results and the prompt used -------------------------------------------------------


def test_blocked_result_is_422_with_the_contract_body_and_no_image():
    failing = RecordingRunner(failure=JobFailure(kind="blocked", message=BLOCKED))
    response = make_client(failing, [MODEL]).post(ROUTE, json=body())
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": BLOCKED}
    assert b"JFIF" not in response.content and b"PNG" not in response.content


def test_prompt_used_header_is_percent_encoded_utf8():
    used = "a house, «soft» light — 日本, 100% detail"
    client = make_client(RecordingRunner(prompt_used=used), [MODEL])
    response = client.post(ROUTE, json=body(prompt_upsampling=True))
    assert response.status_code == 200
    header = response.headers["x-prompt-used"]
    assert header.isascii() and " " not in header
    assert unquote(header) == used


def test_openapi_shows_the_schema(client):
    spec = client.get("/openapi.json").json()
    operation = spec["paths"][ROUTE]["post"]
    assert set(operation["responses"]["200"]["content"]) == {"image/jpeg", "image/png"}
    assert "422" in operation["responses"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.split("/")[-1]]
    assert schema["required"] == ["control_image", "prompt"]
    props = schema["properties"]
    assert (props["steps"]["minimum"], props["steps"]["maximum"], props["steps"]["default"]) == (
        15, 50, 40,
    )  # fmt: skip
    assert (props["guidance"]["default"], props["seed"]["default"]) == (7, 96522)
    assert props["output_format"]["enum"] == ["jpg", "png"]
    assert props["output_format"]["default"] == "jpg"
    assert (props["safety_tolerance"]["default"], props["prompt_upsampling"]["default"]) == (
        2, False,
    )  # fmt: skip
    assert "base64" not in props and "samples" not in props


def test_job_and_result_cross_json(client, recorder):
    """A runner reached by URL gets JSON, not pickle: the job and the result must survive it."""
    assert client.post(ROUTE, json=body(prompt_upsampling=True)).status_code == 200
    [job] = recorder.jobs
    again = FluxDepthJob.model_validate_json(job.model_dump_json())
    assert again.model_dump(exclude={"control_image"}) == job.model_dump(exclude={"control_image"})
    assert again.control_image.tobytes() == job.control_image.convert("RGB").tobytes()
    result = GenerationResult(
        request_id="r", images=[b"\xff\xd8 bytes"], seed=1, inference_time=0.5, prompt_used="é"
    )
    assert GenerationResult.model_validate_json(result.model_dump_json()) == result


# --- the real tiny runner behind the app ------------------------------------------------------


@pytest.fixture(scope="module")
def real_pipeline(tiny_settings):
    from runners.flux_pipeline import FluxDepthPipeline

    return FluxDepthPipeline.from_store(tiny_settings)


@pytest.fixture
def real_client(real_pipeline) -> TestClient:
    async def call(jobs):
        return [real_pipeline.run(job) for job in jobs]

    return make_client(call, [MODEL], deadline_s=60)


def test_real_runner_defaults_are_reproducible(real_client):
    first = real_client.post(ROUTE, json=body(steps=15))
    second = real_client.post(ROUTE, json=body(steps=15))
    assert first.status_code == 200 and first.headers["x-seed"] == "96522"
    assert first.content == second.content
    png = real_client.post(ROUTE, json=body(steps=15, output_format="png"))
    assert Image.open(io.BytesIO(png.content)).format == "PNG"
    assert Image.open(io.BytesIO(first.content)).format == "JPEG"


def test_real_runner_blocked_output_is_422(real_client, real_pipeline):
    png = real_client.post(ROUTE, json=body(steps=15, output_format="png"))
    generated = Image.open(io.BytesIO(png.content)).convert("RGB")
    checker = real_pipeline.safety
    with restored_classifier(checker):
        drive_score(checker, generated, DEFAULT_SAFETY_THRESHOLDS[1] + 0.01)  # just over tol. 2
        response = real_client.post(ROUTE, json=body(steps=15, output_format="png"))
        assert response.status_code == 422
        payload = response.json()
        assert set(payload) == {"error"} and payload["error"].startswith(BLOCKED)
        permissive = body(steps=15, output_format="png", safety_tolerance=3)
        assert real_client.post(ROUTE, json=permissive).content == png.content


def test_real_runner_upsampling_header_and_blocked_prompt(real_client):
    response = real_client.post(ROUTE, json=body(steps=15, prompt_upsampling=True))
    assert response.status_code == 200
    used = unquote(response.headers["x-prompt-used"])
    assert used.startswith("a house, ") and used != "a house"
    blocked = real_client.post(ROUTE, json=body(prompt="a naked man"))
    assert blocked.status_code == 422 and "'naked'" in blocked.json()["error"]
    assert set(blocked.json()) == {"error"}


def test_a_cut_prompt_says_so_in_a_header():
    response = make_client(RecordingRunner(prompt_truncated=True), [MODEL]).post(ROUTE, json=body())
    assert response.status_code == 200
    assert response.headers["x-prompt-truncated"] == "true"
    plain = make_client(RecordingRunner(), [MODEL]).post(ROUTE, json=body())
    assert "x-prompt-truncated" not in plain.headers


def test_a_cut_prompt_says_so_in_the_v2_result():
    record = JobRecord(
        id="r1",
        model="flux-depth-pro",
        payload="{}",
        as_base64=False,
        media_type="image/jpeg",
        base_url="http://h",
        submitted_at=0.0,
    )
    result = GenerationResult(
        request_id="r1", images=[b"x"], seed=1, inference_time=0.1, prompt_truncated=True
    )
    assert completed_body(record, result)["prompt_truncated"] is True
    plain = result.model_copy(update={"prompt_truncated": False})
    assert "prompt_truncated" not in completed_body(record, plain)


def test_v2_result_carries_the_same_generation_headers_as_v1():
    used = "a house, golden hour, é"
    runner = RecordingRunner(prompt_used=used, prompt_truncated=True)
    with make_client(runner, [MODEL]) as client:
        v1 = client.post(ROUTE, json=body(prompt_upsampling=True))
        request_id = client.post(f"/v2/{MODEL}", json=body(prompt_upsampling=True)).json()[
            "request_id"
        ]
        assert wait_until(
            lambda: client.get(f"/v2/requests/{request_id}").status_code == 200, timeout_s=30
        )
        v2 = client.get(f"/v2/requests/{request_id}")
    for name in ("x-prompt-used", "x-prompt-truncated"):
        assert v2.headers[name] == v1.headers[name]
    assert unquote(v2.headers["x-prompt-used"]) == used
    assert v2.headers["x-seed"] == str(v2.json()["seed"])
    assert v2.json()["prompt_used"] == used
