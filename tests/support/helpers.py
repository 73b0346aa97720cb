"""Small helpers the tests share: test images, free ports, waiting for a server."""

from __future__ import annotations

import base64
import io
import socket
import time
from typing import Any

import httpx
from PIL import Image, ImageDraw

from protocol.jobs import GenerationResult, JobFailure
from runners.encoding import encode_image


def scene_image(width: int = 96, height: int = 64, fmt: str = "PNG") -> bytes:
    """A simple scene with a near object (bright disc) and a far background gradient."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for x in range(width):
        shade = int(255 * x / max(1, width - 1))
        draw.line([(x, 0), (x, height)], fill=(shade, 80, 255 - shade))
    r = min(width, height) // 4
    draw.ellipse([width // 2 - r, height // 2 - r, width // 2 + r, height // 2 + r], fill="white")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout_s: float, interval_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


def is_ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def metric_value(base_url: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` on a served instance's /metrics whose labels include
    `labels` (0 when there are none)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def assert_error(response, status: int, field: str | None = None) -> dict:
    """The contract's error answer: `status`, a JSON object with a non-empty `error` for a
    person, no stack trace; with `field`, the error names it and `details` lists it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert isinstance(payload, dict) and isinstance(payload["error"], str) and payload["error"]
    assert "Traceback" not in response.text
    if field is not None:
        assert field in payload["error"]
        assert payload["details"][0]["field"] == field
    return payload


class RecordingRunner:
    """A runner double for in-process Gateway tests: remembers every job and answers each with
    `samples` (default 1) real encoded images of the job's size and format, or with `failure`
    and no images; `prompt_used` and `prompt_truncated` are put on every result."""

    def __init__(
        self,
        failure: JobFailure | None = None,
        prompt_used: str | None = None,
        prompt_truncated: bool = False,
    ) -> None:
        self.jobs: list[Any] = []
        self.failure = failure
        self.prompt_used = prompt_used
        self.prompt_truncated = prompt_truncated

    async def __call__(self, jobs: list[Any]) -> list[GenerationResult]:
        self.jobs.extend(jobs)
        return [self._answer(job) for job in jobs]

    def _answer(self, job: Any) -> GenerationResult:
        size, fmt = (job.width, job.height), getattr(job, "output_format", "JPEG")
        samples = getattr(job, "samples", 1)
        images = [encode_image(Image.new("RGB", size, (i * 60, 0, 0)), fmt) for i in range(samples)]
        return GenerationResult(
            request_id=job.request_id,
            images=[] if self.failure else images,
            seed=job.seed,
            inference_time=0.01,
            failure=self.failure,
            prompt_used=self.prompt_used,
            prompt_truncated=self.prompt_truncated,
        )


def assert_bound(response, recorder: RecordingRunner, field: str, value: Any, ok: bool) -> None:
    """A value at a schema bound: accepted and passed to the runner as given (-1 seeds are
    resolved), or refused with a 400 naming the field before any runner call."""
    if ok:
        assert response.status_code == 200, response.text
        job_value = getattr(recorder.jobs[0], field)
        assert job_value == value or (field == "seed" and value == -1)
    else:
        assert_error(response, 400, field)
        assert recorder.jobs == []
