"""compat/diffusers_pipelines.py against the installed diffusers: pipelines still have the
private `_execution_device`, and it answers where their models are when nothing is offloaded."""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from compat.diffusers_pipelines import execution_device

PATCH = "compat/diffusers_pipelines.py"


class TinyModel(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)


class OneModel(DiffusionPipeline):
    def __init__(self, unet: TinyModel) -> None:
        super().__init__()
        self.register_modules(unet=unet)


def test_pipelines_still_tell_their_execution_device() -> None:
    assert isinstance(getattr(DiffusionPipeline, "_execution_device", None), property), (
        f"{PATCH}: diffusers' DiffusionPipeline has no _execution_device property any more"
    )
    assert execution_device(OneModel(TinyModel())) == torch.device("cpu")
