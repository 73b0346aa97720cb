"""The contract's 12 scheduler names, mapped to diffusers schedulers.

A scheduler holds per-run state (timesteps, step index), so every request gets a fresh one built
from the pipeline's base config: one request's scheduler never leaks into another's.
"""

from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

# name -> (scheduler class, config overrides). The names follow the A1111 convention the hosted
# endpoint uses; "Karras" variants switch on Karras sigmas.
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "UniPC": (UniPCMultistepScheduler, {}),
    "Euler a": (EulerAncestralDiscreteScheduler, {}),
    "DDIM": (DDIMScheduler, {}),
    "DPM Multi": (DPMSolverMultistepScheduler, {}),
    "DPM Single": (DPMSolverSinglestepScheduler, {}),
    "Euler": (EulerDiscreteScheduler, {}),
    "Heun": (HeunDiscreteScheduler, {}),
    "DPM2 a Karras": (KDPM2AncestralDiscreteScheduler, {"use_karras_sigmas": True}),
    "DPM2 Karras": (KDPM2DiscreteScheduler, {"use_karras_sigmas": True}),
    "LMS": (LMSDiscreteScheduler, {}),
    "PNDM": (PNDMScheduler, {}),
    "DDPM": (DDPMScheduler, {}),
}


def make_scheduler(name: str, base_config: Any) -> SchedulerMixin:
    """A new scheduler instance of kind `name`, sharing the model's noise schedule."""
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(base_config, **overrides)
