"""The Gateway process never imports torch (nor diffusers, transformers): every module of
`gateway/` and `protocol/` is imported, and so is `service.py` with the runner service classes
the Gateway holds handles to (they import their pipelines only inside the runner's process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from settings import PROJECT_ROOT

HEAVY = ("torch", "diffusers", "transformers")

# Import every module of the given packages (found on disk, so a new module is covered the day
# it is added), then print what was imported and which heavy libraries came with it.
WALK = """
import importlib, json, pkgutil, sys
imported = []
for name in {packages!r}:
    package = importlib.import_module(name)
    imported.append(name)
    for module in pkgutil.walk_packages(getattr(package, "__path__", []), name + "."):
        importlib.import_module(module.name)
        imported.append(module.name)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print(json.dumps({{"imported": imported, "heavy": heavy}}))
"""


@pytest.mark.parametrize(
    ("packages", "at_least"),
    [(["gateway"], 30), (["protocol"], 2), (["service"], 1)],
    ids=["gateway", "protocol", "service"],
)
def test_a_gateway_module_never_imports_torch(packages: list[str], at_least: int) -> None:
    code = WALK.format(packages=packages, heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["imported"]) >= at_least, report["imported"]
    assert report["heavy"] == [], f"imported by {packages}: {report['heavy'][:5]}"
