"""Scale from zero with real processes: the Gateway up, the sd15_depth runner down (no replica,
as KEDA leaves a runner scaled to zero); a v1 request and a v2 job sent; the runner started 10 s
later; both complete, and depthid_waiting_for_runner, the gauge KEDA wakes a runner on, rose while
they waited and fell once they ran. (In process, the same and its 502: tests/gateway/
test_scale_from_zero.py.)"""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from benchmarks.latency import MODELS
from tests.support.helpers import free_port, metric_value, wait_until
from tests.support.served import serve, serve_process

pytestmark = pytest.mark.served  # `bentoml serve` instances of its own

MODEL = "sd1.5-controlnet-depth"
RUNNER_DOWN_S = 10.0  # how long the requests wait before the runner is started


def test_v1_and_v2_requests_wait_for_a_runner_started_after_them(tiny_settings):
    runner_port = free_port()
    # Every runner elsewhere and allowed to scale to zero: the Gateway serves alone, and is
    # ready without any runner up.
    env = {
        "DEPTHID_SD15_RUNNER_URL": f"http://127.0.0.1:{runner_port}",
        "DEPTHID_FLUX_RUNNER_URL": f"http://127.0.0.1:{free_port()}",
        "DEPTHID_INSTANTID_RUNNER_URL": f"http://127.0.0.1:{free_port()}",
        "DEPTHID_SCALE_TO_ZERO_RUNNERS": "sd15_depth,flux_depth,instantid",
    }
    body = MODELS[MODEL][2]()
    with serve_process(env=env) as (gateway, _), httpx.Client(base_url=gateway) as client:

        def waiting() -> float:
            return metric_value(gateway, "depthid_waiting_for_runner", model=MODEL)

        sent = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            v1 = pool.submit(client.post, f"/v1/{MODEL}", json=body, timeout=300)
            submitted = client.post(f"/v2/{MODEL}", json={**body, "seed": 2}, timeout=30)
            assert submitted.status_code == 200, submitted.text
            status_url = submitted.json()["status_url"]
            # Both wait: the v1 request and the v2 job in a worker's hand.
            assert wait_until(lambda: waiting() == 2, 30, 0.2), waiting()
            time.sleep(max(0.0, RUNNER_DOWN_S - (time.monotonic() - sent)))
            assert not v1.done()
            with serve("runners.sd15_depth:SD15Depth", port=runner_port, wait_ready=False):
                answer = v1.result(timeout=300)
                v1_s = time.monotonic() - sent
                assert answer.status_code == 200, answer.text
                assert answer.headers["content-type"] == "image/jpeg"
                assert wait_until(
                    lambda: client.get(status_url).json()["status"] == "COMPLETED", 120, 0.2
                )
                v2_s = time.monotonic() - sent
                assert waiting() == 0
    # Not asserted (timings belong in benchmarks): what the first requests after zero cost here.
    print(f"scale from zero: runner started {RUNNER_DOWN_S:.0f} s after the requests; v1 answered")
    print(f"  after {v1_s:.1f} s, v2 completed after {v2_s:.1f} s (tiny, CPU)")
