"""compat/torch_compile.py against the installed torch: `Module.compile` still keeps its compiled
call where `uncompile` clears it, and the module then calls its plain forward. No compilation
runs (nothing compiled is called)."""

from __future__ import annotations

import torch
from torch import nn

from compat.torch_compile import uncompile

PATCH = "compat/torch_compile.py"


def test_uncompile_undoes_module_compile() -> None:
    module = nn.Linear(2, 2)
    module.compile(backend="eager")
    assert getattr(module, "_compiled_call_impl", None) is not None, (
        f"{PATCH}: Module.compile no longer sets _compiled_call_impl"
    )
    uncompile(module)
    assert module._compiled_call_impl is None
    # The plain forward again: no Dynamo frame on the way (a compiled call would be traced).
    calls = []
    module.register_forward_hook(lambda *_: calls.append(torch.compiler.is_compiling()))
    module(torch.ones(1, 2))
    assert calls == [False], f"{PATCH}: the module still runs compiled after uncompile"
