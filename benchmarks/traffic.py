"""Batching on real traffic: `make bench` part (b). Tiny profile, this machine's CPU.

Two instances are served side by side, one with the runners' batching on (the default max batch
sizes) and one with every max batch size 1, and each figure is measured on both in turn, so
that a change in the machine's speed weighs on both alike. Per model and traffic:

- traffic `identical`: the same request, seeds differing (what a synthetic load test sends);
- traffic `mix`: what real clients send: input pictures of four aspect ratios (1:1, 4:3, 3:4,
  16:9; the output follows the input's, so four output sizes), prompts of 2 to 90 words,
  sd1.5 with and without img2img (strength 0.6 or 1), faces and poses of those aspect ratios;
- load: closed loops of 1, 4, 8 and 16 clients (each sends its next request when its last is
  answered), and an open loop of Poisson arrivals at 70% of the capacity measured without
  batching at 8 clients (both instances can keep up, so latency compares fairly).

Prints, per row: requests per second, p50 and p95 latency on and off, on/off ratios, and the
samples per pipeline call batching made; each the median of --rounds measurements, taken on,
off, off, on, ... so that the machine's drift weighs on both.

    python -m benchmarks.traffic [--model NAME ...] [--traffic identical|mix] [--clients 1,4,8,16]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import random
import statistics
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from benchmarks.latency import MODELS
from gateway.schemas.registry import MODEL_SPECS
from tests.support.face_images import b64_image, face_picture
from tests.support.helpers import b64, metric_value, scene_image
from tests.support.served import serve

BATCHING_OFF = {
    "DEPTHID_SD15_MAX_BATCH_SIZE": "1",
    "DEPTHID_INSTANTID_MAX_BATCH_SIZE": "1",
    "DEPTHID_FLUX_MAX_BATCH_SIZE": "1",
}
# Input pictures of the four aspect ratios (width, height).
ASPECTS = {"1:1": (256, 256), "4:3": (256, 192), "3:4": (192, 256), "16:9": (256, 144)}
# Prompt words: a prompt is 2 to 90 of them, drawn at random.
PROMPT_WORDS = (
    "cosy wooden cabin snowy mountains dawn warm light small windows portrait smiling woman red "
    "scarf soft focus film grain city street night neon reflections wet asphalt old lighthouse "
    "rocky coast stormy sea detailed watercolor painting garden flowers butterflies golden hour"
)
WORDS = PROMPT_WORDS.split()
OPEN_LOOP_LOAD = 0.7  # of the capacity without batching
REQUESTS_PER_CLIENT = 4  # closed loop: each client's requests in one measurement
MIN_REQUESTS = 16


def random_prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 90)))


def face_of(aspect: str) -> str:
    """A picture of the aspect ratio with one face the tiny detector finds."""
    width, height = ASPECTS[aspect]
    radius = min(width, height) // 4
    return b64_image(face_picture(width, height, [(width // 2, height // 2, radius)], body=True))


# Pictures are made once per aspect ratio: the Gateway decodes each request's anyway.
_SCENES = {aspect: b64(scene_image(*size)) for aspect, size in ASPECTS.items()}
_FACES = {aspect: face_of(aspect) for aspect in ASPECTS}


def mixed_body(model: str, rng: random.Random) -> dict:
    """One request as a real client might send it."""
    aspect = rng.choice(list(ASPECTS))
    prompt = random_prompt(rng)
    if model == "sd1.5-controlnet-depth":
        return {"image": _SCENES[aspect], "prompt": prompt, "strength": rng.choice([1.0, 0.6])}
    if model == "instantid":
        return {**MODELS[model][2](), "face_image": _FACES[aspect], "prompt": prompt}
    if model == "insta-depth":
        pose = rng.choice(list(ASPECTS))
        return {
            **MODELS[model][2](),
            "face_image": _FACES[aspect],
            "pose_image": _FACES[pose],
            "prompt": prompt,
        }
    return {"control_image": _SCENES[aspect], "prompt": prompt}


def body_maker(model: str, traffic: str, seed: int) -> Callable[[int], dict]:
    """Request bodies for request number n: identical (but the seed), or a random mix."""
    if traffic == "identical":
        body = MODELS[model][2]()
        return lambda n: {**body, "seed": n}
    rng = random.Random(seed)
    lock = threading.Lock()

    def make(n: int) -> dict:
        with lock:
            return {**mixed_body(model, rng), "seed": n}

    return make


@dataclass
class Figures:
    throughput: float  # requests per second
    p50: float  # seconds
    p95: float
    batch: float = 1.0  # mean samples per pipeline call


def figures_of(latencies: list[float], elapsed: float) -> Figures:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return Figures(len(ordered) / elapsed, statistics.median(ordered), p95)


def timed(client: httpx.Client, model: str, body: dict) -> float:
    start = time.perf_counter()
    response = client.post(f"/v1/{model}", json=body)
    response.raise_for_status()
    return time.perf_counter() - start


def closed_loop(
    client: httpx.Client, model: str, make_body: Callable[[int], dict], clients: int
) -> Figures:
    """`clients` clients, each sending its next request when its last is answered."""
    total = max(MIN_REQUESTS, REQUESTS_PER_CLIENT * clients)
    counter = iter(range(total))
    lock = threading.Lock()

    def client_loop(_: int) -> list[float]:
        latencies = []
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return latencies
            latencies.append(timed(client, model, make_body(n)))

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = [s for per in pool.map(client_loop, range(clients)) for s in per]
    return figures_of(latencies, time.perf_counter() - start)


def open_loop(
    client: httpx.Client, model: str, make_body: Callable[[int], dict], rate: float, seed: int
) -> Figures:
    """Requests arriving as a Poisson process of `rate` per second, whatever is answered."""
    total = max(2 * MIN_REQUESTS, round(rate * 30))  # about 30 s of arrivals
    rng = random.Random(seed)
    gaps = [rng.expovariate(rate) for _ in range(total)]
    bodies = [make_body(n) for n in range(total)]
    futures = []
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        arrival = start
        for body, gap in zip(bodies, gaps, strict=True):
            arrival += gap
            time.sleep(max(0.0, arrival - time.perf_counter()))
            futures.append(pool.submit(timed, client, model, body))
        latencies = [future.result() for future in futures]
    return figures_of(latencies, time.perf_counter() - start)


# One load (closed or open loop) on one instance: (client, model, bodies) -> its figures.
Load = Callable[[httpx.Client, str, Callable[[int], dict]], "Figures"]


def calls_so_far(client: httpx.Client, model: str) -> tuple[float, float]:
    """(samples, calls) the model's runner has run so far, from its metrics."""
    runner = {"runner": MODEL_SPECS[model].runner.name}
    base = str(client.base_url)
    return (
        metric_value(base, "depthid_runner_batch_size_sum", **runner),
        metric_value(base, "depthid_runner_batch_size_count", **runner),
    )


@dataclass
class Row:
    model: str
    traffic: str
    load: str
    on: Figures
    off: Figures

    def markdown(self) -> str:
        on, off = self.on, self.off
        return (
            f"| {self.model} | {self.traffic} | {self.load} | {on.throughput:.2f} | "
            f"{off.throughput:.2f} | **{on.throughput / off.throughput:.2f}x** | "
            f"{on.p50:.2f} / {off.p50:.2f} | {on.p95:.2f} / {off.p95:.2f} | "
            f"{on.p95 / off.p95:.2f} | {on.batch:.1f} |"
        )


HEADER = (
    "| model | traffic | load | on req/s | off req/s | throughput on/off | p50 s on / off "
    "| p95 s on / off | p95 on/off | samples per call (on) |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def measured_on(client: httpx.Client, model: str, traffic: str, seed: int, load: Load) -> Figures:
    """One load on the batching instance, with the samples per call it made the runner run."""
    samples, calls = calls_so_far(client, model)
    figures = load(client, model, body_maker(model, traffic, seed))
    samples_after, calls_after = calls_so_far(client, model)
    figures.batch = (samples_after - samples) / max(1.0, calls_after - calls)
    return figures


def compare(
    on: httpx.Client,
    off: httpx.Client,
    model: str,
    traffic: str,
    seed: int,
    load: Load,
    rounds: int,
) -> tuple[Figures, Figures]:
    """One load on both instances in turn, each sent the same bodies in the same order, `rounds`
    times in the order on, off, off, on, ... (a drift in the machine's speed weighs on both
    alike); the median of each figure."""
    runs_on, runs_off = [], []
    for round_ in range(rounds):
        order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
        for which in order:
            if which == "on":
                runs_on.append(measured_on(on, model, traffic, seed, load))
            else:
                runs_off.append(load(off, model, body_maker(model, traffic, seed)))
    return median_figures(runs_on), median_figures(runs_off)


def median_figures(runs: list[Figures]) -> Figures:
    return Figures(
        statistics.median(run.throughput for run in runs),
        statistics.median(run.p50 for run in runs),
        statistics.median(run.p95 for run in runs),
        statistics.median(run.batch for run in runs),
    )


def measure(
    on: httpx.Client,
    off: httpx.Client,
    models: list[str],
    traffics: list[str],
    clients: list[int],
    rounds: int,
) -> list[Row]:
    rows = []
    print(HEADER, flush=True)
    for model in models:
        for traffic in traffics:
            seed = zlib.crc32(f"{model} {traffic}".encode())
            capacity_off = 0.0  # without batching, at 8 clients (or the most measured)
            for count in clients:
                load = functools.partial(closed_loop, clients=count)
                figures_on, figures_off = compare(on, off, model, traffic, seed, load, rounds)
                if count <= 8:
                    capacity_off = figures_off.throughput
                rows.append(Row(model, traffic, f"closed {count}", figures_on, figures_off))
                print(rows[-1].markdown(), flush=True)
            rate = OPEN_LOOP_LOAD * capacity_off
            load = functools.partial(open_loop, rate=rate, seed=seed)
            figures_on, figures_off = compare(on, off, model, traffic, seed, load, rounds)
            rows.append(Row(model, traffic, f"open {rate:.2f}/s", figures_on, figures_off))
            print(rows[-1].markdown(), flush=True)
    return rows


def warm_up(client: httpx.Client, models: list[str]) -> None:
    """A few requests of each model and shape: first calls pay for lazy initialisation."""
    for model in models:
        make = body_maker(model, "mix", 0)
        bodies = [make(n) for n in range(8)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda body, m=model: timed(client, m, body), bodies))


def run(models: list[str], traffics: list[str], clients: list[int], rounds: int = 1) -> list[Row]:
    with contextlib.ExitStack() as stack:
        on_url = stack.enter_context(serve())
        off_url = stack.enter_context(serve(env=BATCHING_OFF))
        limits = httpx.Limits(max_connections=100)
        on = stack.enter_context(httpx.Client(base_url=on_url, timeout=600, limits=limits))
        off = stack.enter_context(httpx.Client(base_url=off_url, timeout=600, limits=limits))
        warm_up(on, models)
        warm_up(off, models)
        return measure(on, off, models, traffics, clients, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", action="append", choices=list(MODELS), help="repeatable")
    parser.add_argument("--traffic", action="append", choices=["identical", "mix"])
    parser.add_argument("--clients", default="1,4,8,16", help="closed-loop client counts")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per figure (median)")
    args = parser.parse_args()
    from models.build import build_tiny
    from settings import Settings

    build_tiny(Settings(profile="tiny", device="cpu"), log=lambda _line: None)
    run(
        args.model or list(MODELS),
        args.traffic or ["identical", "mix"],
        [int(count) for count in args.clients.split(",")],
        args.rounds,
    )


if __name__ == "__main__":
    main()
