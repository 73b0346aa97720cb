"""After an overload, served end to end (a `bentoml serve` of its own, sd1.5): every answer
comes by its deadline (plus a margin), and the runner does not work through the abandoned
requests (runners/deadlines.py): what it runs after the overload is at most the one call it
was running, read from its own metrics, whatever the machine's speed. How fast lone requests
are right after an overload is a timing: `make bench` part (d) prints it."""

from __future__ import annotations

import concurrent.futures
import functools
import statistics
import time

import httpx
import pytest

from benchmarks.bench import timed_post
from benchmarks.latency import MODELS
from settings import Settings
from tests.support.api_key_helpers import entry, key_of, write_keys
from tests.support.helpers import metric_value, wait_until
from tests.support.served import serve

pytestmark = pytest.mark.served  # `bentoml serve` instances of its own

MODEL = "sd1.5-controlnet-depth"
DEADLINE_S = 4.0
# Past the deadline an answer may take this long more: the 504 itself, on a busy shared
# machine whose event loops serve a few dozen clients.
ANSWER_MARGIN_S = 3.0
CLIENTS = 32  # several times what the runner answers within the deadline
OVERLOAD_S = 10.0
OVERLOAD_STEPS = 60  # per overload request; lone requests keep the default
LONE_REQUESTS = 3


CREDITS = 100_000
KEY = {"x-api-key": key_of("load")}


@pytest.fixture(scope="module")
def base_url(tiny_settings, tmp_path_factory):
    """A served instance of its own: a short deadline, and one API key with credits and no
    limits (so that refunds show in `x-remaining-credits`)."""
    keys = write_keys(
        tmp_path_factory.mktemp("keys"),
        entry("load", credits=CREDITS, requests_per_minute=0, concurrent_jobs=0),
    )
    env = {"DEPTHID_GENERATION_TIMEOUT_S": str(DEADLINE_S), "DEPTHID_API_KEYS_FILE": str(keys)}
    with serve(env=env) as url:
        yield url


RUNNER = {"runner": "sd15_depth"}


def stopped_samples(base_url: str, stage: str) -> float:
    return metric_value(base_url, "depthid_runner_abandoned_samples_total", **RUNNER, stage=stage)


def test_a_v1_caller_who_hangs_up_is_refunded_and_its_work_stops(base_url):
    body = MODELS[MODEL][2]()
    with httpx.Client(base_url=base_url, timeout=60, headers=KEY) as client:
        idle = statistics.median(timed_post(client, MODEL, body).seconds for _ in range(3))
        spent_before = CREDITS - int(
            client.post(f"/v1/{MODEL}", json=body).headers["x-remaining-credits"]
        )
        stopped_before = stopped_samples(base_url, "running")
        # Four samples of 100 steps (about 20 default requests of work), cut off by the caller
        # after two default requests' time: a hang-up on a machine of any speed.
        long_body = {**body, "num_inference_steps": 100, "samples": 4}
        with pytest.raises(httpx.ReadTimeout):
            client.post(f"/v1/{MODEL}", json=long_body, timeout=max(2 * idle, 0.2))
        # The Gateway notices within its 0.25 s poll and tells the runner, whose call stops at
        # its next step.
        assert wait_until(
            lambda: stopped_samples(base_url, "running") >= stopped_before + 4, timeout_s=30
        )
        remaining = int(client.post(f"/v1/{MODEL}", json=body).headers["x-remaining-credits"])
    # Refunded: only the requests answered are paid for (20 credits each at the defaults): the
    # hang-up costs nothing, the request after it 20.
    assert CREDITS - remaining == spent_before + 20


def test_answers_keep_their_deadline_and_no_abandoned_work_is_run_after_an_overload(base_url):
    body = MODELS[MODEL][2]()
    samples_run = functools.partial(
        metric_value, base_url, "depthid_runner_batch_size_sum", **RUNNER
    )
    with httpx.Client(base_url=base_url, timeout=60, headers=KEY) as client:
        timed_post(client, MODEL, body)
        overload_end = time.monotonic() + OVERLOAD_S

        def keep_sending(index: int) -> list[tuple[int, float]]:
            answers = []
            while time.monotonic() < overload_end:
                start = time.perf_counter()
                # Long generations, so the runner is overloaded however fast the machine is.
                response = client.post(
                    f"/v1/{MODEL}",
                    json={**body, "seed": index, "num_inference_steps": OVERLOAD_STEPS},
                )
                answers.append((response.status_code, time.perf_counter() - start))
            return answers

        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            answers = [
                a for per_client in pool.map(keep_sending, range(CLIENTS)) for a in per_client
            ]
        # Every caller has its answer: what the runner starts from now on is either the call
        # it was running (at most the max batch size) or the requests sent next.
        run_at_end = samples_run()
        for _ in range(LONE_REQUESTS):
            timed_post(client, MODEL, body)  # raises unless 200

    statuses = {status for status, _ in answers}
    assert statuses <= {200, 504}, statuses
    assert 504 in statuses, "not an overload: raise CLIENTS"
    latest = max(seconds for _, seconds in answers)
    assert latest <= DEADLINE_S + ANSWER_MARGIN_S, (latest, DEADLINE_S)
    # The abandoned requests were dropped from the runner's queue, not run after the overload.
    assert stopped_samples(base_url, "queued") > 0
    ran_after = samples_run() - run_at_end
    assert ran_after <= Settings().sd15_max_batch_size + LONE_REQUESTS, ran_after
