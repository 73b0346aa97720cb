"""The GPU hour's plumbing (docs/performance.md, "The GPU hour"): what `make gpu-bundle` derives
the bundle from, and the rehearsal: the device command, benchmarks/gpu_hour.sh, end to end on
the CPU at tiny scale in a fresh virtual environment built with pip --no-index, with the bundle
built as `make gpu-bundle` builds it (which downloads from the package index)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from requirements import gpu_bundle
from settings import PROJECT_ROOT


def test_the_device_list_has_versions_where_they_were_read():
    device = gpu_bundle.read_device_list()
    assert device["torch"] == "2.11.0"
    assert device["transformers"] == "5.17.0"
    assert device["pillow"] is None  # there, its version not read
    for missing in ("diffusers", "bentoml", "insightface", "pydantic"):
        assert missing not in device


def test_what_the_device_lacks_is_carried_with_what_it_requires():
    plan = gpu_bundle.plan(["diffusers"], device={})
    assert "diffusers" in plan.carried and "huggingface-hub" in plan.carried
    diffusers = plan.carried["diffusers"]
    assert diffusers.version == gpu_bundle.metadata.version("diffusers")  # the tested version
    assert plan.carried["huggingface-hub"].needed_by == {"diffusers"}
    assert not plan.provided


def test_a_device_package_is_used_unless_its_version_will_not_do():
    trusted = gpu_bundle.plan(["diffusers"], device={"huggingface-hub": None})
    assert "huggingface-hub" not in trusted.carried
    assert trusted.provided["huggingface-hub"].asks == [
        f"diffusers: {_requirement('diffusers', 'huggingface-hub')}"
    ]

    too_old = gpu_bundle.plan(["diffusers"], device={"huggingface-hub": "0.1.0"})
    carried = too_old.carried["huggingface-hub"]
    assert carried.version == gpu_bundle.metadata.version("huggingface-hub")
    assert carried.replaces_device.startswith("0.1.0 ")
    assert "huggingface-hub" not in too_old.provided


def test_insightface_travels_without_its_declared_requirements():
    # It declares opencv-python (the GUI build); pyproject.toml's headless one stands in.
    plan = gpu_bundle.plan(["insightface"], device={})
    assert set(plan.carried) == {"insightface"}


def _requirement(name: str, of: str) -> Requirement:
    return next(
        Requirement(line)
        for line in gpu_bundle.metadata.requires(name)
        if canonicalize_name(Requirement(line).name) == of
    )


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_rehearsal_runs_every_step_from_the_bundle_alone(tmp_path):
    # make gpu-bundle: the device's wheels, their CPython 3.11 twins and the device stand-ins.
    subprocess.run([sys.executable, "requirements/gpu_bundle.py"], cwd=PROJECT_ROOT, check=True)
    bundle = PROJECT_ROOT / ".gpu-bundle"
    assert gpu_bundle.mib(bundle) + gpu_bundle.tree_mib() < gpu_bundle.LIMIT_MIB
    pinned = {}
    for line in (bundle / "bundle.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            pinned[canonicalize_name(name)] = version
    wheels = list((bundle / "wheels").glob("*.whl"))
    found = {canonicalize_name(w.name.split("-")[0]): w.name.split("-")[1] for w in wheels}
    assert found == pinned and len(wheels) == len(pinned)  # one version of each
    for wheel in wheels:  # for the device's CPython 3.12 on x86-64 Linux
        tags = wheel.name.removesuffix(".whl").split("-")[-3:]
        assert tags[0] in {"py3", "py2.py3", "cp312"} or tags[1] == "abi3", wheel.name
        assert tags[2] == "any" or "x86_64" in tags[2], wheel.name
        assert zipfile.is_zipfile(wheel)

    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", "benchmarks/gpu_hour_rehearsal.sh"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "OUT": str(out)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((out / "gpu_hour.json").read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert {name: step["status"] for name, step in steps.items()} == dict.fromkeys(
        ("env", "a", "b", "c", "d"), "done"
    )
    assert "carried packages' requirements: all met" in steps["env"]["notes"]
    models = ["sd1.5-controlnet-depth", "instantid", "insta-depth", "flux-depth-pro"]
    assert [row["model"] for row in steps["a"]["rows"]] == models
    for row in steps["a"]["rows"]:
        assert row["outputs"] == "ok" and row["batch 1 s/image"] > 0 and row["best batch"] >= 1
    assert [row["model"] for row in steps["b"]["rows"]] == [models[0], models[1], models[3]]
    for row in steps["b"]["rows"]:
        for label in ("sdpa", "channels_last", "compile", "fp8", "fused_qkv"):
            assert row[label].split()[0].replace(".", "").isdigit(), (label, row[label])
    served = steps["c"]["rows"] + steps["d"]["rows"]
    assert [row["model"] for row in served] == models[:3]
    for row in served:
        assert row["v1 s/image"] > 0 and row["v2"] == "COMPLETED"
    assert (out / "gpu_hour.md").read_text().startswith("## GPU hour (tiny scale")
