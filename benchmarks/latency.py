"""Warm latency of one sd1.5-controlnet-depth request: through HTTP, and directly through the
pipeline, on the tiny profile on this machine's CPU. Prints min/median/max over N runs.

    make bench-latency            (or: python -m benchmarks.latency --runs 20)
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import httpx
from PIL import Image

from runners.jobs import SD15DepthJob
from settings import Settings
from tests.helpers import b64, scene_image
from tests.served import serve

ROUTE = "/v1/sd1.5-controlnet-depth"
SIDE = 64  # a 64x64 input gives a 64x64 output on the tiny profile
STEPS = 20


def summary(name: str, seconds: list[float]) -> float:
    median = statistics.median(seconds)
    print(
        f"{name:<28} min {min(seconds) * 1000:8.1f} ms   median {median * 1000:8.1f} ms"
        f"   max {max(seconds) * 1000:8.1f} ms   (n={len(seconds)})"
    )
    return median


def time_pipeline(runs: int, warmup: int) -> list[float]:
    from models.build import build_tiny
    from runners.sd15_pipeline import SD15DepthPipelines

    settings = Settings(profile="tiny", device="cpu")
    build_tiny(settings, log=lambda *_: None)
    pipelines = SD15DepthPipelines(settings)
    image = Image.open(io.BytesIO(scene_image(SIDE, SIDE)))
    job = SD15DepthJob(
        request_id="bench", prompt="a house", image=image, samples=1, scheduler="UniPC",
        num_inference_steps=STEPS, guidance_scale=7.5, strength=1.0, seed=1,
        width=SIDE, height=SIDE,
    )  # fmt: skip
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        pipelines.run(job)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def time_http(base_url: str, runs: int, warmup: int) -> tuple[list[float], list[float]]:
    """Wall time of each request, and that minus the runner's own compute (x-inference-time):
    the second is what the Gateway, the hop and the (de)serialising cost."""
    body = {"image": b64(scene_image(SIDE, SIDE)), "prompt": "a house", "seed": 1}
    walls, overheads = [], []
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for i in range(warmup + runs):
            start = time.perf_counter()
            response = client.post(ROUTE, json=body)
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            if i >= warmup:
                walls.append(elapsed)
                overheads.append(elapsed - float(response.headers["x-inference-time"]))
    return walls, overheads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--url", help="a running server; default: start one on a free port")
    args = parser.parse_args()

    print(f"sd1.5-controlnet-depth, tiny profile, CPU, {SIDE}x{SIDE}, {STEPS} steps")
    direct = summary("pipeline (in process)", time_pipeline(args.runs, args.warmup))
    if args.url:
        walls, overheads = time_http(args.url, args.runs, args.warmup)
    else:
        with serve() as base_url:
            walls, overheads = time_http(base_url, args.runs, args.warmup)
    over_http = summary("HTTP (v1, end to end)", walls)
    summary("HTTP minus runner compute", overheads)
    print(f"{'HTTP minus in-process':<28} {(over_http - direct) * 1000:8.1f} ms at the median")


if __name__ == "__main__":
    main()
