"""The GPU image (`make image-gpu`: container/Containerfile's gpu stages), as far as `make test`
checks it without downloading the CUDA wheels: its build shares the CPU image's base stage, user,
paths and command (test_image.py builds those), installs exactly what resolves from the index
to CUDA 13 wheels, and proves itself with the CPU image's smoke plus the CUDA checks.

The full GPU build (several GB of wheels, tens of minutes) is `make image-gpu`, run by hand before
a release; docs/deploy.md has its size and times.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import venv

import pytest

from settings import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "container"))
import install_packages  # container/install_packages.py: what the deps stages install
import smoke  # container/smoke.py: what the smoke stages run

CONTAINERFILE = (PROJECT_ROOT / "container" / "Containerfile").read_text()
CHECK_CUDA = PROJECT_ROOT / "requirements" / "check_cuda.py"
# A pip that reads a wheel's metadata with HTTP range requests (`--use-feature=fast-deps`) and,
# in a dry run, stops there: the index here publishes no separate metadata files (PEP 658), so
# an older pip, the venv's included, downloads every wheel it resolves, 3 GB of CUDA among them.
RESOLVING_PIP = "pip==26.3"


def stages() -> dict[str, tuple[str, str]]:
    """{stage name: (what it is FROM, its instructions)} of container/Containerfile."""
    found = {}
    for parent, name, body in re.findall(
        r"^FROM (\S+) AS (\S+)\n(.*?)(?=^FROM |\Z)", CONTAINERFILE, re.MULTILINE | re.DOTALL
    ):
        found[name] = (parent, body)
    return found


def instruction(body: str, keyword: str) -> list[str]:
    return re.findall(rf"^{keyword} (.*)$", body, re.MULTILINE)


def image_cuda() -> str:
    (version,) = set(re.findall(r"^ARG CUDA_VERSION=(\S+)$", CONTAINERFILE, re.MULTILINE))
    return version


# --- the Containerfile's gpu stages -------------------------------------------------------------


def test_the_gpu_stages_start_from_the_cpu_images_base_and_install_before_the_code():
    found = stages()
    assert found["deps"][0] == found["gpu-deps"][0] == "base"
    assert found["gpu-image"][0] == "gpu-deps" and found["gpu-smoke"][0] == "gpu-image"
    deps = found["gpu-deps"][1]
    assert "install_packages.py gpu" in deps and 'image-cuda "${CUDA_VERSION}"' in deps
    assert "COPY src/ " not in deps  # the code comes after the packages' layer
    assert instruction(found["gpu-image"][1], "COPY") == ["src/ /home/bentoml/bento/src/"]


def test_the_gpu_image_has_the_cpu_images_user_folder_command_and_no_weights():
    cpu, gpu = stages()["image"][1], stages()["gpu-image"][1]
    for keyword in ("USER", "WORKDIR", "CMD", "EXPOSE"):
        assert instruction(gpu, keyword) == instruction(cpu, keyword), keyword
    assert "models.build" in cpu and "models.build" not in gpu  # weights: from a volume


def test_the_gpu_smoke_runs_the_cuda_checks_and_the_images_command_as_its_user():
    smoke_stage = stages()["gpu-smoke"][1]
    assert instruction(smoke_stage, "USER")[-1] == "bentoml"
    run = smoke_stage.replace("\\\n", " ")
    assert 'check_cuda.py --image-cuda "${CUDA_VERSION}"' in run
    (entry,) = re.findall(r'smoke\.py --cuda "\$\{CUDA_VERSION\}" --\s+(.*)$', run, re.MULTILINE)
    (cmd,) = instruction(stages()["gpu-image"][1], "CMD")
    assert entry.split() == json.loads(cmd)


def test_the_gpu_tag_names_the_images_cuda_major():
    """`make image-gpu` tags <version>-cuda13; the k8s gpu overlays name that tag
    (test_image.py)."""
    out = subprocess.run(
        ["make", "-n", "image-gpu"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout
    (tag,) = re.findall(r"container/build\.sh gpu \S+:(\S+)", out)
    assert tag.endswith(f"-cuda{image_cuda().split('.')[0]}")


# --- what the gpu-deps stage installs -----------------------------------------------------------


def test_the_gpu_packages_replace_the_cpu_onnxruntime_and_keep_every_other_pin():
    cpu = install_packages.requirements("cpu", PROJECT_ROOT)
    gpu = install_packages.requirements("gpu", PROJECT_ROOT)
    (cpu_ort,) = [pin for pin in cpu if install_packages.name(pin) == "onnxruntime"]
    assert f"onnxruntime-gpu=={cpu_ort.split('==')[1]}" in gpu  # the same version
    assert [pin for pin in cpu if pin not in gpu] == [cpu_ort]
    assert "torch===2.13.0" in gpu and "torch==2.13.0" in cpu


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_gpu_packages_resolve_from_the_index_to_cuda_13_wheels(tmp_path):
    """What gpu-deps installs, resolved with this machine's pip settings as the build's pip sees
    them, reading each wheel's metadata without downloading it: PyPI's torch 2.13.0 (not the
    +cpu wheel on this machine's disk), onnxruntime-gpu and no CPU onnxruntime, and
    requirements/check_cuda.py passing on their metadata for the image's CUDA."""
    venv.create(tmp_path / "venv", with_pip=True)
    pip = [str(tmp_path / "venv" / "bin" / "python"), "-m", "pip"]
    quiet = ["--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", *quiet, RESOLVING_PIP], check=True, timeout=300)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(install_packages.requirements("gpu", PROJECT_ROOT)) + "\n")
    report = tmp_path / "report.json"
    result = subprocess.run(
        [*pip, "install", "--disable-pip-version-check", "--dry-run", "--ignore-installed",
         "--use-feature=fast-deps",
         "--report", str(report), "-r", str(requirements)],
        capture_output=True, text=True, timeout=800, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Downloading" not in result.stdout  # metadata read in place, no wheel fetched
    resolved = {
        install_packages.name(item["metadata"]["name"]): item["metadata"]
        for item in json.loads(report.read_text())["install"]
    }
    assert resolved["torch"]["version"] == "2.13.0"
    assert "onnxruntime-gpu" in resolved and "onnxruntime" not in resolved
    assert "nvidia-cudnn-cu13" in resolved  # CUDA's libraries come as wheels
    # check_cuda.py on the resolved metadata, laid out as pip would install it
    site = tmp_path / "site"
    for package in ("torch", "onnxruntime-gpu"):
        meta = resolved[package]
        dist_info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n"
            + "".join(f"Requires-Dist: {line}\n" for line in meta.get("requires_dist", []))
        )
    check = subprocess.run(
        [sys.executable, str(CHECK_CUDA), "--path", str(site), "--image-cuda", image_cuda()],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr


# --- the smoke's CUDA check ---------------------------------------------------------------------


def test_the_smoke_refuses_a_torch_or_onnxruntime_without_the_images_cuda(monkeypatch):
    import onnxruntime
    import torch

    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU build
    with pytest.raises(AssertionError, match=r"is built for CUDA None, not 13"):
        smoke.check_cuda_build("13.0")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(AssertionError, match=r"is built for CUDA 12\.8, not 13"):
        smoke.check_cuda_build("13.0")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(AssertionError, match="no CUDA"):
        smoke.check_cuda_build("13.0")
    # (What passes, the libraries and triton's launcher included: `make image-gpu`'s smoke.)


def test_the_smoke_takes_only_the_cuda_option_before_the_entry_command():
    with pytest.raises(SystemExit, match="unknown options"):
        smoke.main(["--gpu", "--", "bentoml", "serve"])
