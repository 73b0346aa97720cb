"""`make bench`: what the Gateway costs, what adaptive batching gains, how long v2 jobs wait.
Tiny profile, this machine's CPU. Every figure is min / median / max over --rounds rounds.

(a) Gateway overhead per model: median end-to-end v1 latency minus median direct pipeline time
    (the same job, the runner's pipeline called in this process in turn with the requests).
    Target: <= 10 ms. Two processes' pipelines differ by a few % from run to run (tens of ms
    here), so the same difference is also taken against the pipeline time the runner itself
    reports for each request (x-inference-time): what the Gateway and the hop add, steadily.
(b) Batching on real traffic (benchmarks/traffic.py): per model, identical requests and a
    realistic mix (four aspect ratios, prompts of 2-90 words, img2img or not, faces), closed
    loops of 1, 4, 8 and 16 clients and an open loop at 70% of capacity; throughput, p50 and
    p95 with the runners' batching on against every max batch size 1, side by side.
(c) v2 queue time (submit -> a worker starts the job): median at idle (one job at a time) and
    under load (--load jobs submitted at once).
(d) Back to idle speed after a burst (sd1.5): lone v1 latency at idle, the latency of requests
    during --burst-s seconds of --burst-clients concurrent clients, then lone requests one after
    another for --after-s seconds from the burst's end. Target: back within 2x of idle at once.

    make bench                      (or: python -m benchmarks.bench --rounds 3 [--part a|b|c|d])
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from benchmarks import traffic
from benchmarks.latency import MODELS, direct_call
from settings import Settings
from tests.support.served import serve


def spread(values: list[float], unit: str = "ms", scale: float = 1000.0) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return (
        f"min {low * scale:8.2f} {unit}  median {mid * scale:8.2f} {unit}  "
        f"max {high * scale:8.2f} {unit}"
    )


def post(client: httpx.Client, model: str, body: dict) -> httpx.Response:
    response = client.post(f"/v1/{model}", json=body)
    response.raise_for_status()
    return response


# --- (a) Gateway overhead ---------------------------------------------------------------------


@dataclass
class Round:
    """One round of (a): seconds per request."""

    direct: list[float] = field(default_factory=list)  # the pipeline, in this process
    end_to_end: list[float] = field(default_factory=list)  # the same job over v1
    served_pipeline: list[float] = field(default_factory=list)  # the runner's x-inference-time


def overhead_round(
    base_url: str, model: str, run_direct: Callable[[], object], runs: int, warmup: int
) -> Round:
    """The pipeline in this process and the same request over v1, timed in turn, so that a
    change in the machine's speed during a round weighs on both alike."""
    body = MODELS[model][2]()
    timed = Round()
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for i in range(warmup + runs):
            start = time.perf_counter()
            run_direct()
            middle = time.perf_counter()
            response = post(client, model, body)
            end = time.perf_counter()
            if i >= warmup:
                timed.direct.append(middle - start)
                timed.end_to_end.append(end - middle)
                timed.served_pipeline.append(float(response.headers["x-inference-time"]))
    return timed


def gateway_overhead(base_url: str, rounds: int, runs: int, label: str) -> None:
    print(f"(a) Gateway overhead, {label}, {runs} requests a round: median v1 end to end minus")
    print("    [in process] the median pipeline time in this process (interleaved), and")
    print("    [in runner]  the median pipeline time the runner reports (x-inference-time)")
    for model in MODELS:
        run_direct = direct_call(model)
        in_process, in_runner = [], []
        for _ in range(rounds):
            timed = overhead_round(base_url, model, run_direct, runs, warmup=2)
            end_to_end = statistics.median(timed.end_to_end)
            in_process.append(end_to_end - statistics.median(timed.direct))
            in_runner.append(end_to_end - statistics.median(timed.served_pipeline))
        print(f"  {model:<24} in process {spread(in_process)}   (target <= 10 ms)")
        print(f"  {'':<24} in runner  {spread(in_runner)}")


# --- (c) v2 queue time ------------------------------------------------------------------------


def run_v2_jobs(client: httpx.Client, model: str, count: int) -> list[float]:
    """Submit `count` jobs at once, poll until all are done; their queue times."""
    body = MODELS[model][2]()
    ids = []
    for seed in range(count):
        response = client.post(f"/v2/{model}", json={**body, "seed": seed})
        response.raise_for_status()
        ids.append(response.json()["request_id"])
    queue_times: dict[str, float] = {}
    while len(queue_times) < count:
        for request_id in ids:
            if request_id in queue_times:
                continue
            response = client.get(f"/v2/requests/{request_id}")
            if response.status_code == 200:
                queue_times[request_id] = response.json()["metrics"]["queue_time"]
            elif response.status_code != 202:
                raise RuntimeError(f"v2 job {request_id}: {response.status_code} {response.text}")
        time.sleep(0.02)
    return list(queue_times.values())


def v2_queue_time(rounds: int, load: int) -> None:
    model = "sd1.5-controlnet-depth"
    print(f"(c) v2 queue time ({model}): median of a round; idle = one job at a time")
    with serve() as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        run_v2_jobs(client, model, 2)  # warm up
        idle = [
            statistics.median([run_v2_jobs(client, model, 1)[0] for _ in range(5)])
            for _ in range(rounds)
        ]
        loaded = [statistics.median(run_v2_jobs(client, model, load)) for _ in range(rounds)]
    print(f"  at idle          {spread(idle)}")
    print(f"  {load} at once    {spread(loaded)}")


# --- (d) back to idle speed after a burst ----------------------------------------------------


@dataclass
class Timed:
    """One v1 request: end to end, and the pipeline time the runner reports for it (so that
    what waited besides the pipeline shows apart from a busy machine's slower compute)."""

    seconds: float
    pipeline: float

    @property
    def waited(self) -> float:
        return self.seconds - self.pipeline


@dataclass
class BurstRecovery:
    """v1 requests: lone at idle, during a burst, lone after it (with the seconds from the
    burst's end at which each one started)."""

    idle: list[Timed]
    burst: list[Timed]
    after: list[tuple[float, Timed]]


def timed_post(client: httpx.Client, model: str, body: dict) -> Timed:
    start = time.perf_counter()
    response = post(client, model, body)
    seconds = time.perf_counter() - start
    return Timed(seconds, float(response.headers["x-inference-time"]))


def burst_recovery(
    base_url: str, clients: int, burst_s: float, after_s: float, idle_runs: int = 6
) -> BurstRecovery:
    """Lone requests at idle, a burst of `clients` concurrent clients for `burst_s` seconds,
    then lone requests one after another for `after_s` seconds from the burst's end."""
    model = "sd1.5-controlnet-depth"
    body = MODELS[model][2]()
    with httpx.Client(base_url=base_url, timeout=300) as client:
        for seed in range(3):  # first calls pay for lazy initialisation
            post(client, model, {**body, "seed": seed})
        idle = [timed_post(client, model, body) for _ in range(idle_runs)]

        burst_end = time.monotonic() + burst_s

        def keep_sending(index: int) -> list[Timed]:
            seconds = []
            while time.monotonic() < burst_end:
                seconds.append(timed_post(client, model, {**body, "seed": index}))
            return seconds

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            burst = [s for per_client in pool.map(keep_sending, range(clients)) for s in per_client]
        ended = time.monotonic()  # every burst request answered
        after = []
        while time.monotonic() - ended < after_s:
            started = time.monotonic() - ended
            after.append((started, timed_post(client, model, body)))
    return BurstRecovery(idle, burst, after)


def burst_part(clients: int, burst_s: float, after_s: float) -> None:
    print(f"(d) Lone sd1.5 v1 requests around a burst of {clients} clients for {burst_s:g} s")
    with serve() as base_url:
        figures = burst_recovery(base_url, clients, burst_s, after_s)
    idle = statistics.median(t.seconds for t in figures.idle)
    print("  end to end, and what waited besides the runner's pipeline")
    for label, timed in (("lone at idle", figures.idle), ("during the burst", figures.burst)):
        print(f"  {label:<18}  {spread([t.seconds for t in timed])}   ({len(timed)} requests)")
        print(f"  {'':<18}  {spread([t.waited for t in timed])}   waited")
    for started, timed in figures.after:
        print(
            f"  lone, {started:5.1f} s after  {timed.seconds * 1000:8.2f} ms"
            f"   ({timed.seconds / idle:4.1f}x idle; target <= 2x)"
            f"   waited {timed.waited * 1000:8.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=15, help="(a): requests per round")
    parser.add_argument("--load", type=int, default=32, help="(c): jobs at once under load")
    parser.add_argument("--burst-clients", type=int, default=32, help="(d): clients in the burst")
    parser.add_argument("--burst-s", type=float, default=20.0, help="(d): burst length")
    parser.add_argument("--after-s", type=float, default=10.0, help="(d): lone requests after it")
    parser.add_argument("--part", action="append", choices=["a", "b", "c", "d"], help="repeatable")
    args = parser.parse_args()
    parts = args.part or ["a", "b", "c", "d"]

    from models.build import build_tiny

    build_tiny(Settings(profile="tiny", device="cpu"), log=lambda _line: None)
    print(f"tiny profile, CPU; {args.rounds} rounds per figure")
    if "a" in parts:
        # With batching on or off, one request at a time should cost the same: a lone request on
        # an idle runner starts at once.
        with serve(env=traffic.BATCHING_OFF) as base_url:
            gateway_overhead(base_url, args.rounds, args.runs, "max batch size 1")
        with serve() as base_url:
            gateway_overhead(base_url, args.rounds, args.runs, "adaptive batching on")
    if "b" in parts:
        print("(b) Batching on real traffic: on = default max batch sizes, off = all 1")
        traffic.run(list(MODELS), ["identical", "mix"], [1, 4, 8, 16], args.rounds)
    if "c" in parts:
        v2_queue_time(args.rounds, args.load)
    if "d" in parts:
        burst_part(args.burst_clients, args.burst_s, args.after_s)


if __name__ == "__main__":
    main()
