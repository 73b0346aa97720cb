"""Tracing (tracing.py): off by default; with an OTLP endpoint set, BentoML's spans reach it,
and one request makes one trace from the Gateway's route through the runner's generate. The
collector is a tiny OTLP/HTTP receiver of the test's own (protobuf bodies on /v1/traces)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from settings import PROJECT_ROOT
from tests.support.helpers import b64, free_port, scene_image, wait_until
from tests.support.served import serve

MODEL = "sd1.5-controlnet-depth"


class OTLPReceiver:
    """Collects the spans POSTed to http://127.0.0.1:<port>/v1/traces: (service, name, trace)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
                for resource_spans in request.resource_spans:
                    attributes = {
                        a.key: a.value.string_value for a in resource_spans.resource.attributes
                    }
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            receiver.spans.append(
                                (attributes.get("service.name", ""), span.name, span.trace_id.hex())
                            )
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"

    def __enter__(self) -> OTLPReceiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as collector:
        yield collector


# BentoML's tracer, as a served process builds it: a service with tracing_options, its app built.
A_SPAN = """
import sys
import bentoml
from bentoml._internal.configuration.containers import BentoMLContainer
from settings import Settings
from tracing import tracing_options

@bentoml.service(**tracing_options(Settings(tracing_otlp_endpoint=sys.argv[1] or None)))
class Traced:
    @bentoml.api
    def hello(self) -> str:
        return "hi"

Traced.to_asgi()
provider = BentoMLContainer.tracer_provider.get()
with provider.get_tracer("test").start_as_current_span("a-span"):
    pass
provider.force_flush()
print(BentoMLContainer.config.tracing.exporter_type.get())
"""


def run_a_span(endpoint: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", A_SPAN, endpoint],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()


def test_off_by_default(receiver: OTLPReceiver) -> None:
    assert run_a_span("") == "None"
    assert receiver.spans == []


def test_an_endpoint_switches_it_on_and_spans_reach_the_collector(receiver: OTLPReceiver) -> None:
    assert run_a_span(receiver.url) == "otlp"
    assert [name for _, name, _ in receiver.spans] == ["a-span"]


@pytest.mark.served
def test_served_one_trace_runs_from_the_gateway_through_the_runner(
    receiver: OTLPReceiver, tiny_settings: object
) -> None:
    env = {"DEPTHID_TRACING_OTLP_ENDPOINT": receiver.url}
    with serve(env=env) as base_url:
        body = {"image": b64(scene_image(96, 64)), "prompt": "a house"}
        response = httpx.post(f"{base_url}/v1/{MODEL}", json=body, timeout=120)
        assert response.status_code == 200

        def one_trace_through_both() -> bool:
            services_by_trace: dict[str, set[str]] = {}
            for service, _, trace in receiver.spans:
                services_by_trace.setdefault(trace, set()).add(service)
            return any({"gateway", "sd15_depth"} <= s for s in services_by_trace.values())

        # BentoML exports in batches, every 5 s.
        assert wait_until(one_trace_through_both, 30), sorted(set(receiver.spans))
