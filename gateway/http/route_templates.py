"""The route template of a request path: the `endpoint` label of BentoML's own request metrics
(`bentoml_service_request_*`).

BentoML labels them with the raw request path, so every v2 request id would add series (its
status, result and output paths) and every scanner's made-up path too: /metrics would grow with
traffic. Here the path is turned into its route's template (`/v2/requests/{request_id}`) from
fixed sets only, so the series are bounded by models, routes and status codes. BentoML is made to
use it by a patch of its metrics middleware (compat/bentoml_metrics.py, installed by service.py).
"""

from __future__ import annotations

from gateway.schemas.registry import MODEL_SPECS

# Paths served as they are: BentoML's system routes, our docs, and the runners. APIs (a
# runner started by `bentoml serve service:Gateway` imports this module too).
FIXED_PATHS = frozenset(
    {
        "/", "/docs", "/openapi.json", "/livez", "/healthz", "/readyz", "/metrics",
        "/schema.json", "/generate", "/cancel",
    }
)  # fmt: skip
OTHER = "/{other}"  # every path no route serves: one series, however many such paths


def route_template(path: str) -> str:
    """The template of the route serving `path`, or OTHER; a served model's name is kept."""
    if path in FIXED_PATHS:
        return path
    parts = path.strip("/").split("/")
    if parts[0] in ("v1", "v2") and len(parts) == 2:
        return f"/{parts[0]}/{parts[1]}" if parts[1] in MODEL_SPECS else f"/{parts[0]}/{{model}}"
    if parts[:2] == ["v2", "requests"]:
        if len(parts) == 3:
            return "/v2/requests/{request_id}"
        if len(parts) == 4 and parts[3] == "status":
            return "/v2/requests/{request_id}/status"
        if len(parts) == 5 and parts[3] == "output":
            return "/v2/requests/{request_id}/output/{index}"
    if parts[:2] == ["docs", "assets"]:
        return "/docs/assets/{file}"
    return OTHER


def templates() -> list[str]:
    """Every value route_template can return (the ServiceMonitor keeps exactly these)."""
    generation = [f"/{route}/{model}" for route in ("v1", "v2") for model in MODEL_SPECS]
    return sorted(
        FIXED_PATHS
        | set(generation)
        | {"/v1/{model}", "/v2/{model}", "/docs/assets/{file}", OTHER}
        | {
            "/v2/requests/{request_id}",
            "/v2/requests/{request_id}/status",
            "/v2/requests/{request_id}/output/{index}",
        }
    )
