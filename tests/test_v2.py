"""The v2 API in process, on both job-store backends (memory, and a real redis-server).

The runner is a gated double, so each state (QUEUED, PROCESSING, COMPLETED, FAILED) can be
observed; it answers real encoded images. The real pipeline runs in tests/test_v2_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from gateway.app import create_app, make_job_store
from gateway.runner_client import RunnerClient
from protocol.jobs import GenerationResult, JobFailure
from runners.encoding import encode_image
from settings import Settings
from tests.helpers import b64, scene_image, wait_until

MODEL = "sd1.5-controlnet-depth"


class GatedRunner:
    """Holds every job until `gate` is set; then answers with `samples` real JPEGs, or with
    `failure` when one is set."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.failure: JobFailure | None = None
        self.calls = 0

    async def __call__(self, jobs):
        self.calls += 1
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        return [
            GenerationResult(
                request_id=job.request_id,
                images=[] if self.failure else [
                    encode_image(Image.new("RGB", (job.width, job.height), (i * 50, 9, 9)), "JPEG")
                    for i in range(job.samples)
                ],
                seed=job.seed,
                inference_time=0.25,
                failure=self.failure,
            )
            for job in jobs
        ]  # fmt: skip


@pytest.fixture
def runner() -> GatedRunner:
    return GatedRunner()


def make_client(runner: GatedRunner, **overrides) -> TestClient:
    settings = Settings(
        **{"job_workers": 1, "job_visibility_timeout_s": 1.0, "shutdown_grace_s": 1, **overrides}
    )
    app = create_app(settings, runners={MODEL: RunnerClient("sd15_depth", runner, 30)})
    return TestClient(app, raise_server_exceptions=False)


def body(**fields) -> dict:
    return {"image": b64(scene_image(96, 64)), "prompt": "a house", **fields}


def status_of(client: TestClient, request_id: str) -> str:
    return client.get(f"/v2/requests/{request_id}/status").json()["status"]


def test_lifecycle(backend, runner):
    with make_client(runner, **backend) as client:
        submitted = client.post(f"/v2/{MODEL}", json=body(samples=2, seed=77))
        assert submitted.status_code == 200, submitted.text
        answer = submitted.json()
        request_id = answer["request_id"]
        assert answer["status"] == "QUEUED"
        assert answer["status_url"] == f"http://testserver/v2/requests/{request_id}/status"
        assert answer["response_url"] == f"http://testserver/v2/requests/{request_id}"

        assert wait_until(lambda: status_of(client, request_id) == "PROCESSING", 10)
        pending = client.get(f"/v2/requests/{request_id}")
        assert pending.status_code == 202
        assert pending.json() == {"request_id": request_id, "status": "PROCESSING"}

        runner.gate.set()
        assert wait_until(lambda: status_of(client, request_id) == "COMPLETED", 10)
        final = client.get(f"/v2/requests/{request_id}")
        assert final.status_code == 200
        result = final.json()
        assert result["request_id"] == request_id and result["status"] == "COMPLETED"
        assert result["seed"] == 77 and final.headers["x-seed"] == "77"
        assert result["metrics"]["inference_time"] == 0.25
        assert 0 <= result["metrics"]["queue_time"] < 10
        assert len(result["output"]) == 2
        for index, url in enumerate(result["output"]):
            assert url == f"http://testserver/v2/requests/{request_id}/output/{index}"
            image = client.get(url)
            assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
            assert Image.open(io.BytesIO(image.content)).size == (64, 40)
        assert client.get(f"/v2/requests/{request_id}/output/2").status_code == 404


def test_base64_output(backend, runner):
    runner.gate.set()
    with make_client(runner, **backend) as client:
        request_id = client.post(f"/v2/{MODEL}", json=body(base64=True)).json()["request_id"]
        assert wait_until(lambda: status_of(client, request_id) == "COMPLETED", 10)
        [encoded] = client.get(f"/v2/requests/{request_id}").json()["output"]
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).format == "JPEG"


def test_queue_time_is_measured(backend, runner):
    with make_client(runner, **backend) as client:
        first = client.post(f"/v2/{MODEL}", json=body()).json()["request_id"]
        assert wait_until(lambda: status_of(client, first) == "PROCESSING", 10)
        second = client.post(f"/v2/{MODEL}", json=body()).json()["request_id"]
        time.sleep(0.5)  # the second waits behind the first (one worker slot)
        runner.gate.set()
        assert wait_until(lambda: status_of(client, second) == "COMPLETED", 10)
        queue_time = client.get(f"/v2/requests/{second}").json()["metrics"]["queue_time"]
        assert queue_time >= 0.5


def test_failed_job_answers_422_with_error(backend, runner):
    runner.failure = JobFailure(kind="blocked", message="the result was blocked")
    runner.gate.set()
    with make_client(runner, **backend) as client:
        request_id = client.post(f"/v2/{MODEL}", json=body()).json()["request_id"]
        assert wait_until(lambda: status_of(client, request_id) == "FAILED", 10)
        status = client.get(f"/v2/requests/{request_id}/status")
        assert status.status_code == 422
        assert status.json() == {
            "request_id": request_id, "status": "FAILED", "error": "the result was blocked",
        }  # fmt: skip
        final = client.get(f"/v2/requests/{request_id}")
        assert final.status_code == 422 and final.json()["error"] == "the result was blocked"
        assert client.get(f"/v2/requests/{request_id}/output/0").status_code == 404


def test_bad_requests_are_400_at_submit_and_never_queued(backend, runner):
    with make_client(runner, **backend) as client:
        bad_field = client.post(f"/v2/{MODEL}", json=body(num_inference_steps=5))
        assert bad_field.status_code == 400
        assert bad_field.json()["details"][0]["field"] == "num_inference_steps"
        bad_image = client.post(f"/v2/{MODEL}", json=body(image=b64(b"not an image")))
        assert bad_image.status_code == 400 and "image" in bad_image.json()["error"]
        malformed = client.post(
            f"/v2/{MODEL}", content=b"{", headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["error"]
        assert client.post(f"/v2/{MODEL}", content=b"[]").status_code == 400
        time.sleep(0.2)
        assert runner.calls == 0


def test_unknown_model_and_ids_are_404(backend, runner):
    with make_client(runner, **backend) as client:
        assert client.post("/v2/nope", json=body()).status_code == 404
        for path in ("/v2/requests/abc/status", "/v2/requests/abc", "/v2/requests/abc/output/0"):
            response = client.get(path)
            assert response.status_code == 404 and "abc" in response.json()["error"]


def test_results_expire(backend, runner):
    runner.gate.set()
    with make_client(runner, job_retention_s=1, **backend) as client:
        request_id = client.post(f"/v2/{MODEL}", json=body()).json()["request_id"]
        assert wait_until(lambda: status_of(client, request_id) == "COMPLETED", 10)
        assert client.get(f"/v2/requests/{request_id}/output/0").status_code == 200
        time.sleep(2.2)
        for path in ("/status", "", "/output/0"):
            assert client.get(f"/v2/requests/{request_id}{path}").status_code == 404


def test_full_queue_is_429_with_retry_after(backend, runner):
    with make_client(runner, job_queue_max=1, queue_retry_after_s=7, **backend) as client:
        first = client.post(f"/v2/{MODEL}", json=body()).json()["request_id"]
        assert wait_until(lambda: status_of(client, first) == "PROCESSING", 10)
        assert client.post(f"/v2/{MODEL}", json=body()).status_code == 200  # waits in the queue
        refused = client.post(f"/v2/{MODEL}", json=body())
        assert refused.status_code == 429 and refused.headers["retry-after"] == "7"
        assert "queue" in refused.json()["error"]
        runner.gate.set()


def test_public_base_url_setting(backend, runner):
    with make_client(runner, public_base_url="https://images.example.com/", **backend) as client:
        answer = client.post(f"/v2/{MODEL}", json=body()).json()
        assert answer["status_url"].startswith("https://images.example.com/v2/requests/")
        runner.gate.set()


def test_graceful_shutdown_hands_back_the_job_in_hand(redis_url, runner):
    redis.Redis.from_url(redis_url).flushall()
    with make_client(runner, job_store_url=redis_url) as client:
        request_id = client.post(f"/v2/{MODEL}", json=body()).json()["request_id"]
        assert wait_until(lambda: status_of(client, request_id) == "PROCESSING", 10)
    # The app stopped (grace 1s) with the job unfinished: it was handed back at once (queued,
    # no lease), not left for the reaper to find after the visibility timeout.
    store = redis.Redis.from_url(redis_url)
    assert store.hget(f"depthid:job:{request_id}", "status") == b"QUEUED"
    assert store.lrange("depthid:queue", 0, -1) == [request_id.encode()]
    assert not store.exists(f"depthid:lease:{request_id}")
    runner.gate.set()
    with make_client(runner, job_store_url=redis_url) as client:
        assert wait_until(lambda: status_of(client, request_id) == "COMPLETED", 10)


class StoppedRunner:
    """A runner that stops with the Gateway, as a replica's own runners do on SIGTERM: once
    `stopped` is set, every call is refused at the transport."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.calls = 0

    async def __call__(self, jobs):
        self.calls += 1
        while not self.stopped.is_set():
            await asyncio.sleep(0.01)
        raise ConnectionRefusedError("runner stopped")


def test_a_stopping_replica_hands_back_a_job_its_runner_refused_without_an_attempt(backend):
    runner = StoppedRunner()
    client = make_client(runner, shutdown_grace_s=30, **backend)
    with client:
        request_id = client.post(f"/v2/{MODEL}", json=body()).json()["request_id"]
        assert wait_until(lambda: status_of(client, request_id) == "PROCESSING", 10)
        store = client.app.state.job_store
        runner.stopped.set()
        # What a SIGTERM does: the app stops (its worker first), its runners with it.
        started = time.monotonic()
    # Handed back at once, not retried against the stopped runner until the grace ran out; the
    # take it had does not count as an attempt, so the replica that runs it next runs it once.
    assert time.monotonic() - started < 10
    if backend:  # Redis: read it afresh (the app's client closed with it)
        store = make_job_store(Settings(**backend))
    record = asyncio.run(store.get(request_id))
    assert record.status == "QUEUED"
    assert record.attempts == 0
