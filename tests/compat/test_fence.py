"""The fence around library internals (compat/, docs/architecture.md "Library patches"): each
compat module was checked with the library version installed and has its own test here, and no
code outside compat/ imports a library's private module or name, or reads a private name off a
library module (`torch._dynamo`). What it cannot see (a private attribute of a library object,
a patch of a public module's class) the review does."""

from __future__ import annotations

import ast
from importlib import metadata
from pathlib import Path

import pytest

from settings import PROJECT_ROOT

COMPAT = PROJECT_ROOT / "compat"
MODULES = sorted(path for path in COMPAT.glob("*.py") if path.name != "__init__.py")
# Our own top-level packages and modules: their private names are ours to use.
FIRST_PARTY = {path.stem for path in PROJECT_ROOT.iterdir() if path.suffix == ".py"} | {
    path.name for path in PROJECT_ROOT.iterdir() if path.is_dir()
}
SKIPPED_DIRS = {"tests", "compat", "build", "__pycache__"}  # build/: setuptools' copies


def checked_with(module: Path) -> tuple[str, str]:
    """The module's CHECKED_WITH, read without importing it (some import torch)."""
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["CHECKED_WITH"]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"compat/{module.name} says no CHECKED_WITH = (library, version)")


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_each_compat_module_was_checked_with_the_installed_version(module: Path) -> None:
    library, checked = checked_with(module)
    installed = metadata.version(library).split("+")[0]  # torch's local label (+cpu)
    assert installed == checked, (
        f"compat/{module.name} was checked with {library} {checked}, but {installed} is "
        "installed: check again what it relies on (its docstring), then update CHECKED_WITH "
        "and docs/architecture.md"
    )


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_each_compat_module_has_its_test(module: Path) -> None:
    assert (PROJECT_ROOT / "tests" / "compat" / f"test_{module.name}").is_file()


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(tree: ast.Module) -> list[str]:
    """Private modules and names of libraries that `tree` imports, or reads off a library module
    it imported (`torch._dynamo`)."""
    found, libraries = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] not in FIRST_PARTY:
                    libraries.add(alias.asname or alias.name.split(".")[0])
                    found += [alias.name] if any(map(is_private, alias.name.split("."))) else []
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in FIRST_PARTY or node.module == "__future__":
                continue
            names = [alias.name for alias in node.names]
            if any(map(is_private, node.module.split("."))) or any(map(is_private, names)):
                found.append(f"from {node.module} import {', '.join(names)}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in libraries
            and is_private(node.attr)
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_code_outside_compat_uses_a_library_private_module_or_name() -> None:
    uses = {}
    for path in PROJECT_ROOT.rglob("*.py"):
        parts = path.relative_to(PROJECT_ROOT).parts
        if parts[0] in SKIPPED_DIRS or any(part.startswith(".") for part in parts):
            continue
        if found := private_uses(ast.parse(path.read_text())):
            uses[str(path.relative_to(PROJECT_ROOT))] = found
    assert not uses, f"library internals used outside compat/ (move them there, tested): {uses}"
