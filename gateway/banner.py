"""The Gateway's "ready" banner: once every runner has its models loaded, one log record says
where the API listens, where its docs are, what it runs and whether keys are on, and, in
`tiny`, that its images are noise by design and how to serve real weights."""

from __future__ import annotations

import asyncio
import logging
import time

import psutil

from gateway.runner_client import RunnerClient
from settings import Settings

logger = logging.getLogger(__name__)

READY_POLL_S = 1.0
PROGRESS_EVERY_S = 10.0  # while runners load: one line saying which, this often
DEVICES = {
    "cpu": "cpu",
    "cuda": "cuda",
    "auto": "auto (CUDA when present; each runner's start-up line names its own)",
}


def ready_banner(settings: Settings, keys: int | None, url: str | None = None) -> str:
    """The banner's text; `keys`: how many API keys are configured, None when keys are off;
    `url`: where this server answers (default: DEPTHID_PUBLIC_BASE_URL, else the socket this
    process listens on, else DEPTHID_HOST and DEPTHID_PORT)."""
    url = (url or served_url(settings)).rstrip("/")
    keys_line = "off (anyone may call)" if keys is None else f"on, {keys} keys"
    lines = [
        f"DepthID is ready: {url}",
        f"  docs:     {url}/docs (try each model there)",
        f"  profile:  {settings.profile}",
        f"  device:   {DEVICES[settings.device]}",
        f"  API keys: {keys_line}",
    ]
    if settings.profile == "tiny":
        lines += [
            "  tiny profile: random-weight models of the real architectures; every image is",
            "  noise, by design. Real weights: `make pull`, then serve with DEPTHID_PROFILE=full",
            "  on a GPU (docs/models.md).",
        ]
    return "\n".join(lines)


def served_url(settings: Settings) -> str:
    if settings.public_base_url:
        return settings.public_base_url
    # BentoML hands the Gateway process its one listening socket (`bentoml serve --port` may
    # differ from DEPTHID_PORT); outside BentoML (tests) there is none.
    listening = [
        connection.laddr
        for connection in psutil.Process().net_connections(kind="tcp")
        if connection.status == psutil.CONN_LISTEN
    ]
    if len(listening) == 1:
        host, port = listening[0].ip, listening[0].port
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # every interface: this one too
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    return f"http://{settings.host}:{settings.port}"


async def announce_when_ready(
    runners: dict[str, RunnerClient], settings: Settings, keys: int | None
) -> None:
    """Log the banner once every runner answers ready (the Gateway's lifespan runs this); while
    they load, one line every PROGRESS_EVERY_S naming those not ready yet, in place of the
    runner client's line per probe."""
    quiet = _NotReadyFilter()
    client_logger = logging.getLogger(RunnerClient.__module__)
    client_logger.addFilter(quiet)
    started = last_progress = time.monotonic()
    try:
        while True:
            known = set(runners.values())
            # A runner that may scale to zero has no replica to wait for: not part of "ready".
            clients = sorted(
                (client for client in known if not client.waits_for_ready),
                key=lambda client: client.name,
            )
            ready = await asyncio.gather(*(client.is_ready() for client in clients))
            if known and all(ready):
                logger.info(ready_banner(settings, keys))
                return
            if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                waiting = [client.name for client, ok in zip(clients, ready, strict=True) if not ok]
                logger.info(
                    "waiting for the runners to load their models: %s (%.0f s)",
                    ", ".join(waiting),
                    time.monotonic() - started,
                )
                last_progress = time.monotonic()
            await asyncio.sleep(READY_POLL_S)
    finally:
        client_logger.removeFilter(quiet)


class _NotReadyFilter(logging.Filter):
    """Drops the runner client's "runner X not ready" lines (one per probe) while the banner's
    own progress line reports the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("runner %s not ready")
