"""compat/torch_fp8.py against the installed torch: `torch._scaled_mm` is still the scaled fp8
product, on the CPU's reference kernel."""

from __future__ import annotations

import torch

from compat.torch_fp8 import scaled_mm

PATCH = "compat/torch_fp8.py"


def test_scaled_mm_is_the_scaled_product() -> None:
    assert hasattr(torch, "_scaled_mm"), f"{PATCH}: torch has no _scaled_mm any more"
    a = torch.full((16, 16), 2.0).to(torch.float8_e4m3fn)
    b = torch.eye(16).to(torch.float8_e4m3fn).t()  # column-major
    out = scaled_mm(a, b, torch.tensor(0.5), torch.tensor(3.0), torch.float32)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.full((16, 16), 3.0)), f"{PATCH}: (2 * 0.5) @ (I * 3) is {out}"
