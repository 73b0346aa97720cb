"""`make gpu-bundle`: the wheels the lent GPU machine lacks, derived, for benchmarks/gpu_hour.sh.

    python requirements/gpu_bundle.py          # writes .gpu-bundle/ (and the rehearsal's)
    python requirements/gpu_bundle.py --plan   # prints what it would carry, downloads nothing

That machine (requirements/device.txt) has Python 3.12, torch, transformers and most of the
scientific stack, reaches no package registry, and takes the working tree plus at most 64 MiB
of carried files. What DepthID needs there is derived, not listed by hand:

1. the closure of pyproject.toml's dependencies, read from the metadata of the packages
   installed in this `.venv` (the versions the test suite runs on), with the device's markers
   (CPython 3.12, Linux x86-64); insightface's own requirements are not followed (the Makefile
   installs it with --no-deps; see pyproject.toml);
2. minus every package the device has, unless a package we carry asks for a version of it that
   the device's (where requirements/device.txt gives one) does not meet: then ours is carried;
3. each of the rest downloaded as a wheel for CPython 3.12 manylinux x86-64, at the version
   installed here; those published only as source (insightface) are built into a wheel here.

The output, `.gpu-bundle/` (git-ignored; the device command carries it):
  wheels/        the wheels, one version of each
  bundle.txt     name==version per wheel, with which package needs it
  device-used.txt  the device's packages DepthID uses, and what was checked of each

It also writes `.gpu-hour-rehearsal/` (git-ignored, never carried) for this machine's Python
(3.11): `bundle/`, the same carried packages at the same versions, and `device/`, the
device-provided packages of the closure at the device's versions where a wheel of that version
can be had (else this .venv's, said so) with what they require, so `make gpu-hour-rehearsal`
builds a fresh virtual environment from `device/` with `pip --no-index` and runs
benchmarks/gpu_hour.sh in it with `bundle/` as it runs on the device.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DEVICE_LIST = ROOT / "requirements" / "device.txt"
BUNDLE = ROOT / ".gpu-bundle"
REHEARSAL = ROOT / ".gpu-hour-rehearsal"
# The device takes the working tree and its carried files up to 64 MiB a call: the bundle and
# the tree stay under 60, for the room a results folder or a forgotten file may take.
LIMIT_MIB = 60

# The device's Python, for environment markers and wheel tags (requirements/device.txt).
DEVICE_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
# pip matches a platform tag exactly, so every manylinux tag the device's glibc (Ubuntu 24.04's
# 2.39) accepts is named.
DEVICE_PLATFORMS = [
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux2014_x86_64",
    *(f"manylinux_2_{minor}_x86_64" for minor in range(5, 40)),
]
# Installed without following their requirements (see pyproject.toml's note on insightface).
NO_DEPS = {"insightface"}
# Carried even though the device has them, its version not read: a wrong guess would cost a GPU
# run, carrying costs little. typing-extensions (pure Python, 0.1 MB, only ever added to):
# pydantic 2.14 imports names of typing-extensions 4.16, and an older one fails at import.
CARRY_ANYWAY = {"typing-extensions"}
# Published only as a source archive: built into a (pure Python) wheel here.
SOURCE_ONLY = {"insightface"}
# The rehearsal's stand-in for the device's torch (a CUDA build, with no CPU twin on this machine):
# torch==2.13.0 is the CPU build on disk (an unpinned resolve would fetch a CUDA one). The
# device's torchvision has none either (PyPI's are CUDA builds, whose operators do not load
# beside a CPU torch), and nothing DepthID runs needs it: the rehearsal goes without.
REHEARSAL_STAND_INS = {"torch": "torch==2.13.0"}


@dataclass
class Carried:
    version: str
    needed_by: set[str] = field(default_factory=set)
    # Set when the device has the package but not at a version something here asks for (or
    # CARRY_ANYWAY names it): what of the device's it shadows, and why.
    replaces_device: str | None = None


@dataclass
class Provided:
    device_version: str | None
    asks: list[str] = field(default_factory=list)  # "diffusers: huggingface-hub>=0.34"


@dataclass
class Plan:
    carried: dict[str, Carried]
    provided: dict[str, Provided]


def read_device_list(path: Path = DEVICE_LIST) -> dict[str, str | None]:
    """requirements/device.txt: canonical name -> version (None where it was not read)."""
    packages: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        packages[canonicalize_name(name)] = version or None
    return packages


def project_roots(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """pyproject.toml's runtime dependencies by name (their pins are this machine's versions,
    not needs: the device's torch 2.11 serves where torch==2.13.0 is pinned), and insightface,
    which the Makefile installs beside them."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return [canonicalize_name(Requirement(line).name) for line in dependencies] + ["insightface"]


def _requirements(name: str, extras: set[str]) -> list[Requirement]:
    """What the installed `name` requires on the device, with `extras` asked for."""
    found = []
    for line in metadata.requires(name) or []:
        requirement = Requirement(line)
        if requirement.marker is None:
            found.append(requirement)
            continue
        for extra in extras or {""}:
            if requirement.marker.evaluate({**DEVICE_MARKERS, "extra": extra}):
                found.append(requirement)
                break
    return found


def plan(roots: list[str], device: dict[str, str | None]) -> Plan:
    """What to carry and what the device provides (see the module's docstring)."""
    carried: dict[str, Carried] = {}
    provided: dict[str, Provided] = {}
    # (name, extras, who asks, the requirement), breadth first from pyproject's own list.
    queue: list[tuple[str, set[str], str, Requirement | None]] = [
        (root, set(), "pyproject.toml", None) for root in roots
    ]
    while queue:
        name, extras, asker, requirement = queue.pop(0)
        if name in device and name not in carried and name not in CARRY_ANYWAY:
            version = device[name]
            check = provided.setdefault(name, Provided(version))
            if requirement is not None:
                check.asks.append(f"{asker}: {requirement}")
            met = (
                version is None
                or requirement is None
                or requirement.specifier.contains(version, prereleases=True)
            )
            if met:
                continue
            # The device's version does not do: ours travels and shadows it.
            del provided[name]
            carried[name] = Carried(
                _installed_version(name), replaces_device=f"{version} ({requirement})"
            )
        elif name in carried:
            carried[name].needed_by.add(asker)
            continue
        else:
            carried[name] = Carried(_installed_version(name))
            if name in device:
                unread = device[name] or "version not read"
                carried[name].replaces_device = f"{unread}: carried anyway (CARRY_ANYWAY)"
        carried[name].needed_by.add(asker)
        if name in NO_DEPS:
            continue
        for dependency in _requirements(name, extras):
            queue.append(
                (canonicalize_name(dependency.name), set(dependency.extras), name, dependency)
            )
    return Plan(carried, provided)


def _installed_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        sys.exit(f"gpu-bundle: {name} is needed but not installed here: run `make install` first")


# --- writing ----------------------------------------------------------------------------------


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    done = subprocess.run(command, text=True, capture_output=True)
    if done.returncode != 0:
        sys.exit(f"gpu-bundle: {' '.join(command)} failed:\n{done.stdout}{done.stderr}")


def download_device_wheels(carried: dict[str, Carried], folder: Path) -> None:
    """Every carried package as a CPython 3.12 manylinux x86-64 wheel (or pure Python)."""
    binary = [f"{name}=={c.version}" for name, c in carried.items() if name not in SOURCE_ONLY]
    platforms = [arg for tag in DEVICE_PLATFORMS for arg in ("--platform", tag)]
    _pip(
        "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
        "--implementation", "cp", "--abi", "cp312", "--abi", "abi3", "--abi", "none",
        *platforms, "--dest", str(folder), *binary,
    )  # fmt: skip
    source = [f"{name}=={c.version}" for name, c in carried.items() if name in SOURCE_ONLY]
    if source:
        _pip("wheel", "--no-deps", "--wheel-dir", str(folder), *source)


def rehearsal_device_requirements(
    found: Plan, available: dict[str, str]
) -> tuple[list[str], list[str]]:
    """What stands in for the device's packages in the rehearsal: the device-provided packages
    of the closure at the device's versions where `available` says a wheel of that version can
    be had here, else this .venv's; and notes on where it differs from the device."""
    lines, notes = [], []
    for name, check in found.provided.items():
        if name in REHEARSAL_STAND_INS:
            stand_in = REHEARSAL_STAND_INS[name]
            lines.append(stand_in)
            notes.append(f"{name}: the device has {check.device_version}; {stand_in} here")
            continue
        installed = _installed_version(name)
        if check.device_version is None:
            lines.append(f"{name}=={installed}")
            notes.append(f"{name}: the device's version was not read; this .venv's {installed}")
        elif name in available:
            lines.append(f"{name}=={check.device_version}")
        else:
            lines.append(f"{name}=={installed}")
            notes.append(f"{name}: no wheel of the device's {check.device_version}; {installed}")
    return lines, notes


def _wheel_exists(requirement: str, folder: Path) -> bool:
    """Whether pip can fetch a wheel of exactly `requirement` for this machine's Python."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    command += ["--only-binary=:all:", "--dest", str(folder), requirement]
    return subprocess.run(command, capture_output=True).returncode == 0


def write_rehearsal(found: Plan, folder: Path) -> list[str]:
    """The rehearsal's two folders of wheels for this machine's Python; returns its notes.

    device/  what stands in for the device's packages (requirements.txt), with everything they
             require, for a fresh virtual environment (`pip install --no-index`)
    bundle/  the bundle's twin: the same packages at the same versions as .gpu-bundle/wheels,
             which benchmarks/gpu_hour.sh installs with --no-deps as it does on the device
    """
    shutil.rmtree(folder, ignore_errors=True)
    device, bundle = folder / "device", folder / "bundle"
    device.mkdir(parents=True)
    bundle.mkdir()
    available = {
        name: check.device_version
        for name, check in found.provided.items()
        if check.device_version and name not in REHEARSAL_STAND_INS
        if _wheel_exists(f"{name}=={check.device_version}", device)
    }
    lines, notes = rehearsal_device_requirements(found, available)
    (device / "requirements.txt").write_text(
        "# Written by requirements/gpu_bundle.py: the device's packages as this machine has them\n"
        + "".join(f"# {note}\n" for note in notes)
        + "\n".join(lines)
        + "\n"
    )
    _pip("download", "--only-binary=:all:", "--dest", str(device), *lines)
    pins = [f"{name}=={c.version}" for name, c in found.carried.items()]
    binary = [pin for pin in pins if canonicalize_name(pin.split("==")[0]) not in SOURCE_ONLY]
    _pip("download", "--no-deps", "--only-binary=:all:", "--dest", str(bundle), *binary)
    _pip("wheel", "--no-deps", "--wheel-dir", str(bundle), *sorted(set(pins) - set(binary)))
    return notes


def write_bundle(found: Plan, folder: Path) -> None:
    wheels = folder / "wheels"
    shutil.rmtree(folder, ignore_errors=True)
    wheels.mkdir(parents=True)
    download_device_wheels(found.carried, wheels)
    lines = ["# Written by requirements/gpu_bundle.py (make gpu-bundle): what the device lacks."]
    for name, c in sorted(found.carried.items()):
        why = f"needed by {', '.join(sorted(c.needed_by))}"
        if c.replaces_device:
            why += f"; shadows the device's {c.replaces_device}"
        lines.append(f"{name}=={c.version}  # {why}")
    (folder / "bundle.txt").write_text("\n".join(lines) + "\n")
    used = [
        "# The device's packages DepthID uses (requirements/device.txt), and what asks of them."
    ]
    for name, check in sorted(found.provided.items()):
        version = check.device_version or "version not read"
        asks = "; ".join(check.asks) or "pyproject.toml"
        used.append(f"{name} ({version})  # {asks}")
    (folder / "device-used.txt").write_text("\n".join(used) + "\n")


def mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def tree_mib(root: Path = ROOT) -> float:
    """What the device tool copies of the working tree: tracked files and untracked ones git
    does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    files = [root / name.decode() for name in listed if name]
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def describe(found: Plan) -> str:
    lines = [f"gpu-bundle: {len(found.carried)} packages to carry, {len(found.provided)} from "
             "the device"]  # fmt: skip
    for name, c in sorted(found.carried.items()):
        note = f" (shadows the device's {c.replaces_device})" if c.replaces_device else ""
        lines.append(f"  carry {name}=={c.version}{note}")
    unread = sorted(name for name, p in found.provided.items() if p.device_version is None)
    lines.append(f"  from the device, version not read (assumed to do): {', '.join(unread)}")
    return "\n".join(lines)


_WHEEL_NAME = re.compile(r"^([^-]+)-([^-]+)-")


def wheel_versions(folder: Path) -> dict[str, Version]:
    """name -> version of each wheel in `folder` (for the checks)."""
    found = {}
    for wheel in folder.glob("*.whl"):
        match = _WHEEL_NAME.match(wheel.name)
        if match:
            found[canonicalize_name(match.group(1))] = Version(match.group(2))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan", action="store_true", help="print the plan, download nothing")
    parser.add_argument("--no-rehearsal", dest="rehearsal", action="store_false")
    args = parser.parse_args(argv)
    found = plan(project_roots(), read_device_list())
    print(describe(found), flush=True)
    if args.plan:
        return 0
    write_bundle(found, BUNDLE)
    bundle, tree = mib(BUNDLE), tree_mib()
    print(
        f"gpu-bundle: {BUNDLE.relative_to(ROOT)}/ {bundle:.1f} MiB + the working tree "
        f"{tree:.1f} MiB = {bundle + tree:.1f} MiB (limit {LIMIT_MIB} MiB)",
        flush=True,
    )
    if bundle + tree >= LIMIT_MIB:
        sys.exit("gpu-bundle: too large to travel with the tree; carry less")
    if args.rehearsal:
        for note in write_rehearsal(found, REHEARSAL):
            print(f"gpu-bundle: rehearsal: {note}", flush=True)
        print(f"gpu-bundle: {REHEARSAL.relative_to(ROOT)}/ {mib(REHEARSAL):.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
