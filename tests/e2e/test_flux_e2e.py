"""End to end: flux-depth-pro through `bentoml serve service:Gateway` with the tiny models, over
HTTP, with the shipped control image (loadtests/payloads/flux_control.jpg).

The shared server (tests/conftest.py) runs with tolerance 1's threshold at 0, so at
safety_tolerance 1 every image is blocked. That drives the real classifier's decision from
outside the process; tolerances 2..6 keep their defaults (the tiny classifier scores ~0.02,
under all of them).
"""

from __future__ import annotations

import base64
import io
from urllib.parse import unquote

import httpx
import pytest
from PIL import Image
from segmind import InferenceFailed, SegmindClient

from tests.support.flux_helpers import CONTROL_IMAGE

pytestmark = pytest.mark.served  # the shared `bentoml serve` of tests/conftest.py

ROUTE = "/v1/flux-depth-pro"
PROMPT = "American man, smiling, waving, eyeglasses, sitting at desk, home office, daylight"


def body(**fields) -> dict:
    control = base64.b64encode(CONTROL_IMAGE.read_bytes()).decode("ascii")
    return {"control_image": control, "prompt": PROMPT, **fields}


def decoded(response: httpx.Response) -> Image.Image:
    image = Image.open(io.BytesIO(response.content))
    image.load()  # fully decodable, not just a valid header
    return image


def test_defaults_answer_a_reproducible_jpeg(http):
    first = http.post(ROUTE, json=body())
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "image/jpeg"
    image = decoded(first)
    # 160x120 (4:3) with the tiny long side 64 -> 64x48, both multiples of 16.
    assert image.format == "JPEG" and image.size == (64, 48)
    assert first.headers["x-seed"] == "96522"
    assert first.headers["x-request-id"] and float(first.headers["x-inference-time"]) > 0
    assert "x-prompt-used" not in first.headers
    second = http.post(ROUTE, json=body())
    assert second.content == first.content  # default seed 96522: same bytes every time
    other = http.post(ROUTE, json=body(seed=7))
    assert other.headers["x-seed"] == "7" and other.content != first.content


def test_png_output(http):
    response = http.post(ROUTE, json=body(output_format="png", steps=15))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = decoded(response)
    assert image.format == "PNG" and image.size == (64, 48)


def test_a_blocked_image_is_422_without_image_bytes(http):
    response = http.post(ROUTE, json=body(safety_tolerance=1, steps=15))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert set(payload) == {"error"} and "blocked" in payload["error"]
    # The same request one tolerance up passes: the classifier, not the request, decided.
    assert http.post(ROUTE, json=body(safety_tolerance=2, steps=15)).status_code == 200


def test_a_listed_prompt_term_is_422(http):
    response = http.post(ROUTE, json=body(prompt="a nude portrait", steps=15))
    assert response.status_code == 422
    assert response.json() == {
        "error": "the prompt was blocked by the content filter: it contains 'nude'"
    }


def test_prompt_upsampling_returns_the_prompt_used(http):
    plain = http.post(ROUTE, json=body(steps=15))
    upsampled = http.post(ROUTE, json=body(steps=15, prompt_upsampling=True))
    assert upsampled.status_code == 200, upsampled.text
    used = unquote(upsampled.headers["x-prompt-used"])
    assert used.startswith(PROMPT + ", ") and len(used) > len(PROMPT)
    assert upsampled.content != plain.content  # generated from the expanded prompt


def test_validation_and_readiness(http):
    for field, value in (("steps", 14), ("steps", 51), ("safety_tolerance", 7)):
        response = http.post(ROUTE, json=body(**{field: value}))
        assert response.status_code == 400
        assert response.json()["details"][0]["field"] == field
    assert http.get("/readyz").status_code == 200
    assert ROUTE in http.get("/openapi.json").json()["paths"]


def test_v2_with_the_official_sdk_completes_and_a_blocked_job_fails(http):
    client = SegmindClient(api_key="unused", base_url=str(http.base_url.join("/v1")))
    result = client.run("flux-depth-pro", **body(output_format="png"))
    assert result["status"] == "COMPLETED" and result["seed"] == 96522
    image = httpx.get(result["output"][0])
    assert image.headers["content-type"] == "image/png" and decoded(image).format == "PNG"

    with pytest.raises(InferenceFailed) as failure:
        client.submit_async("flux-depth-pro", **body(safety_tolerance=1)).wait(60, 0.2)
    assert "blocked" in failure.value.detail
    assert failure.value.status_body["status"] == "FAILED"
