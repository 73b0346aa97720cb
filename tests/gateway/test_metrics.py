"""The Prometheus metrics (gateway/metrics.py): in process, the calls move the right series;
served, they appear on the Gateway's /metrics (BentoML's multiprocess registry) with their
labels after real traffic."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.app import make_job_store
from gateway.http import route_templates
from gateway.http.middleware import metric_labels
from gateway.jobs.store import JobRecord
from gateway.schemas.registry import MODEL_SPECS
from settings import PROJECT_ROOT, Settings
from tests.support.gateway_client import make_client
from tests.support.helpers import RecordingRunner, b64, scene_image, wait_until

MODEL = "sd1.5-controlnet-depth"
V1 = f"/v1/{MODEL}"


def value(name: str, **labels: str) -> float:
    """The current value of one series of the in-process registry (0 when it has none yet)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def body(**fields: object) -> dict:
    return {"image": b64(scene_image(96, 64)), "prompt": "a house", **fields}


class BatchedRunner(RecordingRunner):
    """Answers as if each job had shared its pipeline call with others (batch_size), and
    records the in-flight gauge while it runs."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.in_flight_seen: list[float] = []

    async def __call__(self, jobs: list) -> list:
        self.in_flight_seen.append(value("depthid_in_flight", model=MODEL))
        results = await super().__call__(jobs)
        return [result.model_copy(update={"batch_size": self.batch_size}) for result in results]


# --- in process -----------------------------------------------------------------------------


def test_a_v1_generation_moves_request_generation_batch_and_in_flight_series() -> None:
    runner = BatchedRunner(batch_size=3)
    client = make_client(runner)
    requests_ok = value("depthid_requests_total", model=MODEL, route="v1", code="200")
    durations = value("depthid_request_duration_seconds_count", model=MODEL, route="v1")
    generations = value("depthid_generation_seconds_count", model=MODEL)
    batch_sum = value("depthid_batch_size_sum", model=MODEL)

    assert client.post(V1, json=body(samples=2)).status_code == 200

    assert value("depthid_requests_total", model=MODEL, route="v1", code="200") == requests_ok + 1
    assert value("depthid_request_duration_seconds_count", model=MODEL, route="v1") == (
        durations + 1
    )
    assert value("depthid_generation_seconds_count", model=MODEL) == generations + 1
    assert value("depthid_batch_size_sum", model=MODEL) == batch_sum + 3  # one request, batch 3
    assert runner.in_flight_seen == [1.0]  # one generation running while the runner ran
    assert value("depthid_in_flight", model=MODEL) == 0.0


def test_errors_count_by_their_code_and_in_flight_comes_back_down() -> None:
    async def unreachable(jobs: list) -> list:
        raise ConnectionError("refused")

    client = make_client(unreachable)
    bad = value("depthid_requests_total", model=MODEL, route="v1", code="400")
    down = value("depthid_requests_total", model=MODEL, route="v1", code="502")
    assert client.post(V1, json={"prompt": 1}).status_code == 400
    assert client.post(V1, json=body()).status_code == 502
    assert value("depthid_requests_total", model=MODEL, route="v1", code="400") == bad + 1
    assert value("depthid_requests_total", model=MODEL, route="v1", code="502") == down + 1
    assert value("depthid_in_flight", model=MODEL) == 0.0


def test_unknown_names_never_become_label_values() -> None:
    client = make_client(RecordingRunner())
    unknown = value("depthid_requests_total", model="", route="v1", code="404")
    other = value("depthid_requests_total", model="", route="other", code="404")
    assert client.post("/v1/made-up-model", json=body()).status_code == 404
    assert client.get("/some/scanner/path").status_code == 404
    assert value("depthid_requests_total", model="", route="v1", code="404") == unknown + 1
    assert value("depthid_requests_total", model="", route="other", code="404") == other + 1
    assert value("depthid_requests_total", model="made-up-model", route="v1", code="404") == 0


@pytest.mark.parametrize(
    ("path", "labels"),
    [
        (V1, (MODEL, "v1")),
        ("/v2/instantid", ("instantid", "v2")),
        ("/v2/requests/abc/status", ("", "v2")),
        ("/v1/unknown", ("", "v1")),
        ("/openapi.json", ("", "other")),
        ("/", ("", "other")),
    ],
)
def test_metric_labels(path: str, labels: tuple[str, str]) -> None:
    assert metric_labels(path) == labels


class GatedRunner(RecordingRunner):
    """Holds every job until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    async def __call__(self, jobs: list) -> list:
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        return await super().__call__(jobs)


def test_v2_reports_queue_depth_and_queue_wait() -> None:
    runner = GatedRunner()
    waits = value("depthid_queue_wait_seconds_count", model=MODEL)
    with make_client(runner, job_workers=1) as client:
        for _ in range(3):
            assert client.post(f"/v2/{MODEL}", json=body()).status_code == 200
        # One job in the runner, two waiting: the depth gauge follows the store.
        depth = lambda: value("depthid_queue_depth", model=MODEL)  # noqa: E731
        assert wait_until(lambda: depth() == 2.0, 10)
        assert value("depthid_queue_depth", model="flux-depth-pro") == 0.0  # its own queue
        runner.gate.set()
        assert wait_until(lambda: depth() == 0.0, 10)
        assert wait_until(lambda: len(runner.jobs) == 3, 10)
    assert value("depthid_queue_wait_seconds_count", model=MODEL) == waits + 3
    # The last job waited for the two before it.
    assert value("depthid_queue_wait_seconds_sum", model=MODEL) > 0


FRESH_PROCESS_EXPOSITION = """
from prometheus_client import generate_latest
from gateway import metrics
from gateway.http import route_templates
from gateway.schemas.registry import MODEL_SPECS
metrics.expose_known_series(list(MODEL_SPECS))
print(generate_latest().decode())
"""


def test_known_series_are_there_at_zero_from_the_start() -> None:
    """In a fresh process, before any event: every model's and reason's series, at 0."""
    text = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_EXPOSITION],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def at_zero(name: str, **labels: str) -> bool:
        return samples.get((name, tuple(sorted(labels.items())))) == 0.0

    for model in MODEL_SPECS:
        assert at_zero("depthid_credits_refused_total", model=model)
        assert at_zero("depthid_queue_depth", model=model)
        assert at_zero("depthid_in_flight", model=model)
        assert at_zero("depthid_generation_seconds_count", model=model)
        assert at_zero("depthid_batch_size_count", model=model)
        assert at_zero("depthid_queue_wait_seconds_count", model=model)
        for route in ("v1", "v2"):
            assert at_zero("depthid_requests_total", model=model, route=route, code="500")
            assert at_zero("depthid_request_duration_seconds_count", model=model, route=route)
    for reason in ("rate", "concurrency", "queue"):
        assert at_zero("depthid_rate_limited_total", reason=reason)


def test_app_start_exposes_the_known_series() -> None:
    with make_client(RecordingRunner()):
        assert (
            REGISTRY.get_sample_value("depthid_rate_limited_total", {"reason": "concurrency"})
            is not None
        )
        assert (
            REGISTRY.get_sample_value("depthid_credits_refused_total", {"model": "instantid"})
            is not None
        )


def test_credits_and_rate_limit_counters() -> None:
    refused = value("depthid_credits_refused_total", model=MODEL)
    limited = value("depthid_rate_limited_total", reason="queue")
    metrics.count_credits_refused(MODEL)
    metrics.count_rate_limited("queue")
    assert value("depthid_credits_refused_total", model=MODEL) == refused + 1
    assert value("depthid_rate_limited_total", reason="queue") == limited + 1


def test_exposed_names_cover_every_series() -> None:
    names = metrics.exposed_names()
    assert "depthid_requests_total" in names and "depthid_requests" not in names
    assert {"depthid_queue_wait_seconds_bucket", "depthid_in_flight"} <= names
    assert {name for name in names if not name.startswith("depthid_")} == set()


# --- served ---------------------------------------------------------------------------------


def scrape(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the served /metrics: (name, sorted labels) -> value."""
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.served
def test_served_metrics_show_the_traffic_with_its_labels(served_url: str) -> None:
    before = scrape(served_url)
    with httpx.Client(base_url=served_url, timeout=120) as http:
        assert http.post(V1, json=body(seed=5)).status_code == 200
        assert http.post(V1, json={"prompt": 1}).status_code == 400
        submitted = http.post(f"/v2/{MODEL}", json=body(seed=6)).json()
        status_url = submitted["status_url"]
        assert wait_until(lambda: http.get(status_url).json()["status"] == "COMPLETED", 120)
    time.sleep(1.5)  # the queue depth gauge is read every second
    after = scrape(served_url)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("depthid_requests_total", model=MODEL, route="v1", code="200") == 1
    assert delta("depthid_requests_total", model=MODEL, route="v1", code="400") == 1
    assert delta("depthid_requests_total", model=MODEL, route="v2", code="200") == 1
    assert delta("depthid_request_duration_seconds_count", model=MODEL, route="v1") == 2
    assert delta("depthid_generation_seconds_count", model=MODEL) >= 2  # v1 and the v2 job
    assert delta("depthid_batch_size_count", model=MODEL) >= 2
    assert delta("depthid_queue_wait_seconds_count", model=MODEL) >= 1
    assert all(("depthid_queue_depth", (("model", m),)) in after for m in MODEL_SPECS)
    assert sample(after, "depthid_in_flight", model=MODEL) >= 0
    # BentoML's own series are still there, next to ours.
    assert any(name.startswith("bentoml_") for name, _ in after)


def v2_round_trip(http: httpx.Client, jobs: int) -> None:
    """`jobs` v2 jobs, each polled, its result and its image fetched: every route of a job."""
    ids = [http.post(f"/v2/{MODEL}", json=body(seed=i)).json()["request_id"] for i in range(jobs)]
    for request_id in ids:

        def completed(request_id: str = request_id) -> bool:
            return http.get(f"/v2/requests/{request_id}/status").json()["status"] == "COMPLETED"

        assert wait_until(completed, 120)
        assert http.get(f"/v2/requests/{request_id}").status_code == 200
        assert http.get(f"/v2/requests/{request_id}/output/0").status_code == 200
    http.get(f"/no/such/path/{uuid.uuid4().hex}")  # a scanner's path


def series_count(base_url: str) -> int:
    return len(scrape(base_url))


@pytest.mark.served
def test_served_metrics_are_bounded_by_routes_not_requests(served_url: str) -> None:
    with httpx.Client(base_url=served_url, timeout=120) as http:
        v2_round_trip(http, 5)
        time.sleep(1.5)  # the queue depth gauge is read every second
        after_5 = scrape(served_url)
        v2_round_trip(http, 45)
        time.sleep(1.5)
        after_50 = scrape(served_url)
    assert set(after_50) == set(after_5), set(after_50) ^ set(after_5)
    endpoints = {dict(labels).get("endpoint") for _, labels in after_50} - {None}
    assert "/v2/requests/{request_id}/status" in endpoints
    assert endpoints <= set(route_templates.templates()), endpoints


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v2/requests/0a1b/status", "/v2/requests/{request_id}/status"),
        ("/v2/requests/0a1b", "/v2/requests/{request_id}"),
        ("/v2/requests/0a1b/output/3", "/v2/requests/{request_id}/output/{index}"),
        ("/v1/instantid", "/v1/instantid"),
        ("/v2/made-up", "/v2/{model}"),
        ("/docs/assets/swagger-ui.css", "/docs/assets/{file}"),
        ("/metrics", "/metrics"),
        ("/wp-login.php", "/{other}"),
        ("/v2/requests/a/b/c/d", "/{other}"),
    ],
)
def test_route_template(path: str, template: str) -> None:
    assert route_templates.route_template(path) == template
    assert template in route_templates.templates()


# --- the Grafana dashboard ------------------------------------------------------------------

DASHBOARD = PROJECT_ROOT / "observability" / "grafana-dashboard.json"
# PromQL's keywords: grouping and vector matching, set operators.
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
PROMQL_WORDS = GROUPING | {"and", "or", "unless"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once label matchers, ranges,
    grouping clauses, strings, functions and keywords are taken out."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?", expr):
        word, is_call = match.group(0).rstrip("( \t"), match.group(1) is not None
        if not is_call and word not in PROMQL_WORDS and not word.startswith("$"):
            names.add(word)
    return names


def test_metric_names_are_read_out_of_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(depthid_batch_size_bucket{model=~"a"}'
        "[$__rate_interval]))) / max(depthid_queue_depth) and on (model) up"
    )
    assert metric_names(expr) == {"depthid_batch_size_bucket", "depthid_queue_depth", "up"}


# Besides ours: NVIDIA's DCGM exporter's GPU metrics (documented in the panels as needing the
# exporter).
OTHER_METRICS = {
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
}


def test_dashboard_reads_only_known_metrics_and_shows_each_of_ours() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exposed = metrics.exposed_names() | OTHER_METRICS
    read: set[str] = set()
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names and names <= exposed, (panel["title"], names - exposed)
            read |= names
    read |= metric_names(variables["model"]["definition"])
    assert read >= OTHER_METRICS  # a panel for GPU utilisation and memory
    # Every metric of gateway/metrics.py has a panel.
    assert {name.removesuffix("_bucket") for name in read} >= {
        name if spec.kind != "Counter" else f"{name}_total"
        for name, spec in metrics.METRICS.items()
    }


# --- queue depth per model, in each job store -------------------------------------------------


def test_each_store_counts_waiting_jobs_per_model(backend: dict) -> None:
    settings = Settings(**backend)

    def job(job_id: str, model: str) -> JobRecord:
        return JobRecord(
            id=job_id, model=model, payload="{}", as_base64=False, media_type="image/jpeg",
            base_url="http://x", submitted_at=time.time(),
        )  # fmt: skip

    async def scenario() -> None:
        store = make_job_store(settings)
        try:
            assert await store.queue_depth_by_model() == {}
            for index in range(3):
                await store.submit(job(f"f{index}", "flux-depth-pro"))
            await store.submit(job("s0", MODEL))
            assert await store.queue_depth_by_model() == {"flux-depth-pro": 3, MODEL: 1}
            taken = await store.take("w", timeout_s=1)
            assert taken.id == "f0"  # FIFO across models, as before
            assert await store.queue_depth_by_model() == {"flux-depth-pro": 2, MODEL: 1}
        finally:
            await store.close()

    asyncio.run(scenario())
