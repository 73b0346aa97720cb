"""compat/bentoml_metrics.py against the installed BentoML: the app BentoML builds for a service
uses our metrics middleware, which labels its request series by route template. In process, on a
throwaway service: no server."""

from __future__ import annotations

import inspect

import bentoml
import pytest
from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal.server.http import instruments
from fastapi import FastAPI, Request
from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from compat import bentoml_metrics
from gateway.http.route_templates import route_template

PATCH = "compat/bentoml_metrics.py"
probe_app = FastAPI()


@probe_app.get("/v2/requests/{request_id}/status")
def status(request_id: str, request: Request) -> dict:
    return {"path": request.url.path}


@bentoml.service(name="compat_metrics_probe")
@bentoml.asgi_app(probe_app, path="/")
class Probe:
    @bentoml.api
    def ping(self) -> str:
        return "pong"


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The patch, as service.py installs it, undone after the test."""
    monkeypatch.setattr(
        instruments, "RunnerTrafficMetricsMiddleware", instruments.RunnerTrafficMetricsMiddleware
    )
    bentoml_metrics.install(route_template)


def test_the_middleware_we_subclass_is_built_as_we_build_it() -> None:
    parameters = list(inspect.signature(instruments.RunnerTrafficMetricsMiddleware).parameters)
    assert parameters == ["app", "namespace", "skip_paths"], (
        f"{PATCH}: BentoML's RunnerTrafficMetricsMiddleware now takes {parameters}"
    )
    factory_source = inspect.getsource(ServiceAppFactory)
    assert "from bentoml._internal.server.http.instruments import" in factory_source, (
        f"{PATCH}: BentoML's app factory no longer imports its metrics middleware from "
        "`instruments` when it builds an app; the patch would not be used"
    )


def test_the_app_bentoml_builds_uses_the_patched_middleware(installed: None) -> None:
    middleware = [entry.cls for entry in Probe.to_asgi().user_middleware]
    assert bentoml_metrics.TemplatedTrafficMetrics in middleware, (
        f"{PATCH}: the app BentoML builds has no TemplatedTrafficMetrics: {middleware}"
    )


def test_requests_are_counted_by_template_and_the_app_sees_the_real_path(installed: None) -> None:
    labels = {"endpoint": "/v2/requests/{request_id}/status", "http_response_code": "200"}

    def counted() -> float:
        return sum(
            sample.value
            for family in REGISTRY.collect()
            for sample in family.samples
            if sample.name == "bentoml_service_request_total"
            and labels.items() <= sample.labels.items()
        )

    before = counted()
    with TestClient(Probe.to_asgi()) as client:
        answer = client.get("/v2/requests/0a1b2c/status")
    assert answer.json() == {"path": "/v2/requests/0a1b2c/status"}, (
        f"{PATCH}: the app behind BentoML's metrics middleware did not see the real path"
    )
    assert counted() == before + 1, (
        f"{PATCH}: BentoML's request counter was not moved under the route template {labels}"
    )
