"""The Grafana dashboard against a real Prometheus (Debian's `prometheus`; `make test` installs
it when missing): after a smoke run on the served instance, Prometheus scrapes it every second,
with the ServiceMonitor's metricRelabelings as its metric_relabel_configs, and every query of
the dashboard returns a number (never empty, never NaN)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import yaml

from settings import PROJECT_ROOT
from tests.support.helpers import b64, free_port, scene_image, wait_until

pytestmark = [pytest.mark.served, pytest.mark.slow]  # Prometheus scraping the served instance

DASHBOARD = PROJECT_ROOT / "observability" / "grafana-dashboard.json"
SERVICE_MONITOR = PROJECT_ROOT / "k8s" / "components" / "monitoring" / "service-monitor.yaml"
MODEL = "sd1.5-controlnet-depth"
SCRAPE_INTERVAL = "1s"
# Grafana's variables, as the dashboard's defaults resolve them: every model, a rate window
# that holds several of the 1 s scrapes.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$model": ".*"}


def snake_case(rule: dict) -> dict:
    """A prometheus-operator relabeling (camelCase) as Prometheus' own config (snake_case)."""
    return {re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower(): value for key, value in rule.items()}


def prometheus_config(target: str) -> dict:
    monitor = yaml.safe_load(SERVICE_MONITOR.read_text())
    endpoint = monitor["spec"]["endpoints"][0]
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": "depthid",
                "metrics_path": endpoint["path"],
                "static_configs": [{"targets": [target]}],
                "metric_relabel_configs": [snake_case(r) for r in endpoint["metricRelabelings"]],
            }
        ],
    }


@pytest.fixture(scope="module")
def prometheus(served_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus scraping the served instance after a smoke run; its base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed (make test installs it)")
    smoke_run(served_url)
    folder: Path = tmp_path_factory.mktemp("prometheus")
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(urlparse(served_url).netloc)))
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _ready(base_url), 30), "prometheus did not start"
        # Scraped a few times, so rate() over the window has samples to work with.
        assert wait_until(lambda: _scrapes(base_url) >= 4, 60), "no scrape of the served instance"
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def smoke_run(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=120) as http:
        body = {"image": b64(scene_image(96, 64)), "prompt": "a house"}
        assert http.post(f"/v1/{MODEL}", json=body).status_code == 200
        assert http.post(f"/v1/{MODEL}", json={"prompt": 1}).status_code == 400
        status_url = http.post(f"/v2/{MODEL}", json=body).json()["status_url"]
        assert wait_until(lambda: http.get(status_url).json()["status"] == "COMPLETED", 120)


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _scrapes(base_url: str) -> int:
    result = query(base_url, 'count_over_time(up{job="depthid"}[1m])')
    return int(float(result[0]["value"][1])) if result else 0


def query(base_url: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{base_url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def resolve(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def test_every_dashboard_query_returns_a_number(prometheus: str) -> None:
    assert query(prometheus, 'up{job="depthid"}')[0]["value"][1] == "1"
    empty, not_numbers = [], []
    for name, expr in dashboard_queries():
        result = query(prometheus, resolve(expr))
        if not result:
            empty.append(name)
        elif any(not math.isfinite(float(series["value"][1])) for series in result):
            not_numbers.append(name)
    assert (empty, not_numbers) == ([], [])


def test_the_model_variable_lists_every_model(prometheus: str) -> None:
    answer = httpx.get(
        f"{prometheus}/api/v1/label/model/values",
        params={"match[]": "depthid_requests_total"},
        timeout=10,
    ).json()
    assert {MODEL, "instantid", "insta-depth", "flux-depth-pro"} <= set(answer["data"])


def test_the_relabelings_keep_bentoml_series_by_route_template(prometheus: str) -> None:
    endpoints = {
        series["metric"].get("endpoint")
        for series in query(prometheus, '{__name__=~"bentoml_.+", endpoint!=""}')
    }
    assert "/v2/requests/{request_id}/status" in endpoints
    assert not [e for e in endpoints if re.search(r"/v2/requests/[0-9a-f]{32}", e)]
    assert not query(prometheus, '{__tmp_depthid_route!=""}')  # the marker label is gone
