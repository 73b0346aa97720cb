"""`make gpu-check`: the whole `full` deployment path on one GPU machine, with nothing downloaded.

    python -m benchmarks.gpu_check                       (real scale, CUDA)
    python -m benchmarks.gpu_check --scale ci --device cpu --no-bench   (CI: minutes, any machine)

1. writes the `full` store (models/full_store.py: the manifest's layout, random weights) into
   `<store>/full/` (default `.models/gpu-check`, never the store `make pull` fills);
2. serves it: `bentoml serve service:Gateway` with DEPTHID_PROFILE=full on the device, every
   acceleration at its default;
3. sends every model through v1 (timed: seconds per image at the contract's defaults) and v2
   (submit, poll, fetch the image);
4. runs `make bench-gpu` (benchmarks/gpu.py) per model;
5. prints one table: seconds per image, peak GPU memory per runner process (NVML, sampled while
   the requests run), the accelerations each runner logged at start.

Every model of the registry (gateway/schemas/registry.py) is sent its /docs example's pictures
and prompt, the contract's defaults for everything else, and prompt upsampling where the model
offers it (the local language model runs too). The face models are the tiny profile's hand-set
detector at both scales (models/full_store.py), so the face requests use the shipped pictures,
whose faces that detector finds. At `--scale ci` the requests ask for the fewest steps the
contract allows and the output is 64 px: the figures then mean nothing; what is checked is that
every step ran.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.schemas.registry import MODEL_SPECS
from models.full_store import SCALES, write_full_store
from settings import PROJECT_ROOT
from tests.support.served import process_tree, serve_process

DEFAULT_STORE = PROJECT_ROOT / ".models" / "gpu-check"
CI_ENV = {
    # Small and short on the CPU; the real scale keeps the contract's defaults.
    "DEPTHID_OUTPUT_LONG_SIDE": "64",
    "DEPTHID_UPSAMPLER_MAX_NEW_TOKENS": "8",
}
POLL_TIMEOUT_S = 900
START_TIMEOUT_S = 1800  # real-size runners read tens of GB and warm up before /readyz


@dataclass
class Row:
    model: str
    v1_seconds: float | None = None
    v2: str = "not run"
    bench_seconds: str = "not run"
    accelerations: str = "?"
    peak_gib: float | None = None


@dataclass
class GpuMemory:
    """Peak GPU memory per runner process, sampled through NVML while requests run."""

    peaks: dict[str, float] = field(default_factory=dict)
    # The whole device's, for where NVML cannot see the processes (a container's own PIDs).
    device_peak: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self, server: subprocess.Popen, interval_s: float = 0.2) -> threading.Thread:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        runners = _runner_pids(server)

        def run() -> None:
            while not self._stop.is_set():
                for handle in handles:
                    used = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**30
                    self.device_peak = max(self.device_peak or 0.0, used)
                    for app in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                        runner = runners.get(app.pid)
                        if runner and app.usedGpuMemory:
                            gib = app.usedGpuMemory / 2**30
                            self.peaks[runner] = max(self.peaks.get(runner, 0.0), gib)
                self._stop.wait(interval_s)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def _runner_pids(server: subprocess.Popen) -> dict[int, str]:
    """BentoML's worker processes by the service they run (`--service-name X`)."""
    pids = {}
    for process in process_tree(server):
        try:
            cmdline = process.cmdline()
        except Exception:  # gone meanwhile
            continue
        if "--service-name" in cmdline:
            pids[process.pid] = cmdline[cmdline.index("--service-name") + 1]
    return pids


def payloads(scale: str) -> dict[str, dict]:
    """One request body per model: the contract's defaults but for the pictures and prompt."""
    bodies = {}
    for model, spec in MODEL_SPECS.items():
        example = spec.example()["value"]
        body = {field: example[field] for field in example if field.endswith("image")}
        body["prompt"] = example["prompt"]
        if "prompt_upsampling" in spec.request.model_fields:
            body["prompt_upsampling"] = True  # the local language model too
        if scale == "ci":  # the fewest steps the contract allows
            steps = spec.request.model_json_schema()["properties"][spec.steps_field]
            body[spec.steps_field] = steps["minimum"]
        bodies[model] = body
    return bodies


def _v1(client: httpx.Client, model: str, body: dict) -> float:
    started = time.perf_counter()
    response = client.post(f"/v1/{model}", json=body)
    seconds = time.perf_counter() - started
    if response.status_code != 200 or not response.content:
        raise RuntimeError(f"v1 {model}: {response.status_code} {response.text[:300]}")
    return seconds


def _v2(client: httpx.Client, model: str, body: dict) -> str:
    submitted = client.post(f"/v2/{model}", json=body)
    if submitted.status_code != 200:
        raise RuntimeError(f"v2 {model}: submit {submitted.status_code} {submitted.text[:300]}")
    request_id = submitted.json()["request_id"]
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        status = client.get(f"/v2/requests/{request_id}/status").json()["status"]
        if status in ("COMPLETED", "FAILED"):
            break
        time.sleep(0.5)
    result = client.get(f"/v2/requests/{request_id}").json()
    if result.get("status") != "COMPLETED":
        raise RuntimeError(f"v2 {model}: {json.dumps(result)[:300]}")
    image = client.get(f"/v2/requests/{request_id}/output/0")
    if image.status_code != 200 or not image.content:
        raise RuntimeError(f"v2 {model}: output {image.status_code}")
    return "COMPLETED"


def _accelerations(log: str) -> dict[str, str]:
    """Each runner's start-up line (runners/acceleration.py log_accelerations), what is on."""
    found = {}
    for runner, parts in re.findall(r"(\w+) accelerations: ([^\"\n]+)", log):
        on = [part for part in parts.split() if not part.endswith("=off")]
        found[runner] = " ".join(on)
    return found


def _bench(model: str, scale: str, device: str, extra: list[str]) -> str:
    """benchmarks/gpu.py for one model: its best seconds per image (its table is printed)."""
    args = ["--model", model, "--device", device]
    if scale == "ci":  # toy sizes on the CPU: that it runs, not what it measures
        args += ["--scale", "tiny", "--runs", "1", "--warmup", "0", "--steps", "2"]
        args += ["--rows", "baseline", "--batches", "1"]
    command = [sys.executable, "-m", "benchmarks.gpu", *args, *extra]
    print(f"gpu-check: {' '.join(command[1:])}", flush=True)
    done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True)
    print(done.stdout, flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench-gpu {model} failed: {done.stderr[-2000:]}")
    return best_seconds(done.stdout)


def best_seconds(bench_output: str) -> str:
    """The lowest "best batch" seconds per image in benchmarks/gpu.py's tables, or "?"."""
    best = re.findall(r"\| ([\d.]+) \(batch \d+\) \|$", bench_output, re.M)
    return min(best, key=float) if best else "?"


def table(rows: list[Row], title: str) -> str:
    lines = [
        title,
        "",
        "| model | runner | v1 s/image | v2 | bench-gpu best s/image | peak GPU memory (runner)"
        " | accelerations on |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        v1 = f"{row.v1_seconds:.2f}" if row.v1_seconds is not None else "failed"
        peak = f"{row.peak_gib:.1f} GiB" if row.peak_gib is not None else "n/a"
        runner = MODEL_SPECS[row.model].runner.name
        lines.append(
            f"| {row.model} | {runner} | {v1} | {row.v2} | {row.bench_seconds}"
            f" | {peak} | {row.accelerations} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> tuple[list[Row], str]:
    """Every step; the rows of the table and its title."""
    print(f"gpu-check: writing the full store ({args.scale}) into {args.store}/full", flush=True)
    write_full_store(args.store, args.scale)
    env = {
        "DEPTHID_PROFILE": "full",
        "DEPTHID_MODEL_STORE": str(args.store),
        "DEPTHID_DEVICE": args.device,
        **(CI_ENV if args.scale == "ci" else {}),
    }
    rows = [Row(model) for model in MODEL_SPECS]
    memory = GpuMemory()
    print("gpu-check: serving full (runners load, warm up, then /readyz) ...", flush=True)
    with serve_process(env=env, start_timeout_s=START_TIMEOUT_S) as (base_url, server):
        if args.device == "cuda":
            memory.sample(server)
        with httpx.Client(base_url=base_url, timeout=POLL_TIMEOUT_S) as client:
            for row, (model, body) in zip(rows, payloads(args.scale).items(), strict=True):
                print(f"gpu-check: {model} v1 ...", flush=True)
                row.v1_seconds = _v1(client, model, body)
                print(f"gpu-check: {model} v2 ...", flush=True)
                row.v2 = _v2(client, model, body)
        memory.stop()
    log_text = Path(server.log_path).read_text(errors="replace")  # tests/support/served.py keeps it
    accelerations = _accelerations(log_text)
    for row in rows:
        runner = MODEL_SPECS[row.model].runner.name
        row.accelerations = accelerations.get(runner, "?")
        row.peak_gib = memory.peaks.get(runner)
    if args.bench:
        for row in rows:
            row.bench_seconds = _bench(row.model, args.scale, args.device, args.bench_args)
    device = "CPU"
    if args.device == "cuda":
        import torch

        device = torch.cuda.get_device_name(0)
        if memory.device_peak is not None:
            device += f", peak GPU memory of the whole device {memory.device_peak:.1f} GiB"
    return rows, f"## gpu-check ({args.scale} scale, random weights) on {device}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", choices=SCALES, default="real")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE)
    parser.add_argument("--no-bench", dest="bench", action="store_false")
    parser.add_argument(
        "--bench-args", default="", help='extra options for benchmarks/gpu.py, e.g. "--runs 1"'
    )
    args = parser.parse_args(argv)
    args.bench_args = args.bench_args.split()
    if args.scale == "real" and args.device != "cuda":
        parser.error("the real scale needs a CUDA GPU; --scale ci --device cpu runs anywhere")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows, title = run(args)
    print(table(rows, title), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
