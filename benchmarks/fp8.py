"""fp8 linear layers for the GPU hour's acceleration rows (benchmarks/gpu_hour.py): what the
denoisers' matrix multiplies gain on a card with fp8 tensor cores (compute capability 8.9+:
Ada, Hopper). Not a serving path: the runners have no fp8 setting, this measures whether one
would pay.

Each `nn.Linear` of a module whose sizes the fp8 kernels take (multiples of 16) becomes an
`Fp8Linear`: its weight stored as float8 e4m3 with one scale per tensor, each input quantised
the same way as it comes, and the product done by PyTorch's fp8 GEMM (`torch._scaled_mm`,
compat/torch_fp8.py) with the output in the module's dtype. Convolutions stay as they are. The
swap can be undone (`Fp8Swap.undo`), so the next row measures the module as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from compat.torch_fp8 import scaled_mm

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
# The fp8 GEMM wants both matrix sizes it reduces over and writes in multiples of 16.
ALIGN = 16


def fp8_available(device: torch.device) -> str | None:
    """None when `device` runs fp8 matrix multiplies, else why not."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            return f"compute capability {major}.{minor} has no fp8 tensor cores (8.9+)"
    try:  # the CPU has a reference kernel in recent PyTorch; ask rather than guess
        one = torch.ones(ALIGN, ALIGN, device=device).to(FP8)
        scale = torch.ones((), device=device)
        scaled_mm(one, one.t(), scale, scale, torch.float32)
    except (RuntimeError, NotImplementedError) as error:
        return f"torch._scaled_mm does not run here: {str(error).splitlines()[0]}"
    return None


def _quantise(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`tensor` as fp8 and the float32 scale that gives it back (tensor ~ fp8 * scale)."""
    amax = tensor.abs().amax().float().clamp(min=1e-12)
    scale = amax / FP8_MAX
    return (tensor.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Fp8Linear(nn.Module):
    """A linear layer whose weight is fp8 and whose product runs on the fp8 tensor cores."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight, scale = _quantise(linear.weight.detach())
        # _scaled_mm takes its second matrix column-major: the transpose of a row-major weight.
        self.register_buffer("weight_t", weight.t(), persistent=False)
        self.register_buffer("weight_scale", scale, persistent=False)
        self.bias = linear.bias
        self.out_features = linear.out_features
        self.out_dtype = linear.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        rows_fp8, rows_scale = _quantise(rows)
        out = scaled_mm(rows_fp8, self.weight_t, rows_scale, self.weight_scale, self.out_dtype)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def _fits(linear: nn.Linear) -> bool:
    return linear.in_features % ALIGN == 0 and linear.out_features % ALIGN == 0


@dataclass
class Fp8Swap:
    """The linear layers swapped, to put back."""

    swapped: list[tuple[nn.Module, str, nn.Linear]] = field(default_factory=list)

    def undo(self) -> None:
        for parent, name, linear in self.swapped:
            setattr(parent, name, linear)
        self.swapped.clear()


def apply_fp8(modules: Mapping[str, nn.Module]) -> tuple[Fp8Swap, str]:
    """Swap every fitting linear layer of `modules` for an Fp8Linear; returns the swap (to
    undo) and a note naming how many layers each module got."""
    swap, notes = Fp8Swap(), []
    for module_name, module in modules.items():
        count = 0
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and _fits(child):
                    setattr(parent, name, Fp8Linear(child))
                    swap.swapped.append((parent, name, child))
                    count += 1
        notes.append(f"{module_name} ({count} linear)")
    return swap, f"fp8[{', '.join(notes)}]"
