"""Private read: the device a diffusers pipeline's models run on (`_execution_device`).

Our samplers (runners/sd15_pipeline.py, runners/instantid_sampler.py) make their tensors (prompt
embeddings, latents) where the models will run. With model CPU offload the models rest on the
CPU until their offload hooks move them, so that is not where they run; diffusers' own pipelines
ask `_execution_device`, which reads the hooks. Nothing is patched.

What it relies on (diffusers==0.42.1): the `DiffusionPipeline._execution_device` property.

Supported ways checked: `DiffusionPipeline.device` (public) is where the modules are now, the CPU
under offload; no public name gives the execution device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

CHECKED_WITH = ("diffusers", "0.42.1")


def execution_device(pipe: DiffusionPipeline) -> torch.device:
    """Where `pipe`'s models run: their device, or with offload the one the hooks move them to."""
    return pipe._execution_device
