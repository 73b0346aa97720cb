"""Credits, in process: the cost formula, `x-remaining-credits`, 406 before any runner work,
refunds of failed generations (v1 and v2, exactly once), and races for the last credits on the
memory ledger and on Redis shared by two app instances."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest
import redis

from gateway import metrics
from gateway.jobs.redis_store import RedisJobStore
from gateway.jobs.store import JobRecord
from gateway.jobs.worker import JobWorker
from gateway.runner_client import RunnerClient
from gateway.schemas import sd15_depth
from gateway.schemas.registry import MODEL_SPECS
from gateway.serving import Serving
from gateway.tenancy.credits import Credits, RedisCreditLedger
from gateway.tenancy.rate_limits import MemoryLimitStore, RateLimits
from protocol.jobs import JobFailure
from settings import Settings
from tests.support.api_key_helpers import (
    SD15,
    SD15_DEFAULT_COST,
    HeldRunner,
    entry,
    headers,
    make_client,
    sd15_body,
    status_of,
    write_keys,
)
from tests.support.helpers import RecordingRunner, assert_error, wait_until

V1 = f"/v1/{SD15}"
NO_LIMITS = {"requests_per_minute": 0, "concurrent_jobs": 0}


@pytest.fixture
def refused(monkeypatch) -> list[str]:
    """The models of every count_credits_refused call."""
    calls: list[str] = []
    monkeypatch.setattr(metrics, "count_credits_refused", calls.append)
    return calls


# --- the formula ---------------------------------------------------------------------------


REQUIRED = {
    "sd1.5-controlnet-depth": {"image": "x", "prompt": "p"},
    "instantid": {"face_image": "x", "prompt": "p"},
    "insta-depth": {"face_image": "x", "pose_image": "x", "prompt": "p"},
    "flux-depth-pro": {"control_image": "x", "prompt": "p"},
}


@pytest.mark.parametrize("model", sorted(MODEL_SPECS))
def test_cost_is_samples_times_steps_times_the_models_price(model):
    spec = MODEL_SPECS[model]
    steps_field = spec.steps_field
    default = spec.request.model_validate(REQUIRED[model])
    steps = getattr(default, steps_field)
    samples = getattr(default, "samples", 1)
    assert spec.credit_cost(default) == samples * steps * spec.credits_per_step
    more_steps = spec.request.model_validate({**REQUIRED[model], steps_field: steps + 10})
    assert spec.credit_cost(more_steps) - spec.credit_cost(default) == 10 * spec.credits_per_step
    if hasattr(default, "samples"):
        three = spec.request.model_validate({**REQUIRED[model], "samples": 3})
        assert spec.credit_cost(three) == 3 * spec.credit_cost(default)


def test_heavier_models_cost_more_per_step():
    price = {name: spec.credits_per_step for name, spec in MODEL_SPECS.items()}
    assert price["sd1.5-controlnet-depth"] < price["instantid"] < price["insta-depth"]
    assert price["insta-depth"] < price["flux-depth-pro"]


# --- v1 ------------------------------------------------------------------------------------


def requests_run(recorder: RecordingRunner) -> int:
    return len({job.request_id for job in recorder.jobs})  # samples may reach it as jobs


def test_v1_spends_credits_then_406_before_the_runner(tmp_path, refused):
    recorder = RecordingRunner()
    keys = write_keys(tmp_path, entry("team-a", credits=5 * SD15_DEFAULT_COST, **NO_LIMITS))
    with make_client(keys, {SD15: recorder}) as client:

        def remaining_after(**fields) -> int:
            answer = client.post(V1, json=sd15_body(**fields), headers=headers("team-a"))
            assert answer.status_code == 200, answer.text
            return int(answer.headers["x-remaining-credits"])

        assert remaining_after() == 4 * SD15_DEFAULT_COST
        assert remaining_after(samples=2) == 2 * SD15_DEFAULT_COST  # JSON answer: 2 images
        assert remaining_after(num_inference_steps=40) == 0  # twice the default steps
        assert requests_run(recorder) == 3
        short = client.post(V1, json=sd15_body(), headers=headers("team-a"))
        payload = assert_error(short, 406)
        assert "credits" in payload["error"] and short.headers["x-remaining-credits"] == "0"
        assert requests_run(recorder) == 3  # no runner work for a refused request
        assert refused == [SD15]


def test_a_request_dearer_than_what_is_left_is_refused_and_spends_nothing(tmp_path, refused):
    keys = write_keys(tmp_path, entry("team-a", credits=SD15_DEFAULT_COST + 5, **NO_LIMITS))
    with make_client(keys) as client:
        dear = client.post(V1, json=sd15_body(samples=2), headers=headers("team-a"))
        assert_error(dear, 406)
        assert dear.headers["x-remaining-credits"] == str(SD15_DEFAULT_COST + 5)
        cheap = client.post(V1, json=sd15_body(), headers=headers("team-a"))
        assert cheap.status_code == 200 and cheap.headers["x-remaining-credits"] == "5"


def test_keys_without_credits_and_no_keys_carry_no_credit_header(tmp_path):
    keys = write_keys(tmp_path, entry("unlimited", **NO_LIMITS))
    with make_client(keys) as client:
        for _ in range(3):
            answer = client.post(V1, json=sd15_body(), headers=headers("unlimited"))
            assert answer.status_code == 200 and "x-remaining-credits" not in answer.headers
    with make_client(None) as client:
        answer = client.post(V1, json=sd15_body())
        assert answer.status_code == 200 and "x-remaining-credits" not in answer.headers


def failing_with(failure: JobFailure):
    return RecordingRunner(failure=failure)


async def unreachable(jobs):
    raise aiohttp.ClientConnectionError("connection refused")


async def broken(jobs):
    raise RuntimeError("a bug")


async def too_slow(jobs):
    await asyncio.sleep(5)  # past the 0.3 s deadline of the test's client


@pytest.mark.parametrize(
    ("runner", "status"),
    [
        (failing_with(JobFailure(kind="blocked", message="blocked by the safety checker")), 422),
        (failing_with(JobFailure(kind="invalid_input", message="no face", field="image")), 400),
        (unreachable, 502),
        (too_slow, 504),
        (broken, 500),
    ],
    ids=["blocked", "runner-refused-input", "unreachable", "deadline", "internal"],
)
def test_v1_failures_give_the_credits_back(tmp_path, runner, status):
    credits = 3 * SD15_DEFAULT_COST
    keys = write_keys(tmp_path, entry("team-a", credits=credits, **NO_LIMITS))
    with make_client(keys, {SD15: runner}, deadline_s=0.3) as client:
        for _ in range(4):  # more failures than the credits would pay for
            failed = client.post(V1, json=sd15_body(), headers=headers("team-a"))
            assert_error(failed, status)
            if status != 500:  # an internal fault's answer is the middleware's bare 500
                assert failed.headers["x-remaining-credits"] == str(credits)
        assert asyncio.run(_spent(client)) == 0


async def _spent(client) -> int:
    return await client.app.state.credits.ledger.spent("team-a")


def test_a_bad_image_is_400_and_never_charged(tmp_path):
    keys = write_keys(tmp_path, entry("team-a", credits=SD15_DEFAULT_COST, **NO_LIMITS))
    with make_client(keys) as client:
        bad = client.post(V1, json=sd15_body(image="bm90IGFuIGltYWdl"), headers=headers("team-a"))
        assert_error(bad, 400)
        ok = client.post(V1, json=sd15_body(), headers=headers("team-a"))
        assert ok.status_code == 200 and ok.headers["x-remaining-credits"] == "0"


# --- v2 ------------------------------------------------------------------------------------


def test_v2_charges_at_submit_and_reports_on_the_result(tmp_path, backend, refused):
    keys = write_keys(tmp_path, entry("team-a", credits=2 * SD15_DEFAULT_COST, **NO_LIMITS))
    with make_client(keys, **backend) as client:
        submitted = client.post(f"/v2/{SD15}", json=sd15_body(), headers=headers("team-a"))
        assert submitted.status_code == 200
        assert submitted.headers["x-remaining-credits"] == str(SD15_DEFAULT_COST)
        request_id = submitted.json()["request_id"]
        assert wait_until(lambda: status_of(client, request_id, "team-a") == "COMPLETED", 10)
        second = client.post(f"/v2/{SD15}", json=sd15_body(), headers=headers("team-a"))
        assert second.headers["x-remaining-credits"] == "0"
        final = client.get(f"/v2/requests/{request_id}", headers=headers("team-a"))
        assert final.status_code == 200 and final.headers["x-remaining-credits"] == "0"
        short = client.post(f"/v2/{SD15}", json=sd15_body(), headers=headers("team-a"))
        assert_error(short, 406)
        assert refused == [SD15]


def test_a_failed_v2_job_is_refunded(tmp_path, backend):
    runner = HeldRunner(failure=JobFailure(kind="blocked", message="blocked"))
    credits = 2 * SD15_DEFAULT_COST
    keys = write_keys(tmp_path, entry("team-a", credits=credits, **NO_LIMITS))
    with make_client(keys, {SD15: runner}, **backend) as client:
        submitted = client.post(f"/v2/{SD15}", json=sd15_body(), headers=headers("team-a"))
        assert submitted.headers["x-remaining-credits"] == str(credits - SD15_DEFAULT_COST)
        request_id = submitted.json()["request_id"]
        pending = client.get(f"/v2/requests/{request_id}", headers=headers("team-a"))
        assert pending.status_code == 202
        runner.release.set()
        assert wait_until(lambda: status_of(client, request_id, "team-a") == "FAILED", 10)
        final = client.get(f"/v2/requests/{request_id}", headers=headers("team-a"))
        assert final.status_code == 422 and final.headers["x-remaining-credits"] == str(credits)


def test_a_job_failed_by_two_workers_is_refunded_once(tmp_path, redis_url):
    """A worker presumed dead (its lease ran out) and the worker that took the job again both
    fail it, on two replicas sharing Redis: the credits come back exactly once."""
    redis.Redis.from_url(redis_url).flushall()
    settings = Settings(job_visibility_timeout_s=0.3, generation_timeout_s=5)
    failing = RecordingRunner(failure=JobFailure(kind="blocked", message="blocked"))

    async def scenario() -> int:
        store = RedisJobStore(redis_url, max_queued=10, retention_s=60, visibility_timeout_s=0.3)
        credits = Credits(RedisCreditLedger(redis_url))
        rate_limits = RateLimits(MemoryLimitStore(), settings)
        assert (await credits.ledger.spend("team-a", 100, 20)) == (True, 80)  # as submit does
        record = JobRecord(
            id="job-1", model=SD15, payload=await _sd15_payload(), as_base64=False,
            media_type="image/jpeg", base_url="http://x", submitted_at=time.time(),
            owner="team-a", credits_charged=20,
        )  # fmt: skip
        await store.submit(record)

        def make_worker() -> JobWorker:
            runners = {SD15: RunnerClient("sd15", failing, 5)}
            return JobWorker(store, Serving(settings, runners, credits, rate_limits), settings)

        presumed_dead, live = make_worker(), make_worker()
        first = await store.take(presumed_dead.worker_id, timeout_s=1)
        await asyncio.sleep(0.4)
        assert await store.requeue_expired() == 1
        second = await store.take(live.worker_id, timeout_s=1)
        await live._run_job(second)
        await presumed_dead._run_job(first)  # late: its FAILED write is refused
        assert (await store.get("job-1")).status == "FAILED"
        spent = await credits.ledger.spent("team-a")
        await store.close()
        await credits.close()
        return spent

    assert asyncio.run(scenario()) == 0


async def _sd15_payload() -> str:
    body = sd15_depth.SD15DepthRequest.model_validate(sd15_body())
    job = await sd15_depth.to_job(body, "job-1", Settings())
    return job.model_dump_json()


# --- races for the last credits ------------------------------------------------------------


class SlowRunner(RecordingRunner):
    """Takes a moment, so that concurrent requests overlap."""

    async def __call__(self, jobs):
        await asyncio.sleep(0.05)
        return await super().__call__(jobs)


def race(clients, requests: int) -> list[int]:
    """`requests` concurrent v1 requests of team-a, spread over `clients`; their statuses."""

    def one(index: int) -> int:
        client = clients[index % len(clients)]
        return client.post(V1, json=sd15_body(), headers=headers("team-a")).status_code

    with ThreadPoolExecutor(max_workers=requests) as pool:
        return list(pool.map(one, range(requests)))


def test_credit_race_on_the_memory_ledger(tmp_path, refused):
    affordable = 4
    keys = write_keys(
        tmp_path, entry("team-a", credits=affordable * SD15_DEFAULT_COST, **NO_LIMITS)
    )
    with make_client(keys, {SD15: SlowRunner()}) as client:
        statuses = race([client], 12)
        assert sorted(statuses) == [200] * affordable + [406] * (12 - affordable)
        assert asyncio.run(_spent(client)) == affordable * SD15_DEFAULT_COST
    assert len(refused) == 12 - affordable


def test_credit_race_across_two_instances_on_redis(tmp_path, redis_url):
    redis.Redis.from_url(redis_url).flushall()
    affordable = 5
    keys = write_keys(
        tmp_path, entry("team-a", credits=affordable * SD15_DEFAULT_COST, **NO_LIMITS)
    )
    backend = {"job_store_url": redis_url}
    first = make_client(keys, {SD15: SlowRunner()}, **backend)
    second = make_client(keys, {SD15: SlowRunner()}, **backend)
    with first, second:
        statuses = race([first, second], 16)
        assert sorted(statuses) == [200] * affordable + [406] * (16 - affordable)
    spent = redis.Redis.from_url(redis_url).get("depthid:credits:spent:team-a")
    assert int(spent) == affordable * SD15_DEFAULT_COST
