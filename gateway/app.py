"""The HTTP API as a FastAPI app: routes, the contract's error shape, docs.

service.py builds it with one RunnerClient per served model and mounts it on the BentoML Gateway
service. Every failure answers `{"error": ...}`: never a list, HTML or a trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import FrameType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from compat.bentoml_swagger import SWAGGER_ASSETS
from gateway import metrics, v1
from gateway.banner import announce_when_ready
from gateway.http.errors import ApiError, validation_to_api_error
from gateway.http.middleware import RequestContextMiddleware
from gateway.http.openapi import install as install_openapi
from gateway.http.openapi import profile_description
from gateway.idempotency import Idempotency, make_idempotency_store
from gateway.jobs import routes as v2
from gateway.jobs.redis_store import RedisJobStore
from gateway.jobs.store import JobStore, MemoryJobStore
from gateway.jobs.worker import JobWorker
from gateway.redis_client import UNAVAILABLE_ERRORS
from gateway.runner_client import RunnerClient
from gateway.schemas.registry import MODEL_SPECS
from gateway.serving import Serving
from gateway.tenancy.api_keys import describe_keys, load_key_ring
from gateway.tenancy.credits import Credits, make_ledger
from gateway.tenancy.rate_limits import RateLimits, make_limit_store
from gateway.webhooks import WebhookDeliverer
from settings import Settings

logger = logging.getLogger(__name__)

# Served by BentoML itself, in front of this app.
SYSTEM_ROUTES = {"/livez", "/healthz", "/readyz", "/metrics"}
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def make_job_store(settings: Settings) -> JobStore:
    if settings.job_store_url:
        return RedisJobStore(
            settings.job_store_url,
            max_queued=settings.job_queue_max,
            retention_s=settings.job_retention_s,
            visibility_timeout_s=settings.job_visibility_timeout_s,
            retry_s=settings.redis_retry_s,
        )
    return MemoryJobStore(max_queued=settings.job_queue_max, retention_s=settings.job_retention_s)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The v2 job store and worker live as long as the app serves."""
    settings: Settings = app.state.settings
    # Every counter and gauge at 0 from the start: rate() and the dashboard see 0, not nothing.
    metrics.expose_known_series(list(MODEL_SPECS))
    logger.info(describe_keys(app.state.api_keys, settings))
    app.state.job_store = make_job_store(settings)
    serving: Serving = app.state.serving
    worker = JobWorker(app.state.job_store, serving, settings)
    worker.start()
    # SIGTERM stops the taking of jobs at once and starts the grace, not only once the server
    # has drained its connections (which can take as long as a v1 generation).
    _on_stop_signal(worker.begin_stop)
    # Apart from the job workers: a slow or dead receiver never holds a generation.
    deliverer = WebhookDeliverer(app.state.job_store, settings, lambda: app.state.api_keys)
    deliverer.start()
    keys = None if app.state.api_keys is None else len(app.state.api_keys)
    banner = asyncio.create_task(announce_when_ready(serving.runners, settings, keys))
    try:
        yield
    finally:
        banner.cancel()
        await deliverer.stop()
        await worker.stop(settings.shutdown_grace_s)
        await app.state.job_store.close()
        await app.state.credits.close()
        await app.state.rate_limits.close()
        await app.state.idempotency.store.close()


def _on_stop_signal(callback: Callable[[], None]) -> None:
    """Call `callback` on the event loop when the process gets SIGTERM or SIGINT, then let the
    server's own handler (uvicorn's, installed before the app starts) do what it does."""
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach the main thread only (an app in a test client's thread)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue  # the default or ignored: no server of ours is running the app

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(callback)
            previous(signum, frame)

        signal.signal(sig, handler)


def create_app(settings: Settings, runners: dict[str, RunnerClient]) -> FastAPI:
    """The API of the models in `runners` (model name -> the client of its runner)."""
    app = FastAPI(
        lifespan=lifespan,
        title="DepthID",
        summary="Identity- and depth-conditioned image generation, hosted-API compatible.",
        version="0.1.0",
        description=profile_description(settings),
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    # Here, not in the lifespan, so a bad keys file stops the start; and v1 needs no lifespan.
    app.state.api_keys = load_key_ring(settings)  # None: keys off
    app.state.credits = Credits(make_ledger(settings))
    app.state.rate_limits = RateLimits(make_limit_store(settings), settings)
    app.state.idempotency = Idempotency(make_idempotency_store(settings), settings)
    serving = Serving(settings, runners, app.state.credits, app.state.rate_limits)
    app.state.serving = serving
    app.include_router(v1.make_router(serving))
    app.include_router(v2.make_submit_router(serving))
    app.include_router(v2.router)
    _add_error_handlers(app)
    _add_docs_and_fallback_routes(app)
    app.add_middleware(RequestContextMiddleware, settings=settings)
    install_openapi(app)  # the contract's error answers in /openapi.json (gateway/http/openapi.py)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = validation_to_api_error(exc.errors())
        return JSONResponse(error.body(), status_code=error.status)

    async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # Redis (jobs, credits, limits) stayed unreachable past its retries: the request may
        # be sent again as it is, so a retryable 503, never a 500.
        logger.warning("Redis unavailable: %s: %s", type(exc).__name__, exc)
        retry_after = request.app.state.settings.store_retry_after_s
        return JSONResponse(
            {"error": "the job store is unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": str(retry_after)},
        )

    for error in UNAVAILABLE_ERRORS:
        app.add_exception_handler(error, store_unavailable)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )


def _add_docs_and_fallback_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        return RedirectResponse("/docs")

    app.mount("/docs/assets", StaticFiles(directory=SWAGGER_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="DepthID API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
        )

    # Registered last: answers every request no other route took, with the contract's body.
    @app.api_route("/{path:path}", methods=ALL_METHODS, include_in_schema=False)
    async def fallback(request: Request, path: str) -> None:
        allowed = _methods_for_path(app, request)
        if allowed:
            raise ApiError(
                405,
                f"method {request.method} is not allowed on /{path}; use {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] in ("v1", "v2"):
            request.app.state.serving.served(parts[1])  # the 404 naming what is served
        raise ApiError(404, f"no route /{path}")


def _methods_for_path(app: FastAPI, request: Request) -> list[str]:
    """Methods of the routes whose path matches but whose method did not (so: a 405)."""
    if request.url.path in SYSTEM_ROUTES:
        return ["GET"]
    methods: set[str] = set()
    for route in _leaf_routes(app.router.routes):
        route_methods = getattr(route, "methods", None)
        if route_methods is None or set(ALL_METHODS) <= route_methods:
            continue
        match, _ = route.matches({**request.scope, "method": "__none__"})
        if match in (Match.FULL, Match.PARTIAL):
            methods |= route_methods
    return sorted(methods)


def _leaf_routes(routes: list[Any]) -> Iterator[Any]:
    """Routes with a path, looking inside routers that `include_router` nests."""
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            yield from _leaf_routes(nested.routes)
        else:
            yield route
