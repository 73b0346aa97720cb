"""A Redis outage longer than DEPTHID_REDIS_RETRY_S, against a real redis-server: once Redis is
known to be down, requests answer 503 at once (not after the retries again), and a job that
finished generating meanwhile keeps its result until Redis is back instead of running again.
(On served processes under load: tests/e2e/test_v2_jobs_e2e.py.)"""

from __future__ import annotations

import time

import pytest
import redis

from gateway.redis_client import outage_of
from tests.support.api_key_helpers import SD15, HeldRunner, make_client, sd15_body, status_of
from tests.support.helpers import assert_error, wait_until
from tests.support.redis_server import redis_server

pytestmark = pytest.mark.slow  # restarts a real redis-server

RETRY_S = 3.0


def test_once_redis_is_known_down_requests_answer_503_at_once(tmp_path):
    with redis_server(tmp_path, appendonly=True) as server:
        overrides = {"job_store_url": server.url, "redis_retry_s": RETRY_S}
        with make_client(None, **overrides) as client:
            request_id = client.post(f"/v2/{SD15}", json=sd15_body()).json()["request_id"]
            server.kill()
            # The first request rides out the retries, then finds Redis down: 503.
            assert_error(client.get(f"/v2/requests/{request_id}/status"), 503)
            assert outage_of(server.url).known
            # From then on, every request answers 503 without waiting out the retries again.
            for path in (f"/v2/requests/{request_id}/status", f"/v2/requests/{request_id}"):
                started = time.monotonic()
                response = client.get(path)
                assert_error(response, 503)
                assert response.headers["retry-after"]
                assert time.monotonic() - started < RETRY_S  # no retries: at once
            started = time.monotonic()
            assert_error(client.post(f"/v2/{SD15}", json=sd15_body()), 503)
            assert time.monotonic() - started < RETRY_S
            # Redis back: the next request succeeds, and the outage is over.
            server.start()
            assert wait_until(
                lambda: client.get(f"/v2/requests/{request_id}/status").status_code == 200, 10
            )
            assert not outage_of(server.url).known


def test_a_result_finished_during_an_outage_waits_for_redis_and_is_not_run_again(tmp_path):
    runner = HeldRunner()
    with redis_server(tmp_path, appendonly=True) as server:
        overrides = {"job_store_url": server.url, "redis_retry_s": 0.5}
        with make_client(None, {SD15: runner}, **overrides) as client:
            request_id = client.post(f"/v2/{SD15}", json=sd15_body()).json()["request_id"]
            assert runner.started.wait(10)
            server.kill()
            runner.release.set()  # it finishes while Redis is down: its write fails, and waits
            time.sleep(2.0)  # several tries of the write, each past its retries
            server.start()
            assert wait_until(lambda: status_of(client, request_id, "x") == "COMPLETED", 20)
            assert client.get(f"/v2/requests/{request_id}/output/0").status_code == 200
        store = redis.Redis.from_url(server.url)
        assert int(store.hget(f"depthid:job:{request_id}", "attempts")) == 1
    assert len(runner.jobs) == 1  # generated once
