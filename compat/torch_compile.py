"""Patch: undo `nn.Module.compile` on a module (benchmarks/gpu_hour.py only).

The GPU-hour benchmark measures each acceleration on the same loaded modules, then takes it off
again before the next: for torch.compile, the modules compiled in place as the runners compile
them (runners/acceleration.py, `apply_compile`). `uncompile` clears what `Module.compile` set, so
each module calls its plain forward again.

What it relies on (torch==2.13.0): `Module.compile` stores the compiled call in the module's
`_compiled_call_impl`, which `Module.__call__` uses when it is not None.

Supported ways checked: torch has no public undo of `Module.compile`; `torch.compile(module)`
returns a wrapper and leaves the module alone, but the runners compile their modules in place (a
pipeline keeps its own module objects). `torch.compiler.reset()` (public, which the benchmark
calls too) clears Dynamo's caches, not a module's compiled call.
"""

from __future__ import annotations

from torch import nn

CHECKED_WITH = ("torch", "2.13.0")


def uncompile(module: nn.Module) -> None:
    """`module` calls its plain forward again, as before `module.compile()`."""
    module._compiled_call_impl = None
