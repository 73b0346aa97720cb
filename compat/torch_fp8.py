"""Private call: torch's fp8 matrix multiply, `torch._scaled_mm` (benchmarks/fp8.py only).

The GPU-hour benchmark measures what fp8 linear layers would gain on cards with fp8 tensor cores;
the runners have no fp8 path. Nothing is patched.

What it relies on (torch==2.13.0, and 2.11 on the lent GPU machine): `torch._scaled_mm(a, b,
scale_a=, scale_b=, out_dtype=)`, `a` row-major and `b` column-major float8, one float32 scale
each, the product `(a * scale_a) @ (b * scale_b)` in `out_dtype`.

Supported ways checked: `torch.nn.functional.scaled_mm` (public in 2.13) takes scaling recipes
and runs another op (`torch._scaled_mm_v2`); moving to it means measuring the fp8 rows again on
a GPU.
"""

from __future__ import annotations

import torch

CHECKED_WITH = ("torch", "2.13.0")


def scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """`(a * scale_a) @ (b * scale_b)` in `out_dtype`: `a` row-major, `b` column-major fp8."""
    return torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)
