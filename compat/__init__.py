"""Every place DepthID relies on a library's internals: the patches of what a pinned library
does, and the private names it reads. One module per use; each says what it relies on, why, and
which supported way was checked first. Each has a fast test in tests/compat/ that fails, naming
the module, when the pinned library changes what it relies on (docs/architecture.md, "Library
patches").

This file imports none of them: the Gateway imports the BentoML and uvicorn ones, and must never
import torch (tests/gateway/test_no_torch_in_gateway.py).
"""
