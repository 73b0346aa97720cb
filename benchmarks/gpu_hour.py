"""The GPU hour: what one short loan of a bare, offline GPU machine should measure, in order, each
step on its own time budget, with every finished step written to the output folder at once.

    bash benchmarks/gpu_hour.sh          (on the lent machine: installs the bundle, then this)
    python -m benchmarks.gpu_hour --scale tiny --device cpu --out DIR     (the rehearsal's)

Steps (docs/performance.md, "The GPU hour"):
  env  what it runs on: GPU, driver, torch, CUDA, cuDNN, package versions, fp8, onnxruntime's
       providers, and whether every carried package's requirements are met there
  a    each runner's pipeline at real size (random weights made on the GPU, random_parts.py), in
       the runner's half precision at the contract's defaults, diffusers' default attention:
       seconds per image at batch 1 and at the best batch, peak GPU memory, NaN or blank outputs
       (sd1.5, then instantid and insta-depth, then flux)
  b    the accelerations one at a time at batch 1, each against the plain path (math attention):
       SDPA's fused kernels alone, then channels-last, torch.compile, fp8 and fused QKV each on
       top of SDPA alone (fused QKV last: it cannot be undone)
  c    served sd1.5: a real-layout store written on this machine's disk (models/full_store.py),
       the sd15 runner and a Gateway calling it (the split layout of docs/deploy.md), time to
       ready, v1 seconds per image over HTTP, one v2 job
  d    served instantid likewise, in the time left

The whole run keeps to `--budget-s` (default 450 s) counted from GPU_HOUR_STARTED (set by
gpu_hour.sh before it installs the bundle): a step, or a measurement inside one, that would not
fit is skipped and named. After each measurement `gpu_hour.json` and `gpu_hour.md` are rewritten
in `--out` ($OUT on the lent machine), so a run cut short still returns what it finished.

At `--scale tiny` (the rehearsal, any CPU) the same steps run on toy configs, the served steps on
a store written at models/full_store.py's `ci` scale: the figures mean nothing; that every step
runs does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_NAME = "gpu_hour"
# Per step, the least time it needs to be worth starting, and the most it may take, in seconds,
# by scale. Real: sized for one H100 within 8 minutes in all (the bundle's install included).
NO_CAP = 10**9  # seconds: a step bounded only by what is left of the run
BUDGETS = {
    "real": {"env": (5, 20), "a": (60, 170), "b": (40, 130), "c": (60, 90), "d": (120, 150)},
    # The rehearsal: no step has a cap of its own, the run's limit bounds them all, so that on a
    # busy machine a slow step still runs to its end (it checks that the steps run, not speed).
    "tiny": {
        "env": (1, NO_CAP),
        "a": (5, NO_CAP),
        "b": (5, NO_CAP),
        "c": (30, NO_CAP),
        "d": (30, NO_CAP),
    },
}
DEFAULT_BUDGET_S = 450  # of the 600 a device command may run: time to spare for a rerun
# Within steps a and b, each runner family's share of the step's time. In b, sd1.5 has the most:
# its compile row is the one expected to fit.
FAMILY_SHARE = {
    "a": {"sd15": 0.2, "sdxl": 0.35, "flux": 0.45},
    "b": {"sd15": 0.4, "sdxl": 0.3, "flux": 0.3},
}
# The least a compile row is expected to take at real size (Inductor, mode "default", a UNet and
# a ControlNet): a guess until a GPU has run it; below it, the row is skipped as "no time".
COMPILE_LEAST_S = 40
# Step b at Flux's 40 default steps would take minutes a row: it runs fewer, and says so.
B_STEPS = {"flux": 10}
# torch.compile's mode in step b: the served default (max-autotune) autotunes for minutes.
B_COMPILE_MODE = "default"
BLANK_STD = 1.0  # an image whose pixels vary less than this (of 255) is blank


# --- the clock and the report --------------------------------------------------------------------


@dataclass
class Clock:
    """Time left of the whole run, counted from when the shell started it."""

    budget_s: float
    started: float = field(default_factory=lambda: float(os.environ.get("GPU_HOUR_STARTED", 0)))

    def __post_init__(self) -> None:
        self.started = self.started or time.time()

    def elapsed(self) -> float:
        return time.time() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()


@dataclass
class Step:
    name: str
    title: str
    status: str = "running"  # running, done, partial, skipped, failed
    notes: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class Report:
    """Every step so far, written out as JSON and markdown after each change."""

    def __init__(self, out: Path, header: dict[str, Any]) -> None:
        self.out = out
        self.header = header
        self.steps: list[Step] = []
        out.mkdir(parents=True, exist_ok=True)

    def write(self) -> None:
        data = {"header": self.header, "steps": [asdict(step) for step in self.steps]}
        _write_atomic(self.out / f"{OUTPUT_NAME}.json", json.dumps(data, indent=2, default=str))
        _write_atomic(self.out / f"{OUTPUT_NAME}.md", self.markdown())

    def markdown(self) -> str:
        h = self.header
        lines = [
            f"## GPU hour ({h['scale']} scale, random weights) on {h.get('device', '?')}",
            "",
            f"{h.get('date', '')}; `{h.get('command', '')}`; {h.get('versions', '')}",
        ]
        for step in self.steps:
            lines += ["", f"### {step.name}. {step.title}: {step.status} ({step.seconds:.0f} s)"]
            lines += [f"- {note}" for note in step.notes]
            if step.rows:
                lines += ["", *markdown_table(step.rows)]
        return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(column)) for column in columns) + " |")
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 100 else f"{value:.0f}"
    return str(value).replace("|", "/")


def say(line: str) -> None:
    print(f"gpu-hour [{time.strftime('%H:%M:%S')}] {line}", flush=True)


@contextlib.contextmanager
def running(report: Report, clock: Clock, step: Step, scale: str) -> Iterator[float | None]:
    """Run one step within its budget: yields the seconds it may take (None: skipped, not
    enough time left), and records how it ended."""
    least, most = BUDGETS[scale][step.name]
    report.steps.append(step)
    left = clock.left()
    if left < least:
        step.status = "skipped"
        step.notes.append(f"skipped: {left:.0f} s left of the run, it needs {least} s at least")
        say(f"step {step.name} skipped ({left:.0f} s left, needs {least} s)")
        report.write()
        yield None
        return
    started = time.perf_counter()
    say(f"step {step.name}: {step.title} (up to {min(most, left):.0f} s)")
    report.write()
    try:
        yield min(most, left)
        if step.status == "running":
            step.status = "done"
    except Exception as error:  # one failed step must not cost the others
        step.status = "failed"
        step.notes.append(f"failed: {type(error).__name__}: {str(error)[:500]}")
        traceback.print_exc()
    finally:
        step.seconds = time.perf_counter() - started
        say(f"step {step.name}: {step.status} in {step.seconds:.0f} s")
        report.write()


# --- env -----------------------------------------------------------------------------------------

VERSIONS_OF = (
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "huggingface-hub",
    "tokenizers",
    "safetensors",
    "bentoml",
    "numpy",
    "pillow",
    "opencv-python-headless",
    "scikit-image",
    "scipy",
    "onnxruntime",
    "onnxruntime-gpu",
    "insightface",
    "pydantic",
)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def unmet_requirements(site: Path) -> list[str]:
    """Each requirement of a package installed in `site` (the bundle's folder) that what this
    Python sees does not meet: a version the device has that the bundle took for good."""
    from packaging.requirements import Requirement

    problems = []
    for dist in metadata.distributions(path=[str(site)]):
        name = dist.metadata["Name"]
        if name.lower() == "insightface":  # installed without its requirements, on purpose
            continue
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            found = _version(requirement.name)
            if found is None:
                problems.append(f"{name} needs {requirement}: not installed")
            elif not requirement.specifier.contains(found, prereleases=True):
                problems.append(f"{name} needs {requirement}: {found} is installed")
    return problems


def device_list_differences() -> tuple[list[str], list[str]]:
    """Against requirements/device.txt: where a listed version differs from this machine's, and
    every listed package's version here (what to write into the file)."""
    differences, found_versions = [], []
    for line in (ROOT / "requirements" / "device.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, listed = line.partition("==")
        found = _version(name)
        found_versions.append(f"{name}=={found}" if found else f"# {name}: not installed")
        if listed and found != listed:
            differences.append(f"{name} {found or 'missing'} (listed {listed})")
    return differences, found_versions


def step_env(report: Report, clock: Clock, args: argparse.Namespace) -> None:
    step = Step("env", "what it runs on")
    with running(report, clock, step, args.scale) as budget:
        if budget is None:
            return
        import torch

        facts: dict[str, Any] = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch CUDA": torch.version.cuda,
            "cuDNN": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        }
        if args.device.type == "cuda":
            properties = torch.cuda.get_device_properties(args.device)
            facts["GPU"] = properties.name
            facts["GPU memory GiB"] = round(properties.total_memory / 2**30, 1)
            facts["compute capability"] = f"{properties.major}.{properties.minor}"
            facts["multiprocessors"] = properties.multi_processor_count
        facts["driver"] = _driver_version()
        from benchmarks.fp8 import fp8_available

        facts["fp8"] = fp8_available(args.device) or "yes"
        try:
            import onnxruntime

            facts["onnxruntime providers"] = ", ".join(onnxruntime.get_available_providers())
        except ImportError as error:
            facts["onnxruntime providers"] = f"not importable: {error}"
        for name in VERSIONS_OF:
            facts[name] = _version(name)
        report.header["device"] = facts.get("GPU", "CPU")
        report.header["versions"] = (
            f"torch {facts['torch']} (CUDA {facts['torch CUDA']}), "
            f"diffusers {facts['diffusers']}, transformers {facts['transformers']}, "
            f"driver {facts['driver']}"
        )
        step.rows = [{"what": key, "value": value} for key, value in facts.items()]
        if args.site:
            unmet = unmet_requirements(args.site)
            step.notes.append(f"carried packages' requirements: {'; '.join(unmet) or 'all met'}")
        differences, found_versions = device_list_differences()
        (args.out / "device-versions.txt").write_text("\n".join(found_versions) + "\n")
        step.notes.append(
            "listed versions of requirements/device.txt unlike this machine's: "
            + ("; ".join(differences) or "none")
            + " (every listed package's version here: device-versions.txt)"
        )
        for row in step.rows:
            say(f"  {row['what']}: {row['value']}")


def _driver_version() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


# --- a and b: the pipelines in process -----------------------------------------------------------


def bench_args(args: argparse.Namespace, steps: int | None = None) -> argparse.Namespace:
    """benchmarks/gpu.py's options for this run (its builders and job makers read them)."""
    from benchmarks import gpu

    argv = ["--scale", args.scale, "--device", args.device.type, "--runs", str(args.runs)]
    if steps:
        argv += ["--steps", str(steps)]
    return gpu.parse_args(argv)


def blank_or_nan(results: list) -> str:
    """'ok', or what is wrong with the outputs: a failure (the VAE guard names NaN/inf) or an
    image of one colour."""
    from PIL import Image

    problems = []
    for result in results:
        if result.failure is not None:
            problems.append(f"{result.failure.kind}: {result.failure.message[:120]}")
            continue
        for data in result.images:
            pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32)
            if not np.isfinite(pixels).all():
                problems.append("NaN pixels")
            elif pixels.std() < BLANK_STD:
                problems.append(f"blank (one colour, {pixels.mean():.0f})")
    return "; ".join(sorted(set(problems))) or "ok"


def timed(
    family: Any, model: str, batch: int, runs: int, warmup: int, device: Any, math: bool = False
) -> tuple[float, list]:
    """Median seconds per image of the runner's run_batch on `batch` jobs, and the last
    call's results."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    times, results = [], []
    with sdpa_kernel(SDPBackend.MATH) if math else contextlib.nullcontext():
        for i in range(warmup + runs):
            jobs = family.jobs[model](batch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            results = family.built.runner.run_batch(jobs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) / batch, results


def _free(device: Any) -> None:
    import gc

    import torch

    torch.compiler.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _build(name: str, models: list[str], bargs: argparse.Namespace) -> tuple[Any, float]:
    from benchmarks import gpu

    started = time.perf_counter()
    family = gpu.build_family(name, models, bargs)
    return family, time.perf_counter() - started


def step_a(report: Report, clock: Clock, args: argparse.Namespace) -> None:
    import torch

    from benchmarks import gpu

    step = Step("a", "each runner's pipeline, half precision, contract defaults")
    with running(report, clock, step, args.scale) as budget:
        if budget is None:
            return
        step_end = time.perf_counter() + budget
        for name, (models, _) in gpu.FAMILIES.items():
            family_end = min(step_end, time.perf_counter() + budget * FAMILY_SHARE["a"][name])
            bargs = bench_args(args)
            if time.perf_counter() >= family_end:
                step.notes.append(f"{name}: skipped, no time left in the step")
                step.status = "partial"
                continue
            if args.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(args.device)
            family, built_s = _build(name, models, bargs)
            dtype = str(gpu.family_dtype(name, bargs)).removeprefix("torch.")
            say(f"a: {name} built in {built_s:.1f} s ({dtype})")
            for model in models:
                row: dict[str, Any] = {"model": model, "dtype": dtype, "build s": built_s}
                row["size"] = bargs.size[name]
                row["steps"] = gpu.DEFAULTS[model].steps
                step.rows.append(row)
                per_image, results = timed(family, model, 1, args.runs, 1, args.device)
                row["batch 1 s/image"] = per_image
                row["outputs"] = blank_or_nan(results)
                if args.scale == "real":
                    row["target s/image"] = gpu.TARGETS_S[model]
                say(f"a: {model} batch 1: {per_image:.3f} s/image, outputs {row['outputs']}")
                report.write()
                best = (1, per_image)
                for batch in bargs.batches[model][1:]:
                    estimate = best[1] * batch * (1 + args.runs) * 1.2
                    if time.perf_counter() + estimate > family_end:
                        row["batches not run"] = f"{batch}+ (no time)"
                        step.status = "partial"
                        break
                    try:
                        per_image, results = timed(family, model, batch, args.runs, 1, args.device)
                        gpu.check(results, batch)  # one call of `batch`, every image made
                    except (torch.OutOfMemoryError, gpu.BatchFailed) as error:
                        # run_batch retries a failed call in halves: its time is not the batch's.
                        row["batches not run"] = f"{batch}+ ({str(error)[:120]})"
                        break
                    say(f"a: {model} batch {batch}: {per_image:.3f} s/image")
                    if blank_or_nan(results) != "ok":
                        row["outputs"] += f"; batch {batch}: {blank_or_nan(results)}"
                    if per_image < best[1]:
                        best = (batch, per_image)
                row["best batch"], row["best s/image"] = best
                if args.device.type == "cuda":
                    row["peak GiB"] = torch.cuda.max_memory_allocated(args.device) / 2**30
                report.write()
            del family
            _free(args.device)


def step_b(report: Report, clock: Clock, args: argparse.Namespace) -> None:
    from benchmarks import gpu
    from benchmarks.fp8 import fp8_available

    step = Step("b", "accelerations one at a time, batch 1, against the plain path")
    with running(report, clock, step, args.scale) as budget:
        if budget is None:
            return
        step_end = time.perf_counter() + budget
        step.notes.append(
            "plain: half precision, SDPA held to its math kernel; each other row is SDPA's "
            "fused kernels plus that one alone; torch.compile "
            + (f"mode {B_COMPILE_MODE!r}" if args.scale == "real" else "backend 'eager' (tiny)")
        )
        fp8_missing = fp8_available(args.device)
        for name, (models, _) in gpu.FAMILIES.items():
            family_end = min(step_end, time.perf_counter() + budget * FAMILY_SHARE["b"][name])
            if time.perf_counter() >= family_end:
                step.notes.append(f"{name}: skipped, no time left in the step")
                step.status = "partial"
                continue
            # insta-depth shares instantid's modules: instantid stands for both.
            row: dict[str, Any] = {"model": models[0]}
            step.rows.append(row)
            accelerations_of_family(name, row, family_end, fp8_missing, report, step, args)
            _free(args.device)


class Rows:
    """Step b's measurements of one runner family: each acceleration switched on, timed at
    batch 1, and switched off again (where it can be)."""

    def __init__(
        self, family: Any, row: dict[str, Any], end: float, report: Report, step: Step, args: Any
    ) -> None:
        self.family, self.row, self.end = family, row, end
        self.report, self.step, self.args = report, step, args
        self.model = row["model"]
        self.plain, _ = timed(family, self.model, 1, 1, 1, args.device, math=True)
        row["plain s/image"] = self.plain
        report.write()

    def measure(
        self, label: str, switch_on: Callable[[], object], undo: Callable[[], object]
    ) -> None:
        # A row is its warm-up and one timed call; compiling costs more.
        estimate = self.plain * 2
        if label == "compile":
            estimate = max(self.plain * 6, COMPILE_LEAST_S if self.args.scale == "real" else 0)
        if time.perf_counter() + estimate > self.end:
            self.row[label] = "no time"
            self.step.status = "partial"
            return
        try:
            switch_on()
            seconds, results = timed(self.family, self.model, 1, 1, 1, self.args.device)
            outputs = blank_or_nan(results)
            self.row[label] = f"{seconds:.3f} ({self.plain / seconds:.2f}x)" + (
                "" if outputs == "ok" else f" {outputs}"
            )
        except Exception as error:
            self.row[label] = f"failed: {type(error).__name__}: {str(error)[:160]}"
            traceback.print_exc()
        finally:
            undo()
        say(f"b: {self.model} {label}: {self.row[label]}")
        self.report.write()


def accelerations_of_family(
    name: str,
    row: dict[str, Any],
    end: float,
    fp8_missing: str | None,
    report: Report,
    step: Step,
    args: argparse.Namespace,
) -> None:
    import torch

    from benchmarks import gpu
    from benchmarks.fp8 import apply_fp8
    from compat import torch_compile
    from runners.acceleration import apply_channels_last, apply_compile, apply_fused_qkv

    steps = B_STEPS.get(name) if args.scale == "real" else None
    bargs = bench_args(args, steps)
    family, row["build s"] = _build(name, [row["model"]], bargs)
    row["steps"] = steps or gpu.DEFAULTS[row["model"]].steps
    modules = family.built.modules
    compiled = {key: modules[key] for key in family.built.compiled}
    rows = Rows(family, row, end, report, step, args)

    def nothing() -> None:
        return None

    def contiguous() -> None:
        for module in modules.values():
            module.to(memory_format=torch.contiguous_format)

    def compile_modules() -> None:
        if args.scale == "tiny":  # Dynamo's tracing alone: Inductor takes minutes on a CPU
            for module in compiled.values():
                module.compile(backend="eager")
        else:
            apply_compile(compiled, B_COMPILE_MODE)

    def uncompile() -> None:
        for module in compiled.values():
            torch_compile.uncompile(module)
        torch.compiler.reset()

    rows.measure("sdpa", nothing, nothing)
    rows.measure("channels_last", lambda: apply_channels_last(modules), contiguous)
    rows.measure("compile", compile_modules, uncompile)
    if fp8_missing:
        row["fp8"] = f"not on this device ({fp8_missing})"
    else:
        swaps = []
        rows.measure(
            "fp8",
            lambda: swaps.append(apply_fp8(compiled)[0]),
            lambda: [swap.undo() for swap in swaps],
        )
    # Last: the runners free the unfused projections, so it cannot be switched off again.
    rows.measure("fused_qkv", lambda: apply_fused_qkv(modules, "sdpa"), nothing)


# --- c and d: served -----------------------------------------------------------------------------


# What BentoML logs when a service's constructor raised (it then retries, forever).
START_FAILED = "Initializing service error"


def _last_error(log: Path) -> str:
    """The last exception line of a server's log, for the report (the log is in $OUT)."""
    text = log.read_text(errors="replace").replace("\\n", "\n")
    errors = re.findall(r"^(\w+(?:Error|Exception)\b.*)$", text, re.M)
    return (errors[-1] if errors else text[-300:])[:400] + f" (log: {log.name})"


@contextlib.contextmanager
def bentoml_serve(
    target: str, env: dict[str, str], ready_path: str, timeout_s: float, log: Path
) -> Iterator[tuple[str, float, subprocess.Popen]]:
    """`python -m bentoml serve TARGET` on a free port (the bundle installs no console script
    on the device's PATH); yields its URL, the seconds until `ready_path` answered 200, and the
    process."""
    import httpx

    from tests.support.helpers import free_port
    from tests.support.served import stop

    port = free_port()
    home = tempfile.mkdtemp(prefix="gpu-hour-bentoml-")
    with open(log, "w") as log_file:
        command = [sys.executable, "-m", "bentoml", "serve", target, "--host", "127.0.0.1"]
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=ROOT,
            env={**os.environ, "BENTOML_HOME": home, "BENTOML_DO_NOT_TRACK": "true", **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url, started = f"http://127.0.0.1:{port}", time.perf_counter()
        try:
            while True:
                # BentoML restarts a worker whose start failed, so the process lives on.
                if process.poll() is not None or START_FAILED in log.read_text(errors="replace"):
                    raise RuntimeError(f"{target} did not start: {_last_error(log)}")
                if time.perf_counter() - started > timeout_s:
                    raise TimeoutError(f"{target} not ready in {timeout_s:.0f} s (log: {log})")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + ready_path, timeout=2).status_code == 200:
                        break
                time.sleep(0.5)
            yield url, time.perf_counter() - started, process
        finally:
            stop(process)
            shutil.rmtree(home, ignore_errors=True)


def serve_runner_and_gateway(
    runner: str,
    models: list[str],
    report: Report,
    step: Step,
    args: argparse.Namespace,
    budget: float,
) -> None:
    """Write `runner`'s part of the store, serve the runner and a Gateway that calls it, and
    time each model of it over v1 (and one v2 job)."""
    import httpx

    from benchmarks import gpu_check
    from models.full_store import write_full_store
    from models.manifest import RUNNER_MODELS

    end = time.perf_counter() + budget
    store_scale = "real" if args.scale == "real" else "ci"
    store = args.store
    started = time.perf_counter()
    names = [name for name in RUNNER_MODELS[runner] if name != "prompt-upsampler"]
    write_full_store(store, store_scale, names=names, log=lambda line: say(f"store: {line}"))
    step.notes.append(
        f"store ({store_scale} scale) written in {time.perf_counter() - started:.0f} s"
    )
    report.write()
    env = {
        "DEPTHID_PROFILE": "full",
        "DEPTHID_MODEL_STORE": str(store),
        "DEPTHID_DEVICE": args.device.type,
        **(gpu_check.CI_ENV if store_scale == "ci" else {}),
    }
    runner_target = {
        "sd15_depth": "runners.sd15_depth:SD15Depth",
        "instantid": "runners.instantid:InstantID",
    }[runner]
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)
    with bentoml_serve(
        runner_target, env, "/readyz", end - time.perf_counter(), logs / f"{runner}.log"
    ) as (runner_url, ready_s, _):
        say(f"{step.name}: {runner} ready in {ready_s:.1f} s")
        step.notes.append(f"{runner} runner: ready in {ready_s:.1f} s (load, accelerate, warm up)")
        accelerations = gpu_check._accelerations((logs / f"{runner}.log").read_text())
        step.notes.append(f"accelerations: {accelerations.get(runner, '?')}")
        report.write()
        # The other runners are elsewhere (nowhere): only this one's models are served.
        urls = {
            "sd15_depth": "DEPTHID_SD15_RUNNER_URL",
            "instantid": "DEPTHID_INSTANTID_RUNNER_URL",
            "flux_depth": "DEPTHID_FLUX_RUNNER_URL",
        }
        gateway_env = {**env, **{variable: "http://127.0.0.1:9" for variable in urls.values()}}
        gateway_env[urls[runner]] = runner_url
        with bentoml_serve(
            "service:Gateway",
            gateway_env,
            "/livez",
            end - time.perf_counter(),
            logs / f"gateway-{runner}.log",
        ) as (gateway_url, gateway_s, _):
            step.notes.append(f"Gateway: up in {gateway_s:.1f} s")
            bodies = gpu_check.payloads(store_scale)
            with httpx.Client(
                base_url=gateway_url, timeout=max(end - time.perf_counter(), 10)
            ) as client:
                for model in models:
                    row: dict[str, Any] = {"model": model}
                    step.rows.append(row)
                    body = bodies[model]
                    gpu_check._v1(client, model, body)  # the first call pays for what is lazy
                    times = []
                    for _ in range(args.runs):
                        if time.perf_counter() + (times[-1] if times else 0) > end:
                            break
                        times.append(gpu_check._v1(client, model, body))
                    row["v1 s/image"] = statistics.median(times) if times else None
                    row["v1 calls"] = len(times)
                    if time.perf_counter() + (row["v1 s/image"] or 0) * 2 < end:
                        v2_started = time.perf_counter()
                        row["v2"] = gpu_check._v2(client, model, body)
                        row["v2 s (submit to image)"] = time.perf_counter() - v2_started
                    else:
                        row["v2"] = "no time"
                    say(f"{step.name}: {model}: {row}")
                    report.write()


def step_served(
    report: Report,
    clock: Clock,
    args: argparse.Namespace,
    name: str,
    runner: str,
    models: list[str],
) -> None:
    step = Step(name, f"served {runner}: store, runner + Gateway, v1 and v2")
    with running(report, clock, step, args.scale) as budget:
        if budget is None:
            return
        serve_runner_and_gateway(runner, models, report, step, args, budget)


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", choices=("real", "tiny"), default="real")
    parser.add_argument("--device", help="cuda (default when present) or cpu")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-hour-out"))
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S)
    parser.add_argument("--runs", type=int, default=2, help="timed calls per point (median)")
    parser.add_argument("--steps", default="env,a,b,c,d", help="which steps, comma-separated")
    parser.add_argument("--store", type=Path, help="where c and d write the store (a temp dir)")
    args = parser.parse_args(argv)
    import torch

    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.scale == "real" and args.device.type != "cuda":
        parser.error("the real scale needs a CUDA GPU; --scale tiny --device cpu runs anywhere")
    args.site = Path(os.environ["GPU_HOUR_SITE"]) if os.environ.get("GPU_HOUR_SITE") else None
    args.steps = args.steps.split(",")
    # A store of our own is removed at the end (at real size it is tens of GB).
    args.own_store = args.store is None
    args.store = args.store or Path(tempfile.mkdtemp(prefix="gpu-hour-store-"))
    return args


def _stop_on_term(signum: int, _frame: object) -> None:
    # gpu_hour.sh's time limit sends TERM: unwind, so the servers of c and d (in sessions of
    # their own, which would outlive the command) are stopped by their context managers.
    raise SystemExit(f"gpu-hour: signal {signum}, stopping")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_term)
    args = parse_args(argv)
    clock = Clock(args.budget_s)
    report = Report(
        args.out,
        {
            "scale": args.scale,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "command": " ".join(["benchmarks/gpu_hour.sh", *(argv or sys.argv[1:])]),
            "budget_s": args.budget_s,
        },
    )
    # Random weights in half precision may overflow: a NaN is reported per row, not warned.
    import warnings

    warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
    steps: dict[str, Callable[[], None]] = {
        "env": lambda: step_env(report, clock, args),
        "a": lambda: step_a(report, clock, args),
        "b": lambda: step_b(report, clock, args),
        "c": lambda: step_served(
            report, clock, args, "c", "sd15_depth", ["sd1.5-controlnet-depth"]
        ),
        "d": lambda: step_served(
            report, clock, args, "d", "instantid", ["instantid", "insta-depth"]
        ),
    }
    try:
        for name, run in steps.items():
            if name in args.steps:
                run()
    finally:
        if args.own_store:
            shutil.rmtree(args.store, ignore_errors=True)
    report.header["total_s"] = round(clock.elapsed(), 1)
    report.write()
    say(f"done in {clock.elapsed():.0f} s; {args.out / (OUTPUT_NAME + '.md')}:")
    print(report.markdown(), flush=True)
    failed = [step.name for step in report.steps if step.status == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
