"""Locust users for DepthID: every model, v1 (one synchronous POST) and v2 (submit, then poll the
status as the official SDK does, then fetch the result and its first image), in the proportions
of a scenario file (loadtests/scenarios/*.toml).

    locust -f loadtests/locustfile.py --scenario loadtests/scenarios/smoke.toml --host URL

`depthid loadtest` (run.py) runs it headless and applies the thresholds: the release gate.

What the statistics hold, by name: `v1 <model>` (a generation), `v2 submit <model>`,
`v2 status`, `v2 result`, `v2 output`, and `v2 job <model>`: one entry per v2 job, from submit
until its result was fetched, failed when the job ended FAILED or never ended.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
from locust import HttpUser, between, events, task
from locust.clients import ResponseContextManager
from locust.runners import STATE_STOPPED
from segmind.v2 import DEFAULT_POLL_INTERVAL_S, DEFAULT_POLL_TIMEOUT_S

HERE = Path(__file__).resolve().parent
# Locust imports this file by its path, with only its own folder on sys.path: add the project's.
sys.path.insert(0, str(HERE.parent))
from loadtests.photo_payloads import photo_bodies  # noqa: E402

PAYLOADS = HERE / "payloads"
DEFAULT_SCENARIO = HERE / "scenarios" / "smoke.toml"
API_KEY_HEADER = "x-api-key"
JOB_REQUEST_TYPE = "JOB"  # the request type of the `v2 job <model>` entries
STATES = {"QUEUED", "PROCESSING", "COMPLETED", "FAILED"}


def request_bodies(payloads: str = "synthetic") -> dict[str, dict[str, Any]]:
    """A valid request body per model, with the scenario's pictures. `synthetic`: the shipped
    payloads, payloads/<model>.json (faces the tiny profile's detector finds; the depth models'
    picture is flux_control.jpg, a room with clear depth cues). `photo`: the same bodies with a
    real photo a real face detector finds (photo_payloads.py), for `full`. Defaults for
    everything else."""
    if payloads not in PAYLOAD_KINDS:
        raise ValueError(f"unknown payloads {payloads!r}; known: {list(PAYLOAD_KINDS)}")
    synthetic = {model: json.loads((PAYLOADS / f"{model}.json").read_text()) for model in MODELS}
    return synthetic if payloads == "synthetic" else photo_bodies(synthetic)


PAYLOAD_KINDS = ("synthetic", "photo")
# The models the load test can ask for: those with a body in payloads/.
MODELS = tuple(sorted(path.stem for path in PAYLOADS.glob("*.json")))
BODIES: dict[str, dict[str, Any]] = {}  # the scenario's, set when Locust starts


def load_scenario(path: Path) -> dict[str, Any]:
    """A scenario file, with its weights checked against the models and flows there are."""
    scenario = tomllib.loads(Path(path).read_text())
    for flow, weights in scenario["weights"].items():
        if flow not in {"v1", "v2"}:
            raise ValueError(f"{path}: unknown flow {flow!r} (v1 or v2)")
        unknown = set(weights) - set(MODELS)
        if unknown:
            raise ValueError(f"{path}: unknown model(s) {sorted(unknown)}; known: {list(MODELS)}")
    if scenario.setdefault("payloads", "synthetic") not in PAYLOAD_KINDS:
        raise ValueError(f"{path}: payloads must be one of {list(PAYLOAD_KINDS)}")
    return scenario


def schedule(weights: dict[str, dict[str, int]]) -> list[tuple[str, str]]:
    """One round of (model, flow) picks, each as often as its weight, spread evenly over the
    round. The users take picks in turn from this round, over and over: unlike random picks,
    every (model, flow) runs within the first round, however short the run."""
    slots = [
        ((index + 0.5) / weight, model, flow)
        for flow, by_model in weights.items()
        for model, weight in by_model.items()
        for index in range(weight)
    ]
    return [(model, flow) for _, model, flow in sorted(slots)]


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--scenario", default=str(DEFAULT_SCENARIO), help="scenario file (weights, wait)"
    )
    parser.add_argument(
        "--api-key",
        default="",
        env_var="LOADTEST_API_KEY",
        help="sent as x-api-key when the server has API keys configured",
    )
    parser.add_argument(
        "--summary-file", default="", help="write the final statistics here (JSON), for the gate"
    )
    parser.add_argument(
        "--progress-every", type=float, default=5.0, help="seconds between progress lines (0: none)"
    )


@events.test_start.add_listener
def start_progress(environment: Any, **_: Any) -> None:
    """A line every --progress-every seconds while the run goes on (Locust's own table is off
    with --only-summary): requests, failures and the p95 so far."""
    every = environment.parsed_options.progress_every
    if every > 0:
        gevent.spawn(_report_progress, environment, every)


def _report_progress(environment: Any, every: float) -> None:
    started = time.monotonic()
    while environment.runner is not None and environment.runner.state != STATE_STOPPED:
        gevent.sleep(every)
        total = environment.stats.total
        p95 = total.get_response_time_percentile(0.95) if total.num_requests else 0
        print(
            progress_line(time.monotonic() - started, total.num_requests, total.num_failures, p95),
            flush=True,
        )


def progress_line(elapsed_s: float, requests: int, failures: int, p95_ms: float) -> str:
    return (
        f"progress {elapsed_s:4.0f} s: {requests} requests, {failures} failures, "
        f"p95 so far {p95_ms:.0f} ms"
    )


@events.init.add_listener
def apply_scenario(environment: Any, **_: Any) -> None:
    scenario = load_scenario(environment.parsed_options.scenario)
    BODIES.update(request_bodies(scenario["payloads"]))
    DepthIDUser.picks = itertools.cycle(schedule(scenario["weights"]))
    DepthIDUser.wait_time = between(*scenario["wait_s"])


@events.quitting.add_listener
def write_summary(environment: Any, **_: Any) -> None:
    """The final statistics of every entry and of all together ("Aggregated"), once every user
    has stopped: what the gate (run.py) judges. Locust's CSV is written once a second while the
    run goes on, so its last rows may miss the last second."""
    path = environment.parsed_options.summary_file
    if not path:
        return
    stats = environment.stats
    summary = [
        {
            "type": entry.method or "",
            "name": entry.name,
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "requests_per_s": entry.total_rps,
            "failures_per_s": entry.total_fail_per_sec,
            "p95_ms": entry.get_response_time_percentile(0.95) if entry.num_requests else None,
        }
        for entry in [*stats.entries.values(), stats.total]
    ]
    Path(path).write_text(json.dumps(summary, indent=1))


def json_of(response: ResponseContextManager) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def failure_text(response: ResponseContextManager) -> str:
    return f"HTTP {response.status_code}: {json_of(response).get('error', response.text[:200])}"


class DepthIDUser(HttpUser):
    wait_time = between(0.1, 0.5)  # the scenario's replaces it
    picks: Iterator[tuple[str, str]] = iter(())  # the scenario's replaces it

    def on_start(self) -> None:
        key = self.environment.parsed_options.api_key
        if key:
            self.client.headers[API_KEY_HEADER] = key

    @task
    def generate(self) -> None:
        model, flow = next(self.picks)
        if flow == "v1":
            self.v1(model)
        else:
            self.v2(model)

    def v1(self, model: str) -> None:
        with self.client.post(
            f"/v1/{model}", json=BODIES[model], name=f"v1 {model}", catch_response=True
        ) as response:
            content_type = response.headers.get("content-type", "")
            if response.status_code != 200:
                response.failure(failure_text(response))
            elif not content_type.startswith("image/"):
                response.failure(f"answered {content_type!r}, not an image")

    def v2(self, model: str) -> None:
        started = time.perf_counter()
        with self.client.post(
            f"/v2/{model}", json=BODIES[model], name=f"v2 submit {model}", catch_response=True
        ) as response:
            submitted = json_of(response)
            if response.status_code != 200 or not submitted.get("status_url"):
                response.failure(failure_text(response))
                return  # counted as the submit's failure; no job to follow
        error = self.wait_for(submitted["status_url"], started)
        if error is None:
            error = self.fetch_result(submitted["response_url"])
        self.environment.events.request.fire(
            request_type=JOB_REQUEST_TYPE,
            name=f"v2 job {model}",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=RuntimeError(error) if error else None,
            context={},
        )

    def wait_for(self, status_url: str, started: float) -> str | None:
        """Poll the status as segmind's AsyncJob.wait does (at once, then every
        DEFAULT_POLL_INTERVAL_S, up to DEFAULT_POLL_TIMEOUT_S): None once COMPLETED, else why
        not. A FAILED job's status answers 422 by contract: a correct answer, a failed job."""
        while True:
            with self.client.get(status_url, name="v2 status", catch_response=True) as response:
                body = json_of(response)
                state = body.get("status")
                if response.status_code not in {200, 422} or state not in STATES:
                    response.failure(failure_text(response))
                    return f"status: {failure_text(response)}"
                response.success()
            if state == "COMPLETED":
                return None
            if state == "FAILED":
                return f"job FAILED: {body.get('error')}"
            if time.perf_counter() - started > DEFAULT_POLL_TIMEOUT_S:
                return f"not done in {DEFAULT_POLL_TIMEOUT_S:g}s"
            time.sleep(DEFAULT_POLL_INTERVAL_S)  # gevent's sleep under Locust

    def fetch_result(self, response_url: str) -> str | None:
        """The final body, then its first image: None when both are right, else why not."""
        with self.client.get(response_url, name="v2 result", catch_response=True) as response:
            output = json_of(response).get("output")
            if response.status_code != 200 or not output:
                response.failure(failure_text(response))
                return f"result: {failure_text(response)}"
        if not str(output[0]).startswith("http"):
            return None  # base64 output: the image came in the body
        with self.client.get(output[0], name="v2 output", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(failure_text(response))
                return f"output: {failure_text(response)}"
        return None
