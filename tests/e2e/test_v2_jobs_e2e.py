"""The job API's guarantees on real processes (served Gateways, runners, a redis-server):
- a job that kills its runner process every time it runs ends FAILED after
  DEPTHID_JOB_MAX_ATTEMPTS takes, the runner killed exactly that often;
- a Gateway stopped with SIGTERM under load finishes or hands back every job it holds within its
  grace, and none runs twice;
- during a Redis outage longer than DEPTHID_REDIS_RETRY_S, requests answer 503 at once once the
  store is known to be down, and jobs that finish generating keep their results for Redis
  instead of generating again;
- a webhook delivery pending when its Gateway is killed (SIGKILL) is made by another Gateway."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest
import redis
from standardwebhooks import Webhook

from benchmarks.latency import MODELS
from gateway.tenancy.api_keys import new_webhook_secret
from tests.support.crashing_runner import CRASH_LOG_ENV
from tests.support.helpers import metric_value, wait_until
from tests.support.redis_server import redis_server
from tests.support.served import kill_tree, process_tree, serve_process, stop
from tests.support.webhook_receiver import receiver

pytestmark = pytest.mark.served  # `bentoml serve` instances of its own

MODEL = "sd1.5-controlnet-depth"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
SETTLE_S = 180.0


def body(**fields) -> dict:
    return {**MODELS[MODEL][2](), **fields}


def status(base_url: str, request_id: str) -> str:
    return httpx.get(f"{base_url}/v2/requests/{request_id}/status", timeout=30).json()["status"]


def submit(base_url: str, count: int, **fields) -> list[str]:
    ids = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for seed in range(count):
            response = client.post(f"/v2/{MODEL}", json=body(seed=seed, **fields))
            assert response.status_code == 200, response.text
            ids.append(response.json()["request_id"])
    return ids


def job_field(store: redis.Redis, request_id: str, field: str) -> bytes | None:
    return store.hget(f"depthid:job:{request_id}", field)


def test_a_job_that_kills_its_runner_every_time_ends_failed_after_max_attempts(
    tiny_settings, tmp_path
):
    crash_log = tmp_path / "crashes.log"
    crash_log.touch()
    runner_env = {CRASH_LOG_ENV: str(crash_log)}
    with serve_process("tests.support.crashing_runner:CrashingSD15", env=runner_env) as (
        runner_url,
        _,
    ):
        env = {"DEPTHID_SD15_RUNNER_URL": runner_url, "DEPTHID_JOB_MAX_ATTEMPTS": "3"}
        with serve_process(env=env) as (url, _):
            [doomed] = submit(url, 1, prompt="crash, every time")
            [fine] = submit(url, 1)
            assert wait_until(lambda: status(url, doomed) == "FAILED", SETTLE_S)
            answer = httpx.get(f"{url}/v2/requests/{doomed}/status").json()
            assert "started 3 times and never ended" in answer["error"]
            assert crash_log.read_text().split() == [doomed] * 3  # and not a fourth time
            assert wait_until(lambda: status(url, fine) == "COMPLETED", SETTLE_S)
            assert metric_value(url, "depthid_jobs_given_up_total", model=MODEL) == 1


@pytest.fixture
def redis_store(tmp_path):
    with redis_server(tmp_path, appendonly=True) as server:
        yield server


def worker_pids(process) -> set[str]:
    return {str(member.pid) for member in process_tree(process)}


def leases_of(store: redis.Redis, pids: set[str]) -> list[str]:
    held = []
    for key in store.scan_iter("depthid:lease:*"):
        owner = (store.get(key) or b"").decode()
        if owner.count(":") >= 2 and owner.split(":")[1] in pids:
            held.append(key.decode())
    return held


def test_a_gateway_stopped_under_load_finishes_or_hands_back_within_its_grace(
    redis_store, tiny_settings
):
    """Under load (v2 jobs in hand and queued, v1 generations in flight that the server waits
    for before it shuts the app down), SIGTERM: within its grace the Gateway holds no job any
    more, each finished there or handed back; every job completes, none taken twice (a hand-back
    at shutdown gives the take back: the job did not fail, `attempts` stays 1)."""
    grace_s = 8.0
    env = {
        "DEPTHID_JOB_STORE_URL": redis_store.url,
        "DEPTHID_JOB_VISIBILITY_TIMEOUT_S": "30",  # no reaper help: the hand-back must do it
        "DEPTHID_SHUTDOWN_GRACE_S": str(grace_s),
    }
    store = redis.Redis.from_url(redis_store.url)
    with serve_process(env=env) as (first, first_process), serve_process(env=env) as (second, _):
        # Long jobs, more than both replicas hold at once: the first holds several when it
        # is stopped, and more wait in the queue.
        ids = submit(first, 12, num_inference_steps=100, samples=2)
        pids = worker_pids(first_process)
        assert wait_until(lambda: len(leases_of(store, pids)) >= 2, 120, 0.05)
        ids += submit(second, 4, num_inference_steps=100, samples=2)
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            in_flight = [pool.submit(v1_call, first) for _ in range(3)]
            time.sleep(1.0)  # the v1 calls are being served
            first_process.terminate()  # SIGTERM, as Kubernetes stops a pod
            stopped_at = time.monotonic()
            # Within its grace, the stopping Gateway holds no job any more.
            assert wait_until(lambda: not leases_of(store, pids), grace_s + 1.0, 0.1), leases_of(
                store, pids
            )
            handed_back_within_s = time.monotonic() - stopped_at
            concurrent.futures.wait(in_flight)
        stop(first_process)
        assert wait_until(lambda: {status(second, i) for i in ids} <= {"COMPLETED"}, SETTLE_S)
        attempts = [int(job_field(store, i, "attempts")) for i in ids]
        assert max(attempts) == 1, attempts
        print(f"the stopped Gateway held no job {handed_back_within_s:.1f} s after SIGTERM")


def v1_call(base_url: str) -> int:
    """A long v1 generation; its answer does not matter (the Gateway is stopping)."""
    try:
        heavy = body(num_inference_steps=100, samples=4)
        return httpx.post(f"{base_url}/v1/{MODEL}", json=heavy, timeout=120).status_code
    except httpx.HTTPError:
        return 0


def test_a_redis_outage_longer_than_the_retries_answers_503_at_once_and_reruns_nothing(
    redis_store, tiny_settings
):
    retry_s = 3.0
    env = {
        "DEPTHID_JOB_STORE_URL": redis_store.url,
        "DEPTHID_REDIS_RETRY_S": str(retry_s),
        "DEPTHID_JOB_VISIBILITY_TIMEOUT_S": "5",
    }
    store = redis.Redis.from_url(redis_store.url)
    with serve_process(env=env) as (url, _):
        ids = submit(url, 8, num_inference_steps=40)
        assert wait_until(lambda: job_field(store, ids[0], "status") == b"PROCESSING", 60, 0.05)
        redis_store.kill()
        down_at = time.monotonic()
        with httpx.Client(base_url=url, timeout=60) as client:
            # The first requests ride out the retries, then answer 503: now the store is known
            # to be down, and each answers 503 at once (well within one retry budget).
            assert client.get(f"/v2/requests/{ids[0]}/status").status_code == 503
            answers = []
            for request_id in ids:
                started = time.monotonic()
                response = client.get(f"/v2/requests/{request_id}/status")
                answers.append((response.status_code, time.monotonic() - started))
            submitted = client.post(f"/v2/{MODEL}", json=body())
            assert submitted.status_code == 503 and submitted.headers["retry-after"]
        assert all(code == 503 and seconds < retry_s for code, seconds in answers), answers
        print(f"503 once known down: slowest {max(s for _, s in answers):.3f} s")
        # Down for longer than the retries and the visibility timeout, jobs finishing meanwhile.
        time.sleep(max(0.0, 12.0 - (time.monotonic() - down_at)))
        redis_store.start()
        assert wait_until(lambda: all(status(url, i) == "COMPLETED" for i in ids), SETTLE_S)
        attempts = [int(job_field(store, i, "attempts")) for i in ids]
        assert max(attempts) == 1, attempts  # no finished result thrown away and run again


def test_a_webhook_pending_when_its_gateway_is_killed_is_delivered_by_another(
    redis_store, tiny_settings, tmp_path
):
    secret = new_webhook_secret()
    env = {
        "DEPTHID_JOB_STORE_URL": redis_store.url,
        "DEPTHID_WEBHOOK_SECRET": secret,
        "DEPTHID_WEBHOOK_BACKOFF_S": "1",
        "DEPTHID_URL_ALLOWED_NETWORKS": "127.0.0.0/8",
    }
    store = redis.Redis.from_url(redis_store.url)
    with receiver(start=False) as hook:
        with serve_process(env=env) as (first, first_process):
            [request_id] = submit(first, 1, webhook=hook.url)
            # Completed while its receiver is down: the delivery is pending, retried.
            assert wait_until(lambda: status(first, request_id) == "COMPLETED", SETTLE_S)
            kill_tree(first_process)  # SIGKILL, deliveries pending
        assert store.zscore("depthid:webhooks", f"{request_id}|completed") is not None
        hook.start()
        with serve_process(env=env) as (second, _):
            assert wait_until(lambda: len(hook.received) >= 1, 60)
            headers, sent = hook.received[-1]
            assert Webhook(secret).verify(sent, headers)["request_id"] == request_id

            def delivered() -> bool:
                answer = httpx.get(f"{second}/v2/requests/{request_id}/status").json()
                return answer["webhook"]["deliveries"] == {"completed": "delivered"}

            assert wait_until(delivered, 30)
            assert metric_value(second, "depthid_webhook_deliveries_total", outcome="delivered")
