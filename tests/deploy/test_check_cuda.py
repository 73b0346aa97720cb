"""requirements/check_cuda.py, the GPU image's build check, against wheel metadata laid out as
pip installs it: the Requires-Dist lines and build info below are copied from the real wheels
(onnxruntime-gpu 1.31.1 and torch 2.13.0 from PyPI; torch 2.13.0+cu128's CUDA 12.8 pins as
PyTorch's index lists them), so a match passes and a mismatch (CUDA 13 wheels checked against
CUDA 12.8) fails the build. `make install` takes the GPU path on a CUDA host only."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from settings import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "requirements" / "check_cuda.py"

ORT_GPU_1_31_1 = """\
Metadata-Version: 2.4
Name: onnxruntime-gpu
Version: 1.31.1
Requires-Dist: flatbuffers
Requires-Dist: numpy>=1.21.6
Requires-Dist: packaging
Requires-Dist: protobuf>=4.25.8
Provides-Extra: symbolic
Requires-Dist: sympy; extra == "symbolic"
Provides-Extra: quantization
Requires-Dist: ml_dtypes; extra == "quantization"
Provides-Extra: cuda
Requires-Dist: nvidia-cuda-nvrtc~=13.0; extra == "cuda"
Requires-Dist: nvidia-cuda-runtime~=13.0; extra == "cuda"
Requires-Dist: nvidia-cufft~=12.0; extra == "cuda"
Requires-Dist: nvidia-curand~=10.0; extra == "cuda"
Provides-Extra: cudnn
Requires-Dist: nvidia-cudnn-cu13~=9.0; extra == "cudnn"
"""
ORT_BUILD_INFO = "package_name = 'onnxruntime-gpu'\n__version__ = '1.31.1'\ncuda_version = '13.0'\n"

TORCH_CU130 = """\
Metadata-Version: 2.4
Name: torch
Version: 2.13.0
Requires-Dist: filelock
Requires-Dist: cuda-toolkit[{extras}]==13.0.3; platform_system == "Linux"
Requires-Dist: cuda-bindings<14,>=13.0.3; platform_system == "Linux" and python_version < "3.15"
Requires-Dist: nvidia-cudnn-cu13==9.20.0.48; platform_system == "Linux"
Requires-Dist: nvidia-nccl-cu13==2.29.7; platform_system == "Linux"
""".format(extras="cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx")
TORCH_CU128 = """\
Metadata-Version: 2.4
Name: torch
Version: 2.13.0+cu128
Requires-Dist: filelock
Requires-Dist: nvidia-cuda-runtime-cu12==12.8.90; platform_system == "Linux"
Requires-Dist: nvidia-cudnn-cu12==9.10.2.21; platform_system == "Linux"
"""
TORCH_CPU = "Metadata-Version: 2.4\nName: torch\nVersion: 2.13.0+cpu\nRequires-Dist: filelock\n"


def torch_version_py(cuda: str | None) -> str:
    value = f"'{cuda}'" if cuda else "None"
    return f"__version__ = '2.13.0'\ncuda: Optional[str] = {value}\n"


def site(root: Path, torch_meta: str, torch_cuda: str | None, cpu_ort: bool = False) -> Path:
    """A site-packages folder holding torch and onnxruntime-gpu as pip lays them out."""
    packages = {
        "onnxruntime_gpu-1.31.1.dist-info/METADATA": ORT_GPU_1_31_1,
        "onnxruntime/capi/build_and_package_info.py": ORT_BUILD_INFO,
        "torch-2.13.0.dist-info/METADATA": torch_meta,
        "torch/version.py": torch_version_py(torch_cuda),
    }
    if cpu_ort:
        packages["onnxruntime-1.31.1.dist-info/METADATA"] = (
            "Metadata-Version: 2.4\nName: onnxruntime\nVersion: 1.31.1\n"
        )
    for relative, text in packages.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


def check(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--path", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cuda_13_wheels_on_the_cuda_13_image_pass(tmp_path):
    result = check(site(tmp_path, TORCH_CU130, "13.0"), "--image-cuda", "13.0.2")
    assert result.returncode == 0, result.stderr
    assert "CUDA 13.0.2" in result.stdout


def test_cuda_13_onnxruntime_on_a_cuda_12_8_image_fails_the_build(tmp_path):
    """The issue's image: CUDA 12.8 base, onnxruntime-gpu 1.31.1 (CUDA 13)."""
    result = check(site(tmp_path, TORCH_CU128, "12.8"), "--image-cuda", "12.8.1")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    ort = [line for line in lines if "onnxruntime-gpu 1.31.1" in line]
    assert ort and all("needs CUDA 13, not the image's CUDA 12.8.1" in line for line in ort)
    assert any("nvidia-cuda-runtime~=13.0" in line for line in ort)
    assert any("cuda_version = '13.0'" in line for line in ort)
    assert not [line for line in lines if "torch" in line]  # torch +cu128 matches the image


def test_torch_of_another_major_than_the_image_fails(tmp_path):
    result = check(site(tmp_path, TORCH_CU130, "13.0"), "--image-cuda", "12.8.1")
    assert result.returncode == 1
    torch_lines = [line for line in result.stderr.splitlines() if "torch 2.13.0 " in line]
    assert any("cuda-toolkit" in line and "needs CUDA 13" in line for line in torch_lines)
    assert any("torch/version.py" in line for line in torch_lines)  # torch.version.cuda


def test_without_an_image_version_torch_and_onnxruntime_must_agree(tmp_path):
    assert check(site(tmp_path / "same", TORCH_CU130, "13.0")).returncode == 0
    result = check(site(tmp_path / "differ", TORCH_CU128, "12.8"))
    assert result.returncode == 1
    assert "needs CUDA 13, not CUDA 12" in result.stderr


def test_a_cpu_torch_or_a_leftover_cpu_onnxruntime_fails(tmp_path):
    result = check(site(tmp_path / "cpu", TORCH_CPU, None), "--image-cuda", "13.0.2")
    assert result.returncode == 1
    assert "torch 2.13.0+cpu declares no CUDA: it is not a CUDA build" in result.stderr
    both = check(site(tmp_path / "both", TORCH_CU130, "13.0", cpu_ort=True), "--image-cuda", "13")
    assert both.returncode == 1
    assert "onnxruntime (CPU) is installed beside onnxruntime-gpu" in both.stderr


def test_requirements_gpu_txt_pins_pypis_torch_exactly_from_the_package_index():
    """The same torch as pyproject.toml's, without a local label (not +cpu, not +cuXXX): PyPI's
    build, which is CUDA 13.0's; no other index (tests/deploy/test_image_gpu.py resolves it)."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    (cpu,) = [dep.split("==")[1] for dep in project["dependencies"] if dep.startswith("torch==")]
    gpu_txt = (PROJECT_ROOT / "requirements" / "gpu.txt").read_text()
    assert re.findall(r"^torch(\S+)$", gpu_txt, re.MULTILINE) == [f"==={cpu}"]
    assert not re.findall(r"^-", gpu_txt, re.MULTILINE)  # no index or option of its own
    assert SpecifierSet(f"==={cpu}").contains(cpu)
    assert not SpecifierSet(f"==={cpu}").contains(f"{cpu}+cpu")


def make_install_commands(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        ["make", "-n", "-B", "install", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


@pytest.fixture
def no_nvidia_smi_env() -> dict[str, str]:
    env = {**os.environ}
    env.pop("GPU", None)
    return env


def test_make_install_takes_the_gpu_image_pins_on_a_cuda_host(tmp_path, no_nvidia_smi_env):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    env = {**no_nvidia_smi_env, "PATH": f"{tmp_path}:{no_nvidia_smi_env['PATH']}"}
    for commands in (make_install_commands(env), make_install_commands(no_nvidia_smi_env, "GPU=1")):
        assert '-r requirements/gpu.txt -e ".[test]"' in commands
        assert "pip uninstall --yes --quiet onnxruntime" in commands
        assert "onnxruntime-gpu==" in commands
        assert "requirements/check_cuda.py" in commands
        assert '"torch==2.13.0"' not in commands


def test_make_install_keeps_the_cpu_torch_elsewhere(no_nvidia_smi_env):
    if shutil.which("nvidia-smi"):
        commands = make_install_commands(no_nvidia_smi_env, "GPU=0")
    else:
        commands = make_install_commands(no_nvidia_smi_env)
    assert '"torch==2.13.0" -e ".[test]"' in commands
    assert "requirements/gpu.txt" not in commands
    assert "check_cuda" not in commands
