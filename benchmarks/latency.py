"""Warm latency of one request per model: through HTTP (v1), and directly through the runner's
pipeline, on the tiny profile on this machine's CPU, at each model's default parameters.
Prints min/median/max over N runs, and what HTTP adds over the runner's own compute.

    make bench-latency            (or: python -m benchmarks.latency --runs 20 [--model NAME])
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import statistics
import time
from collections.abc import Callable

import httpx

from gateway.schemas.registry import MODEL_SPECS
from settings import PROJECT_ROOT, Settings
from tests.support.helpers import b64, scene_image
from tests.support.served import serve

PAYLOADS = PROJECT_ROOT / "loadtests" / "payloads"
SIDE = 64  # a 64x64 input gives a 64x64 output on the tiny profile


def _payload(name: str) -> dict:
    return json.loads((PAYLOADS / name).read_text())


# model -> (module and class of its pipeline holder, the request body it is timed with)
MODELS: dict[str, tuple[str, str, Callable[[], dict]]] = {
    "sd1.5-controlnet-depth": (
        "runners.sd15_pipeline",
        "SD15DepthPipelines",
        lambda: {"image": b64(scene_image(SIDE, SIDE)), "prompt": "a house", "seed": 1},
    ),
    "flux-depth-pro": (
        "runners.flux_pipeline",
        "FluxDepthPipeline",
        lambda: {"control_image": b64(scene_image(SIDE, SIDE)), "prompt": "a house"},
    ),
    "instantid": ("runners.instantid_pipeline", "InstantIDPipelines", lambda: _payload(
        "instantid.json"
    )),
    "insta-depth": ("runners.instantid_pipeline", "InstantIDPipelines", lambda: _payload(
        "insta-depth.json"
    )),
}  # fmt: skip


def summary(name: str, seconds: list[float]) -> float:
    median = statistics.median(seconds)
    print(
        f"  {name:<28} min {min(seconds) * 1000:8.1f} ms   median {median * 1000:8.1f} ms"
        f"   max {max(seconds) * 1000:8.1f} ms   (n={len(seconds)})"
    )
    return median


def direct_call(model: str) -> Callable[[], object]:
    """One run of the runner's pipeline in this process, fed the job the Gateway would build."""
    module, cls, make_body = MODELS[model]
    settings = Settings(profile="tiny", device="cpu")
    spec = MODEL_SPECS[model]
    body = spec.request.model_validate(make_body())
    job = asyncio.run(spec.to_job(body, "bench", settings))
    pipelines = getattr(importlib.import_module(module), cls).from_store(settings)
    return lambda: pipelines.run(job)


def time_pipeline(model: str, runs: int, warmup: int) -> list[float]:
    """The runner's pipeline in this process: the seconds of each of `runs` runs."""
    run = direct_call(model)
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        run()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def time_http(base_url: str, model: str, runs: int, warmup: int) -> tuple[list[float], list[float]]:
    """Wall time of each request, and that minus the runner's own compute (x-inference-time):
    the second is what the Gateway, the hop and the (de)serialising cost."""
    body = MODELS[model][2]()
    walls, overheads = [], []
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for i in range(warmup + runs):
            start = time.perf_counter()
            response = client.post(f"/v1/{model}", json=body)
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            if i >= warmup:
                walls.append(elapsed)
                overheads.append(elapsed - float(response.headers["x-inference-time"]))
    return walls, overheads


def bench(base_url: str, models: list[str], runs: int, warmup: int) -> None:
    for model in models:
        print(f"{model} (tiny profile, CPU, default parameters)")
        direct = summary("pipeline (in process)", time_pipeline(model, runs, warmup))
        walls, overheads = time_http(base_url, model, runs, warmup)
        over_http = summary("HTTP (v1, end to end)", walls)
        summary("HTTP minus runner compute", overheads)
        print(
            f"  {'HTTP minus in-process':<28} {(over_http - direct) * 1000:8.1f} ms at the median"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--model", action="append", choices=sorted(MODELS), help="repeatable")
    parser.add_argument("--url", help="a running server; default: start one on a free port")
    args = parser.parse_args()
    models = args.model or list(MODELS)

    from models.build import build_tiny

    build_tiny(Settings(profile="tiny", device="cpu"), log=lambda _line: None)
    if args.url:
        bench(args.url, models, args.runs, args.warmup)
    else:
        with serve() as base_url:
            bench(base_url, models, args.runs, args.warmup)


if __name__ == "__main__":
    main()
