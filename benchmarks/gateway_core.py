"""What the Gateway's own code costs, with no runner behind it: the app of gateway.app.create_app
with every model's runner stubbed by an instant answer (the same 512 px JPEG each time), served
by uvicorn on 127.0.0.1 in a child process, driven by an httpx client in this one. No BentoML
service around the app, no runner process, no model: the Gateway alone, before and after a
refactor of it (issue 25).

Why uvicorn rather than httpx's ASGITransport: the request takes the real path, its bytes
through httptools, its body in uvicorn's chunks through the middleware's receive loop, the
disconnect checks of a v1 generation on a real connection. Why a child process: the server's
event loop is then alone with the Gateway, so (b) measures the Gateway's stalls and not this
client's, and the client works on the other core instead of taking turns with the server.
The client's own time (about a millisecond a request) is in every figure, the same before and
after.

(a) v1 overhead, per model with a small realistic body (sd1.5, flux: a 512 px photo as JPEG;
    instantid, insta-depth: the load test's face pictures, loadtests/payloads/): --requests
    sequential requests after --warmup, median and p95 per request; then --requests more from
    --concurrency clients at once, requests per second (the median of 5 slices of them). And
    v2 submit alone (the answer that queues the job; the job then runs in the background on the
    same event loop), sequential.
(b) The event loop's longest stall while large bodies arrive: a probe task on the server's loop
    sleeps 1 ms over and over and records how late each wake-up is. Four insta-depth v1 bodies
    of --body-mb MB each (face_image and pose_image: noise PNGs) are sent at once; from the first
    byte sent to the last answer: the longest lateness (the longest stall), the p99 lateness, and
    that total time. --rounds rounds and their median; the same probe over one second with no
    request gives the floor of the machine (a busy one wakes the loop late by itself).

    python -m benchmarks.gateway_core [--requests 200] [--rounds 3] [--body-mb 20] [--part a|b]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import io
import json
import math
import multiprocessing
import os
import random
import socket
import statistics
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import httpx
import uvicorn
from PIL import Image
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.app import create_app
from gateway.runner_client import RunnerClient
from loadtests.photo_payloads import astronaut
from protocol.jobs import GenerationResult
from settings import PROJECT_ROOT, Settings

PAYLOADS = PROJECT_ROOT / "loadtests" / "payloads"
MODELS = ("sd1.5-controlnet-depth", "flux-depth-pro", "instantid", "insta-depth")
# The Gateway's settings here: the tiny profile (the inputs are shrunk for its 64 px outputs, as
# in the served tests); everything else as the environment or the defaults say.
BASE_SETTINGS: dict[str, Any] = {"profile": "tiny"}
JSON_HEADERS = {"content-type": "application/json"}
PROBE_PATH = "/__gateway_core/loop-lag"  # answered by LoopLagProbe, never by the Gateway
PROBE_PERIOD_S = 0.001
RATE_SLICES = 5  # (a): req/s is the median of this many slices of the requests
BIG_BODIES = 4  # (b): insta-depth bodies sent at once
IDLE_WINDOW_S = 1.0  # (b): the probe with no request, for the machine's floor
START_TIMEOUT_S = 120.0  # the child imports the Gateway (BentoML, FastAPI): seconds when busy
REQUEST_TIMEOUT_S = 300.0


# --- the server (child process) ---------------------------------------------------------------


@functools.cache
def answer_jpeg() -> bytes:
    """What every stubbed generation answers: a 512 px photo as JPEG (about 50 KB)."""
    buffer = io.BytesIO()
    astronaut().save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def instant_runner(jobs: list[Any]) -> list[GenerationResult]:
    """A runner that answers every job at once, with an image encoded beforehand: no runner
    work, and no image encoding, is in the figures."""
    return [
        GenerationResult(
            request_id=job.request_id, images=[answer_jpeg()], seed=job.seed, inference_time=0.0
        )
        for job in jobs
    ]


def stubbed_gateway(settings: Settings) -> ASGIApp:
    """The Gateway's app, each model served by instant_runner. The one place that knows how
    the app is built: if create_app's signature changes, this changes."""
    runners = {
        model: RunnerClient(model, instant_runner, settings.generation_timeout_s)
        for model in MODELS
    }
    return create_app(settings, runners=runners)


class LoopLagProbe:
    """ASGI wrapper: while the app's lifespan runs, a task on the server's loop sleeps
    PROBE_PERIOD_S over and over; while a window is open it records how late each wake-up came
    (how long the loop was busy with something else). POST PROBE_PATH opens a window, GET
    PROBE_PATH closes it and answers the lateness of every wake-up in it, in ms."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.lags: list[float] | None = None  # seconds; None: no window open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            probe = asyncio.create_task(self._probe())
            try:
                await self.app(scope, receive, send)
            finally:
                probe.cancel()
            return
        if scope["type"] == "http" and scope["path"] == PROBE_PATH:
            await self._window(scope["method"], send)
            return
        await self.app(scope, receive, send)

    async def _probe(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(PROBE_PERIOD_S)
            if self.lags is not None:
                # libuv's timers round to whole ms on a cached clock: a wake-up can come a
                # little early, which is no stall.
                self.lags.append(max(0.0, time.perf_counter() - started - PROBE_PERIOD_S))

    async def _window(self, method: str, send: Send) -> None:
        if method == "POST":
            self.lags, answer = [], {}
        else:
            lags, self.lags = self.lags or [], None
            answer = {"lags_ms": [lag * 1000 for lag in lags]}
        body = json.dumps(answer).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def serve(overrides: dict[str, Any], port_out: Connection) -> None:
    """The child process: the stubbed Gateway, under the probe, served by uvicorn (uvloop and
    httptools, as under BentoML) on a free port of 127.0.0.1, which it sends to the parent."""
    settings = Settings(**overrides)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections wait in the backlog until the lifespan has started
    port_out.send(sock.getsockname()[1])
    port_out.close()
    app = LoopLagProbe(stubbed_gateway(settings))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


@contextlib.contextmanager
def stubbed_server(overrides: dict[str, Any]) -> Iterator[str]:
    """The stubbed Gateway served in a child process; yields its base URL once it answers."""
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=serve, args=(overrides, sender), daemon=True)
    process.start()
    sender.close()
    try:
        if not receiver.poll(START_TIMEOUT_S):
            raise RuntimeError(f"the Gateway's process did not start in {START_TIMEOUT_S:g} s")
        base_url = f"http://127.0.0.1:{receiver.recv()}"
        # The socket listens already: this waits in its backlog until the app has started.
        httpx.get(base_url + PROBE_PATH, timeout=START_TIMEOUT_S).raise_for_status()
        yield base_url
    finally:
        process.terminate()  # SIGTERM: uvicorn stops, the app's lifespan ends
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join()


# --- figures ----------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value that `fraction` of the values are at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def check(response: httpx.Response, expected: int = 200) -> None:
    if response.status_code != expected:
        raise RuntimeError(
            f"{response.request.url.path}: {response.status_code} {response.text[:300]}"
        )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def small_bodies() -> dict[str, bytes]:
    """Each model's realistic small request body, serialised once (the client's JSON encoding
    is not timed)."""
    photo = io.BytesIO()
    astronaut().save(photo, format="JPEG", quality=90)
    scene = b64(photo.getvalue())
    bodies = {
        "sd1.5-controlnet-depth": {"image": scene, "prompt": "a cozy reading room, warm light"},
        "flux-depth-pro": {"control_image": scene, "prompt": "a cozy reading room, warm light"},
        "instantid": json.loads((PAYLOADS / "instantid.json").read_text()),
        "insta-depth": json.loads((PAYLOADS / "insta-depth.json").read_text()),
    }
    return {model: json.dumps(body).encode() for model, body in bodies.items()}


# --- (a) v1 and v2 submit overhead ------------------------------------------------------------


async def sequential(client: httpx.AsyncClient, path: str, body: bytes, count: int) -> list[float]:
    """Seconds of each of `count` requests sent one after another."""
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        response = await client.post(path, content=body, headers=JSON_HEADERS)
        seconds.append(time.perf_counter() - started)
        check(response)
    return seconds


async def concurrent(
    client: httpx.AsyncClient, path: str, body: bytes, count: int, concurrency: int
) -> float:
    """Seconds for `count` requests from `concurrency` clients, each sending its next as soon
    as its last is answered."""
    left = count

    async def one_client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            check(await client.post(path, content=body, headers=JSON_HEADERS))

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return time.perf_counter() - started


async def requests_per_second(
    client: httpx.AsyncClient, path: str, body: bytes, count: int, concurrency: int
) -> float:
    """About `count` requests at `concurrency`, in RATE_SLICES slices timed apart: the median
    slice's rate, so that a burst of other work on the machine during one slice does not make
    the figure."""
    per_slice = max(concurrency, count // RATE_SLICES)
    rates = [
        per_slice / await concurrent(client, path, body, per_slice, concurrency)
        for _ in range(RATE_SLICES)
    ]
    return statistics.median(rates)


async def overhead(base_url: str, requests: int, warmup: int, concurrency: int) -> None:
    bodies = small_bodies()
    sizes = ", ".join(f"{model} {len(body) / 1000:.0f} KB" for model, body in bodies.items())
    print(
        f"(a) v1 overhead per request: {requests} sequential after {warmup} warm-up, then "
        f"{requests} from {concurrency} clients at once (bodies: {sizes})"
    )
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as client:
        rate_heading = f"req/s at {concurrency}"
        print(f"  {'model':<24} {'median ms':>10} {'p95 ms':>8} {rate_heading:>12}")
        for model in MODELS:
            path = f"/v1/{model}"
            await sequential(client, path, bodies[model], warmup)
            seconds = await sequential(client, path, bodies[model], requests)
            rate = await requests_per_second(client, path, bodies[model], requests, concurrency)
            print(
                f"  {model:<24} {statistics.median(seconds) * 1000:10.2f} "
                f"{percentile(seconds, 0.95) * 1000:8.2f} {rate:12.1f}"
            )
        print(f"  v2 submit only, {requests} sequential after {warmup} warm-up")
        print(f"  {'model':<24} {'median ms':>10} {'p95 ms':>8}")
        for model in MODELS:
            path = f"/v2/{model}"
            await sequential(client, path, bodies[model], warmup)
            seconds = await sequential(client, path, bodies[model], requests)
            print(
                f"  {model:<24} {statistics.median(seconds) * 1000:10.2f} "
                f"{percentile(seconds, 0.95) * 1000:8.2f}"
            )


# --- (b) event loop stalls while large bodies arrive ----------------------------------------


def noise_png(pixels: int, seed: int) -> bytes:
    """A square PNG of random pixels (it does not compress: its size follows the pixel count)."""
    side = math.isqrt(pixels)
    noise = random.Random(seed).randbytes(side * side * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), noise).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def big_insta_depth_body(body_mb: float) -> tuple[bytes, int, int]:
    """An insta-depth body of about `body_mb` MB: the load test's, with face_image and
    pose_image each a noise PNG of about 3/8 of it (base64 makes 4 characters of 3 bytes).
    Also the larger PNG's size in bytes, and each PNG's pixels."""
    pixels = math.isqrt(int(body_mb * 1e6 * 3 / 8 / 3)) ** 2
    face, pose = noise_png(pixels, seed=1), noise_png(pixels, seed=2)
    body = json.loads((PAYLOADS / "insta-depth.json").read_text())
    body.update(face_image=b64(face), pose_image=b64(pose))
    return json.dumps(body).encode(), max(len(face), len(pose)), pixels


def limits_for(body: bytes, image_bytes: int, pixels: int) -> dict[str, Any]:
    """Settings overrides that let these bodies through, printing each limit it raises."""
    settings = Settings(**BASE_SETTINGS)
    needed = {
        "max_body_bytes": len(body),
        "max_image_bytes": image_bytes,
        "max_image_pixels": pixels,
    }
    overrides = {}
    for name, size in needed.items():
        limit = getattr(settings, name)
        if size > limit:
            overrides[name] = size * 2
            print(f"  {name} raised for this benchmark: {limit} -> {overrides[name]}")
        else:
            print(f"  {name} {limit} holds them (DEPTHID_{name.upper()} unchanged)")
    return overrides


async def probe_window(client: httpx.AsyncClient) -> None:
    check(await client.post(PROBE_PATH))


async def probe_lags(client: httpx.AsyncClient) -> list[float]:
    response = await client.get(PROBE_PATH)
    check(response)
    return response.json()["lags_ms"]


async def stall_round(base_url: str, body: bytes) -> tuple[float, float, float]:
    """The BIG_BODIES bodies sent at once on connections of their own: the longest lag (ms),
    the p99 lag (ms) and the seconds from the first byte sent to the last answer."""
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as probe,
        httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client,
    ):
        await probe_window(probe)
        started = time.perf_counter()
        responses = await asyncio.gather(
            *(
                client.post("/v1/insta-depth", content=body, headers=JSON_HEADERS)
                for _ in range(BIG_BODIES)
            )
        )
        total = time.perf_counter() - started
        lags = await probe_lags(probe)
    for response in responses:
        check(response)
    return max(lags), percentile(lags, 0.99), total


async def idle_floor(base_url: str) -> tuple[float, float]:
    """The longest and p99 lag (ms) of the probe over IDLE_WINDOW_S with no request."""
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as probe:
        await probe_window(probe)
        await asyncio.sleep(IDLE_WINDOW_S)
        lags = await probe_lags(probe)
    return max(lags), percentile(lags, 0.99)


async def stalls(base_url: str, body: bytes, rounds: int) -> None:
    await stall_round(base_url, body)  # warm-up: the first large decode and parse of the process
    print(f"  {'round':<8} {'longest stall ms':>16} {'p99 lag ms':>11} {'total s':>8}")
    figures = []
    for index in range(rounds):
        figures.append(await stall_round(base_url, body))
        longest, p99, total = figures[-1]
        print(f"  {index + 1:<8} {longest:16.2f} {p99:11.2f} {total:8.3f}")
        await asyncio.sleep(0.5)  # a pause: one round's tail (closing connections) not in the next
    longest, p99, total = (statistics.median(column) for column in zip(*figures, strict=True))
    print(f"  {'median':<8} {longest:16.2f} {p99:11.2f} {total:8.3f}")
    longest, p99 = await idle_floor(base_url)
    print(f"  {'idle 1 s':<8} {longest:16.2f} {p99:11.2f}   (no request: the machine's floor)")


# --- main -------------------------------------------------------------------------------------


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gateway_core",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=200, help="(a): timed requests per figure")
    parser.add_argument("--warmup", type=int, default=10, help="(a): untimed requests first")
    parser.add_argument("--concurrency", type=int, default=8, help="(a): clients for req/s")
    parser.add_argument("--rounds", type=int, default=3, help="(b): rounds, median printed")
    parser.add_argument("--body-mb", type=float, default=20.0, help="(b): MB per body")
    parser.add_argument("--part", action="append", choices=["a", "b"], help="repeatable")
    args = parser.parse_args(argv)
    parts = args.part or ["a", "b"]

    print(
        "Gateway in process: create_app with every runner stubbed (an instant 512 px JPEG), "
        "uvicorn on 127.0.0.1 in a child process, an httpx client in this one"
    )
    print(f"profile {BASE_SETTINGS['profile']}, {os.cpu_count()} CPUs, load average {load()}")
    if "a" in parts:
        with stubbed_server(BASE_SETTINGS) as base_url:
            asyncio.run(overhead(base_url, args.requests, args.warmup, args.concurrency))
    if "b" in parts:
        body, image_bytes, pixels = big_insta_depth_body(args.body_mb)
        print(
            f"(b) The server's event loop while {BIG_BODIES} insta-depth v1 bodies of "
            f"{len(body) / 1e6:.1f} MB arrive at once (face and pose: noise PNGs of "
            f"{image_bytes / 1e6:.1f} MB); lateness of a 1 ms sleep, {args.rounds} rounds "
            "after one warm-up"
        )
        overrides = limits_for(body, image_bytes, pixels)
        with stubbed_server({**BASE_SETTINGS, **overrides}) as base_url:
            asyncio.run(stalls(base_url, body, args.rounds))
    print(f"load average at the end {load()}")


if __name__ == "__main__":
    main()
