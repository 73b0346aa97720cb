"""v2 end to end: served Gateways on a shared redis-server, the official `segmind` SDK, and a
worker killed with SIGKILL in the middle of a job."""

from __future__ import annotations

import io
import time
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from PIL import Image
from segmind import InferenceFailed, SegmindClient

from tests.support.helpers import b64, free_port, scene_image, wait_until
from tests.support.redis_server import redis_server
from tests.support.served import kill_tree, process_tree, serve, serve_process

pytestmark = pytest.mark.served  # `bentoml serve` instances of its own

MODEL = "sd1.5-controlnet-depth"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis"), appendonly=True) as server:
        yield server.url


@pytest.fixture(scope="module")
def gateways(redis_url, tiny_settings):
    """Two Gateway replicas (each with its own runner) sharing one Redis."""
    env = {"DEPTHID_JOB_STORE_URL": redis_url, "DEPTHID_JOB_VISIBILITY_TIMEOUT_S": "3"}
    with serve_process(env=env) as first, serve_process(env=env) as second:
        yield [first, second]


def params(**fields) -> dict:
    return {"image": b64(scene_image(96, 64)), "prompt": "a house by a lake", **fields}


def is_jpeg(data: bytes) -> bool:
    return Image.open(io.BytesIO(data)).format == "JPEG"


def test_sdk_run_run_sync_and_submit_async(gateways):
    (url, _), _ = gateways
    client = SegmindClient(api_key="unused", base_url=f"{url}/v1")

    result = client.run(MODEL, **params(seed=9))
    assert result["status"] == "COMPLETED" and result["seed"] == 9
    assert result["metrics"]["inference_time"] > 0 and result["metrics"]["queue_time"] >= 0
    [image_url] = result["output"]
    assert is_jpeg(httpx.get(image_url).content)

    response = client.run_sync(MODEL, **params(seed=9))
    assert response.headers["content-type"] == "image/jpeg" and is_jpeg(response.content)
    # v1 and v2 run the same runner API: the same seed gives the same image.
    assert response.content == httpx.get(image_url).content

    job = client.submit_async(MODEL, **params(samples=2))
    assert job.request_id and job.status_url.endswith(f"/v2/requests/{job.request_id}/status")
    body = job.wait(timeout=120, interval=0.2)
    assert body["status"] == "COMPLETED" and len(body["output"]) == 2


def test_a_job_submitted_to_one_replica_is_served_by_the_other(gateways):
    (first, _), (second, _) = gateways
    request_id = httpx.post(f"{first}/v2/{MODEL}", json=params()).json()["request_id"]

    def done() -> bool:
        return (
            httpx.get(f"{second}/v2/requests/{request_id}/status").json()["status"] == "COMPLETED"
        )

    assert wait_until(done, 120)
    result = httpx.get(f"{second}/v2/requests/{request_id}").json()
    image = httpx.get(f"{second}/v2/requests/{request_id}/output/0")
    assert result["status"] == "COMPLETED" and is_jpeg(image.content)


def test_sdk_raises_inference_failed_with_the_servers_error(tiny_settings):
    # A Gateway whose runner never answers: the worker waits for it up to the (short)
    # generation deadline, then the job FAILS with the reason.
    env = {
        "DEPTHID_SD15_RUNNER_URL": f"http://127.0.0.1:{free_port()}",
        "DEPTHID_GENERATION_TIMEOUT_S": "5",
    }
    with serve(env=env, wait_ready=False) as url:
        assert wait_until(lambda: _answers(f"{url}/livez"), 120)
        client = SegmindClient(api_key="unused", base_url=f"{url}/v1")
        with pytest.raises(InferenceFailed) as failure:
            client.submit_async(MODEL, **params()).wait(timeout=60, interval=0.2)
        assert "unreachable" in failure.value.detail
        assert failure.value.status_body["status"] == "FAILED"


def test_a_killed_workers_job_completes_elsewhere(gateways, redis_url):
    """SIGKILL the whole replica holding a job mid-generation; the other replica takes the job
    again after the visibility timeout and completes it. (Runs last: it kills a replica.)"""
    (first, first_process), (second, second_process) = gateways
    store = redis.Redis.from_url(redis_url)
    long_job = params(num_inference_steps=100, samples=4, seed=1)
    request_id = httpx.post(f"{first}/v2/{MODEL}", json=long_job).json()["request_id"]

    assert wait_until(lambda: store.get(f"depthid:lease:{request_id}") is not None, 60, 0.05)
    owner_pid = int(store.get(f"depthid:lease:{request_id}").decode().split(":")[1])
    first_pids = {member.pid for member in process_tree(first_process)}
    holder = first_process if owner_pid in first_pids else second_process
    survivor = second if holder is first_process else first
    assert status(survivor, request_id) == "PROCESSING"
    kill_tree(holder)
    killed_at = time.monotonic()

    def completed() -> bool:
        return status(survivor, request_id) == "COMPLETED"

    assert wait_until(completed, 180)
    assert time.monotonic() - killed_at >= 3  # not before the visibility timeout
    result = httpx.get(f"{survivor}/v2/requests/{request_id}").json()
    assert len(result["output"]) == 4
    # The links carry the host the job was submitted to, which may be the killed replica;
    # in a cluster DEPTHID_PUBLIC_BASE_URL names the load balancer. Ask the survivor.
    paths = [urlsplit(url).path for url in result["output"]]
    assert all(is_jpeg(httpx.get(f"{survivor}{path}").content) for path in paths)
    assert int(store.hget(f"depthid:job:{request_id}", "attempts")) == 2


def status(base_url: str, request_id: str) -> str:
    return httpx.get(f"{base_url}/v2/requests/{request_id}/status").json()["status"]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
