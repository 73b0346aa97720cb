"""A runner's time to ready, by phase: one log line at start and the
depthid_runner_start_seconds gauge.

The phases, in the order `from_store` runs them:
- start: from the process's start to `from_store` (Python, torch, diffusers, BentoML imports);
- read: the weight files read from the disk into the page cache (models/weights.py);
- build: the modules constructed from their configs and filled with the weights, in their dtype
  (on CUDA straight on the GPU: `from_pretrained(device_map=...)`), tokenizers and processors;
- to_device: the pipeline put on its device (or its CPU offload hooks set);
- accelerations: attention kernels, channels-last, fused projections, compile;
- warmup: one generation at the default output size;
- other: the rest (face models, term list, the runner's own objects).

Also what loading cost in host memory (`LoadMemory`): the highest resident set size (RSS) of the
process from the start of `from_store` until its weights are in place (read, build, to_device),
less its RSS at that start, beside the bytes of the weights as loaded (the runner's modules'
parameters and buffers in their dtype, wherever they are). RSS counts the process's anonymous
memory and the pages of the files it maps that it has touched (a safetensors file while it is
cast to the runner's dtype); not the page cache the read-ahead filled, which is the kernel's and
which it drops under pressure. The warm-up's activations are not loading: they come after.
The kernel keeps the RSS in per-CPU counters (Linux 6.2+) and reads them without summing: a
reading can miss up to max(32, 2 x CPUs) pages per CPU, tens of MB on a many-core node; small
against GBs of weights.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from gateway import metrics  # torch-free; the runners' series sit beside the Gateway's
from models.store import require_model
from models.weights import ReadAhead, read_ahead, weight_files
from runners.acceleration import Accelerations
from runners.device import load_onto
from settings import Settings

logger = logging.getLogger(__name__)

_process_start_counted = False

PHASES = ("start", "read", "build", "to_device", "accelerations", "warmup", "other")

# Writing 5 there starts the kernel's high-water mark of the process's RSS (VmHWM) again from
# its RSS now (Linux 4.0+), so the peak is loading's, not that of whatever ran before it.
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK = "5"
STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class LoadMemory:
    """Host memory a runner's loading took: its peak over the RSS before, and the weights."""

    peak_growth: int  # bytes: the highest RSS while loading less the RSS when loading started
    weights: int  # bytes of the weights as loaded (their dtype, on their device)
    # The high-water mark could not be reset: the peak may be from before loading started.
    since_process_start: bool = False

    @property
    def ratio(self) -> float:
        return self.peak_growth / self.weights if self.weights else 0.0


# The timers of the runners this process started, by runner, once ready: what
# benchmarks/cold_start.py and the tests read.
STARTED: dict[str, StartupTimer] = {}


def reset_peak_rss() -> bool:
    """Start the process's RSS high-water mark again from its RSS now; False where /proc does
    not permit it (the peak then counts from the process's start)."""
    try:
        CLEAR_REFS.write_text(RESET_PEAK)
    except OSError:
        return False
    return True


def status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status in bytes; None where there is no such file."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


def current_rss() -> int:
    """The process's RSS in bytes now (VmRSS: the same counters as its high-water mark)."""
    rss = status_bytes("VmRSS")
    return psutil.Process().memory_info().rss if rss is None else rss


def peak_rss() -> int:
    """The process's RSS high-water mark in bytes (VmHWM since the last reset)."""
    peak = status_bytes("VmHWM")
    if peak is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return peak


def weight_bytes(modules: Iterable[object]) -> int:
    """Bytes of the parameters and buffers of the torch modules among `modules` (the rest, such
    as tokenizers and schedulers, hold none), each storage once: tied and shared weights, and
    a module listed twice, count once."""
    storages: dict[tuple[torch.device, int], int] = {}
    for module in modules:
        if isinstance(module, torch.nn.Module):
            for tensor in itertools.chain(module.parameters(), module.buffers()):
                storage = tensor.untyped_storage()
                storages[(tensor.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


class StartupTimer:
    """Times `from_store` by phase: `with timer.phase("build"): ...`, then `ready()`."""

    def __init__(self, runner: str) -> None:
        self.runner = runner
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._entered = time.perf_counter()
        self.read: ReadAhead | None = None
        self.weight_bytes = 0  # on disk
        self.memory: LoadMemory | None = None
        self.total = 0.0
        self._peak_reset = reset_peak_rss()
        self._rss_before = current_rss()
        # Wall-clock time since the process started, before this object existed: counted by the
        # first runner a process loads (a served runner's only one), not again by later ones.
        global _process_start_counted
        if not _process_start_counted:
            self.seconds["start"] = max(0.0, time.time() - psutil.Process().create_time())
            _process_start_counted = True

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def read_weights(self, settings: Settings, models: tuple[str, ...]) -> ReadAhead:
        """The read phase: every weight file of `models` into the page cache."""
        files = weight_files(require_model(settings, name) for name in models)
        with self.phase("read"):
            self.read = read_ahead(files, settings.weights_read_threads)
        self.weight_bytes = sum(path.stat().st_size for path in files)
        return self.read

    def loaded(self, *modules: object) -> LoadMemory:
        """The weights are in place (after to_device): loading's peak host memory, against the
        bytes of `modules`' weights (every model of the runner; non-modules are skipped)."""
        self.memory = LoadMemory(
            peak_growth=peak_rss() - self._rss_before,
            weights=weight_bytes(modules),
            since_process_start=not self._peak_reset,
        )
        return self.memory

    def ready(self) -> str:
        """Log the one start-up line and set the gauge; returns the line."""
        measured = sum(seconds for phase, seconds in self.seconds.items() if phase != "start")
        self.seconds["other"] += max(0.0, time.perf_counter() - self._entered - measured)
        total = sum(self.seconds.values())
        parts = [f"{phase} {self.seconds[phase]:.1f} s" for phase in PHASES]
        if self.read is not None:
            if self.read.skipped:
                parts[1] += f" (read-ahead skipped: {self.read.skipped})"
            else:
                parts[1] += (
                    f" ({self.read.bytes / 1e9:.2f} GB at {self.read.bytes_per_s / 1e9:.2f} GB/s,"
                    f" {self.read.threads} threads)"
                )
        on_disk = f"weights on disk {self.weight_bytes / 1e9:.2f} GB"
        memory = self.memory
        if memory is None:
            loading = on_disk
        else:
            since = " (peak since the process started)" if memory.since_process_start else ""
            loading = (
                f"host memory while loading: peak +{memory.peak_growth / 1e9:.2f} GB{since} = "
                f"{memory.ratio:.2f}x the weights as loaded ({memory.weights / 1e9:.2f} GB), "
                f"{on_disk}"
            )
        line = f"{self.runner} ready in {total:.1f} s: {', '.join(parts)}; {loading}"
        logger.info(line)
        metrics.set_runner_start_seconds(self.runner, {**self.seconds, "total": total})
        self.total = total
        STARTED[self.runner] = self
        return line


def load_largest_first(
    parts: Mapping[str, tuple[Path | None, Callable[[], Any]]],
) -> dict[str, Any]:
    """Load a runner's parts, the one with the most bytes of weight files first; returns them by
    name. `parts`: name -> (the folder of its weight files, None for none; its loader).

    Why this order: while a file is loaded into another dtype (the fp16 files into fp32 on the
    CPU), the pages of the file it reads are held beside its new tensors and every part loaded
    before it, until it is done. Largest first, the last and so highest of those moments holds
    only the smallest file beside the weights."""

    def size(folder: Path | None) -> int:
        return 0 if folder is None else sum(path.stat().st_size for path in weight_files([folder]))

    order = sorted(parts, key=lambda name: size(parts[name][0]), reverse=True)
    return {name: parts[name][1]() for name in order}


def load_placement(accelerations: Accelerations, device: torch.device) -> dict[str, str]:
    """`from_pretrained`'s arguments for a pipeline's models: straight onto `device` as they are
    read (runners/device.py, `load_onto`), except with CPU offload, whose hooks move the models
    from the CPU."""
    return {} if accelerations.cpu_offload else load_onto(device)
