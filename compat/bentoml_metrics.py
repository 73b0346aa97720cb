"""Patch: BentoML's request metrics (`bentoml_service_request_*`) labelled by route template.

BentoML labels its request series with the raw request path, so every v2 request id, and every
path a scanner makes up, would add series: /metrics would grow with traffic. `install` swaps
BentoML's metrics middleware for `TemplatedTrafficMetrics`, a subclass that hands BentoML each
request's route template as its path and restores the real path for everything behind it. The
templates are ours (gateway/http/route_templates.py).

What it relies on (bentoml==1.4.39): BentoML's app factory (`_bentoml_impl.server.app`,
`ServiceAppFactory.middlewares`) imports `RunnerTrafficMetricsMiddleware` from
`bentoml._internal.server.http.instruments` when it builds a service's ASGI app, constructs it
as `(app, namespace=..., skip_paths=...)` and the middleware reads `scope["path"]` as its
`endpoint` label. `install` must run before BentoML builds the Gateway's app (service.py calls it
at import).

Supported ways checked: BentoML's `metrics` configuration has `enabled`, `namespace` and the
duration buckets, no label option; a middleware added with `add_asgi_middleware` (or the FastAPI
app's own) runs inside BentoML's metrics middleware, after it has read the path. Turning
BentoML's metrics off and writing the same series ourselves would copy its metric definitions
instead of reusing them.
"""

from __future__ import annotations

from collections.abc import Callable

from bentoml._internal.server.http import instruments
from starlette.types import ASGIApp, Receive, Scope, Send

CHECKED_WITH = ("bentoml", "1.4.39")
_REAL_PATH = "depthid.real_path"  # where the real path waits in the scope


class TemplatedTrafficMetrics(instruments.RunnerTrafficMetricsMiddleware):
    """BentoML's metrics middleware, seeing each request's route template as its path."""

    template: Callable[[str], str]  # set by install

    def __init__(self, app: ASGIApp, **options: object) -> None:
        super().__init__(self._with_real_path, **options)
        self._downstream = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "path": self.template(scope["path"]), _REAL_PATH: scope["path"]}
        await super().__call__(scope, receive, send)

    async def _with_real_path(self, scope: Scope, receive: Receive, send: Send) -> None:
        if _REAL_PATH in scope:
            scope = {**scope, "path": scope[_REAL_PATH]}
            del scope[_REAL_PATH]
        await self._downstream(scope, receive, send)


def install(template: Callable[[str], str]) -> None:
    """Make BentoML build its services' metrics middleware from TemplatedTrafficMetrics, with
    `template(path)` as each request's `endpoint` label."""
    TemplatedTrafficMetrics.template = staticmethod(template)
    instruments.RunnerTrafficMetricsMiddleware = TemplatedTrafficMetrics  # type: ignore[misc]
