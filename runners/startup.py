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

Also the peak host memory of the process so far (its resident set's high-water mark), beside
the weights' size on disk, so a load that copies weights through host memory shows.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from collections.abc import Iterator

import psutil
import torch

from gateway import metrics  # torch-free; the runners' series sit beside the Gateway's
from models.store import require_model
from models.weights import ReadAhead, read_ahead, weight_files
from runners.acceleration import Accelerations
from settings import Settings

logger = logging.getLogger(__name__)

_process_start_counted = False

PHASES = ("start", "read", "build", "to_device", "accelerations", "warmup", "other")


class StartupTimer:
    """Times `from_store` by phase: `with timer.phase("build"): ...`, then `ready()`."""

    def __init__(self, runner: str) -> None:
        self.runner = runner
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._entered = time.perf_counter()
        self.read: ReadAhead | None = None
        self.weight_bytes = 0
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
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        weights = self.weight_bytes
        line = (
            f"{self.runner} ready in {total:.1f} s: {', '.join(parts)}; "
            f"peak host memory {peak / 1e9:.2f} GB, weights on disk {weights / 1e9:.2f} GB"
        )
        logger.info(line)
        metrics.set_runner_start_seconds(self.runner, {**self.seconds, "total": total})
        return line


def load_placement(accelerations: Accelerations, device: torch.device) -> dict[str, str]:
    """`from_pretrained`'s arguments that put the weights on `device` as they are read: on CUDA
    each tensor goes from the file to the GPU in its dtype, with no copy of the model in host
    memory and no `.to()` after. Not with CPU offload (its hooks move the models from the CPU),
    and not on the CPU, where loading already lands there."""
    if device.type == "cuda" and not accelerations.cpu_offload:
        return {"device_map": device.type}
    return {}
