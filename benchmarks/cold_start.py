"""Time to ready of each runner at `full`, by phase, from a cold disk; the disk's own speed.

    python -m benchmarks.cold_start [--store DIR] [--runner NAME ...] [--no-write]
        [--device cpu|cuda] [--target-disk GB_PER_S]

1. Writes a `full` store laid out as a pull lays it (models/full_store.py, random weights) into
   DIR (default .models/cold-start): real-size files for what fits a small machine (SD1.5 with
   its ControlNet, the depth estimator, the safety classifier, the SDXL VAE: `REAL_SIZE`), the
   `ci` scale for the rest (SDXL, InstantID, Flux and its T5-XXL, which at real size do not fit
   the host memory of a CPU-only machine).
2. Measures the disk's cold sequential read speed: the page cache dropped, the largest weight
   file read once in 16 MB reads.
3. Starts each runner's `from_store` in a fresh process, the page cache dropped first, with and
   without the read-ahead (DEPTHID_WEIGHTS_READ_THREADS), and prints its phases
   (runners/startup.py), the read phase as a fraction of the disk's speed, and the host memory
   loading took: the peak of the process's resident set from the start of loading until the
   weights are in place (the warm-up is not loading), less its resident set before, against
   the bytes of the runner's weights as loaded (their dtype: fp32 on the CPU).
4. From sd15_depth's run with the read-ahead, derives every runner's time to ready at real size
   (`scaled_time_to_ready`: the other phases scaled by the runners' weight bytes, the read also
   by the disk's speed over --target-disk's) and the startup probe budget that allows for it
   (PROBE_MARGIN): what docs/deploy.md, "Sizing from the time to ready", sets the manifests by.

Dropping the page cache needs root (`/proc/sys/vm/drop_caches`); without it the reads are warm
and the lines say so. On the CPU (the default) the warm-up runs at DEPTHID_OUTPUT_LONG_SIDE=64;
with `--device cuda` the runners load onto the GPU and warm up at the contract's size. Timings
are this machine's: rerun on the target's nodes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from models.full_store import write_full_store
from models.manifest import CHECKPOINTS
from models.store import runner_models
from models.weights import weight_files
from settings import PROJECT_ROOT, RUNNERS, Settings

# A runner's startup probe allows this many times its derived time to ready: the runs it is
# derived from are the slowest measured, and a start may still be slower (docs/deploy.md,
# "Sizing from the time to ready").
PROBE_MARGIN = 1.5
# The CPU warms up at this output size: the contract's would take minutes on a few cores.
CPU_WARMUP_SIDE = "64"
REAL_SIZE = ("sd15-base", "sd15-controlnet-depth", "depth-estimator", "safety-checker", "sdxl-vae")
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
READ_BYTES = 16 * 1024 * 1024

# Run in a fresh process per runner: loads it, prints its phases and loading's host memory
# (runners/startup.py).
CHILD = """
import json, sys
from runners.startup import STARTED
from settings import get_settings
runner = sys.argv[1]
module, cls = {
    "sd15_depth": ("runners.sd15_pipeline", "SD15DepthPipelines"),
    "flux_depth": ("runners.flux_pipeline", "FluxDepthPipeline"),
    "instantid": ("runners.instantid_pipeline", "InstantIDPipelines"),
}[runner]
getattr(__import__(module, fromlist=[cls]), cls).from_store(get_settings())
timer = STARTED[runner]
print("RESULT " + json.dumps({
    "phases": {**timer.seconds, "total": timer.total},
    "peak_growth": timer.memory.peak_growth,
    "weights_loaded": timer.memory.weights,
    "since_process_start": timer.memory.since_process_start,
}))
"""


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only); False where it is not permitted."""
    try:
        os.sync()
        DROP_CACHES.write_text("3\n")
        return True
    except OSError:
        return False


def cold_read_speed(path: Path) -> tuple[float, bool]:
    """Bytes per second of one sequential read of `path` from a dropped cache, and whether the
    cache could be dropped."""
    cold = drop_page_cache()
    buffer = bytearray(READ_BYTES)
    started = time.perf_counter()
    with path.open("rb", buffering=0) as file:
        while file.readinto(buffer):
            pass
    return path.stat().st_size / (time.perf_counter() - started), cold


def load_runner(
    runner: str,
    store: Path,
    read_threads: int,
    cold: bool = True,
    warmup: bool = True,
    device: str = "cpu",
) -> dict:
    """One runner's from_store on `device` in a fresh process (from a dropped cache unless not
    `cold`); its phases and loading's host memory, and whether the cache was dropped."""
    cold = drop_page_cache() if cold else False
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "DEPTHID_PROFILE": "full",
        "DEPTHID_MODEL_STORE": str(store),
        "DEPTHID_DEVICE": device,
        "DEPTHID_WARMUP": "on" if warmup else "off",
        "DEPTHID_WEIGHTS_READ_THREADS": str(read_threads),
    }
    if device == "cpu":
        env["DEPTHID_OUTPUT_LONG_SIDE"] = CPU_WARMUP_SIDE  # a GPU warms up at the contract's
    done = subprocess.run(
        [sys.executable, "-c", CHILD, runner],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{runner} failed to load:\n{done.stderr[-3000:]}")
    return {**json.loads(lines[-1].removeprefix("RESULT ")), "cold": cold}


def weight_scales() -> dict[str, float]:
    """Each runner's weights at real size over sd15_depth's: computed from the real configs,
    2 bytes a parameter as the fp16 and bf16 files hold them (benchmarks/gpu_memory.py)."""
    from benchmarks.gpu_memory import runners, total_gib

    totals = {runner: total_gib(parts) for runner, parts in runners().items()}
    return {runner: total / totals["sd15_depth"] for runner, total in totals.items()}


def scaled_time_to_ready(
    measured: Mapping[str, float], scale: float, disk_ratio: float = 1.0
) -> float:
    """A runner's time to ready from sd15_depth's measured phases (with the read-ahead): the
    process's start as measured (imports: no weights), the rest `scale` times (the runner's
    weight bytes over sd15_depth's: reading, casting, moving and warming up all grow with
    them), the read phase also `disk_ratio` times (the measuring disk's speed over the
    target's)."""
    rest = measured["total"] - measured["start"] - measured["read"]
    return measured["start"] + scale * (measured["read"] * disk_ratio + rest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cold_start",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--store", type=Path, default=PROJECT_ROOT / ".models" / "cold-start")
    parser.add_argument("--runner", action="append", choices=RUNNERS, help="repeatable")
    parser.add_argument("--no-write", action="store_true", help="use the store as it is")
    parser.add_argument("--threads", type=int, default=4, help="read-ahead threads")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where the runners load"
    )
    parser.add_argument(
        "--target-disk",
        type=float,
        metavar="GB_PER_S",
        help="the target's disk speed for the derived times to ready (default: this disk's)",
    )
    args = parser.parse_args(argv)
    runners = args.runner or list(RUNNERS)

    if not args.no_write:
        write_full_store(args.store, "real", names=REAL_SIZE)
        others = [name for name in CHECKPOINTS if name not in REAL_SIZE]
        write_full_store(args.store, "ci", names=others)
    settings = Settings(profile="full", model_store=args.store)

    largest = weight_files([settings.profile_store()])[0]
    disk, cold = cold_read_speed(largest)
    print(
        f"disk: {disk / 1e9:.2f} GB/s sequential ({'cold' if cold else 'WARM: cache not dropped'}"
        f", {largest.stat().st_size / 1e9:.2f} GB, {largest.relative_to(args.store)})"
    )
    sd15_phases = None
    for runner in runners:
        files = weight_files(settings.profile_store() / n for n in runner_models(settings, runner))
        on_disk = sum(path.stat().st_size for path in files)
        for threads in (args.threads, 0):
            result = load_runner(runner, args.store, threads, device=args.device)
            phases = result["phases"]
            if runner == "sd15_depth" and threads:
                sd15_phases = phases
            read_s = phases["read"] if threads else phases["build"]
            what = "read phase" if threads else "build (reads as it loads)"
            fraction = on_disk / read_s / disk if read_s else 0.0
            print(
                f"{runner} ({on_disk / 1e9:.2f} GB on disk, read-ahead {threads or 'off'}"
                f"{'' if result['cold'] else ', WARM'}): ready in {phases['total']:.1f} s = "
                + ", ".join(f"{p} {phases[p]:.1f}" for p in phases if p != "total")
            )
            growth, loaded = result["peak_growth"], result["weights_loaded"]
            since = " (peak since the process started)" if result["since_process_start"] else ""
            print(
                f"  {what}: {on_disk / read_s / 1e9:.2f} GB/s = {fraction:.0%} of the disk; "
                f"host memory while loading: peak +{growth / 1e9:.2f} GB{since} = "
                f"{growth / loaded:.2f}x the weights as loaded ({loaded / 1e9:.2f} GB)"
            )
    if sd15_phases is not None:
        target = args.target_disk or disk / 1e9
        print(
            f"derived at real size from sd15_depth's run with the read-ahead (its phases x each "
            f"runner's weights, read at {target:.2f} GB/s), startup probe {PROBE_MARGIN}x:"
        )
        for runner, scale in weight_scales().items():
            ready = scaled_time_to_ready(sd15_phases, scale, disk / 1e9 / target)
            print(
                f"  {runner}: {scale:.2f}x the weights, time to ready {ready:.0f} s, "
                f"startup probe budget {PROBE_MARGIN * ready:.0f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
