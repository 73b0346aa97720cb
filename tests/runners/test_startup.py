"""runners/startup.py: a runner's time to ready by phase, as one log line and the
depthid_runner_start_seconds gauge; the weights go straight to a GPU when there is one."""

from __future__ import annotations

import logging

import torch
from prometheus_client import REGISTRY

from runners.acceleration import resolve_accelerations
from runners.startup import PHASES, StartupTimer, load_placement
from settings import Settings


def start_seconds(runner: str, phase: str) -> float | None:
    labels = {"runner": runner, "phase": phase}
    return REGISTRY.get_sample_value("depthid_runner_start_seconds", labels)


def test_one_line_names_every_phase_and_the_gauge_has_each(tiny_settings, caplog):
    timer = StartupTimer("sd15_depth")
    timer.read_weights(tiny_settings, ("sd15-base", "depth-estimator"))
    with timer.phase("build"):
        pass
    with caplog.at_level(logging.INFO, logger="runners.startup"):
        line = timer.ready()
    assert line in caplog.text
    assert line.startswith("sd15_depth ready in ")
    for phase in PHASES:
        assert f"{phase} " in line
        assert start_seconds("sd15_depth", phase) is not None
    assert "peak host memory" in line and timer.weight_bytes > 0
    total = start_seconds("sd15_depth", "total")
    assert total == sum(start_seconds("sd15_depth", phase) for phase in PHASES)


def test_weights_load_straight_onto_a_gpu_unless_offloaded():
    def placement(device: str, **fields: str) -> dict:
        settings = Settings(profile="full", **fields)
        accelerations = resolve_accelerations(settings, torch.device(device), torch.float16)
        return load_placement(accelerations, torch.device(device))

    assert placement("cuda") == {"device_map": "cuda"}
    assert placement("cuda", cpu_offload="on") == {}
    assert placement("cpu") == {}
