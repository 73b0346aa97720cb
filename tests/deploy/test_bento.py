"""The Bento (bentofile.yaml + Dockerfile.template): `bentoml build`, as `make bento` runs it,
works with no network, into a temporary BENTOML_HOME; the Dockerfile it generates starts from
the CUDA base our torch wheel is built for, installs our system packages, Python and the CUDA
torch before the project's pins, and checks the CUDA wheels against the base; the Bento holds
the code, the tiny builders and the payloads, and no tests, caches or weights."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from settings import PROJECT_ROOT

pytestmark = pytest.mark.slow  # `bentoml build`, once for the module

BENTOML = str(Path(sys.executable).parent / "bentoml")
# Any HTTP(S) request of the build goes to a port where nothing listens, and fails.
NO_NETWORK = {
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "HF_HUB_OFFLINE": "1",
    "PIP_NO_INDEX": "1",
    "UV_OFFLINE": "1",
}
WEIGHT_SUFFIXES = {".safetensors", ".onnx", ".bin", ".pt", ".pth", ".ckpt", ".gguf"}
MAX_BENTO_BYTES = 5_000_000  # code and a few small pictures; weights would be gigabytes


@pytest.fixture(scope="module")
def bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a Bento built from the working tree into a temporary Bento store."""
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {**os.environ, **NO_NETWORK, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    result = subprocess.run(
        [BENTOML, "build", "--output", "tag"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    name, version = re.search(r"__tag__:(\S+):(\S+)", result.stdout).groups()
    return home / "bentos" / name / version


@pytest.fixture(scope="module")
def dockerfile(bento: Path) -> str:
    return (bento / "env" / "docker" / "Dockerfile").read_text()


def bentofile() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "bentofile.yaml").read_text())


def torch_pins() -> tuple[str, str]:
    """torch's pin in pyproject.toml (the CPU machines) and in requirements/gpu.txt (CUDA)."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    (cpu,) = [dep.split("==")[1] for dep in project["dependencies"] if dep.startswith("torch==")]
    gpu_txt = (PROJECT_ROOT / "requirements" / "gpu.txt").read_text()
    (gpu,) = re.findall(r"^torch==(\S+)$", gpu_txt, re.MULTILINE)
    return cpu, gpu


def test_the_bento_serves_the_gateway_and_its_runners(bento):
    spec = yaml.safe_load((bento / "bento.yaml").read_text())
    assert spec["service"] == bentofile()["service"] == "service:Gateway"
    assert {s["name"] for s in spec["services"]} == {
        "gateway",
        "sd15_depth",
        "flux_depth",
        "instantid",
    }


def test_the_image_starts_from_the_cuda_base_of_the_torch_wheel(dockerfile):
    _, gpu_torch = torch_pins()
    cuda = re.fullmatch(r"[\d.]+\+cu(\d+)(\d)", gpu_torch)  # 2.13.0+cu130 -> CUDA 13.0
    assert cuda, gpu_torch
    base = re.search(r"^FROM (\S+)", dockerfile, re.MULTILINE).group(1)
    assert base == bentofile()["docker"]["base_image"]
    # fully qualified, as podman needs it
    assert base.startswith(f"docker.io/nvidia/cuda:{cuda.group(1)}.{cuda.group(2)}."), base
    assert "cudnn-runtime" in base


def test_the_image_installs_our_system_packages_and_python(dockerfile):
    """On a base image of our own, BentoML installs neither: the template does, before BentoML
    makes its venv with the Python version it asks for."""
    instructions = dockerfile.replace("\\\n", " ").splitlines()  # join continued lines
    (apt_line,) = [line for line in instructions if "apt-get install" in line]
    for package in ("libglib2.0-0", "libgomp1"):  # OpenCV, OpenMP
        assert re.search(rf"\s{re.escape(package)}(\s|$)", apt_line)
    assert "ENV UV_PYTHON=3.11" in dockerfile
    assert dockerfile.index("uv python install 3.11") < dockerfile.index("uv venv ")


def test_cuda_torch_is_installed_first_then_the_project_pins(dockerfile):
    cpu_torch, gpu_torch = torch_pins()
    assert gpu_torch.split("+")[0] == cpu_torch  # the same torch, built for CUDA
    gpu_txt = (PROJECT_ROOT / "requirements" / "gpu.txt").read_text()
    assert "download.pytorch.org/whl/cu" in gpu_txt  # the CUDA wheel's own index
    gpu_step = dockerfile.index("install --no-cache -r src/requirements/gpu.txt")
    project_step = dockerfile.index("install --no-cache -r src/pyproject.toml")
    assert gpu_step < project_step
    # the build checks what the wheels declare against the base image's CUDA (check_cuda.py)
    assert 'check_cuda.py --image-cuda "${CUDA_VERSION' in dockerfile[project_step:]


def test_the_face_models_get_onnxruntime_with_the_cuda_provider(dockerfile):
    """pyproject.toml's CPU onnxruntime is swapped for onnxruntime-gpu of the same version, after
    the project's install (which would bring the CPU one back), and the build checks it."""
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    (cpu_version,) = re.findall(r'"onnxruntime==([^"]+)"', pyproject)
    gpu_txt = (PROJECT_ROOT / "requirements" / "gpu.txt").read_text()
    assert re.findall(r"^onnxruntime-gpu==(\S+)$", gpu_txt, re.MULTILINE) == [cpu_version]
    project_step = dockerfile.index("install --no-cache -r src/pyproject.toml")
    swap = dockerfile.index("uv pip uninstall onnxruntime")
    reinstall = dockerfile.index("--reinstall-package onnxruntime-gpu")
    assert project_step < swap < reinstall
    assert "requirements/check_cuda.py" in dockerfile[reinstall:]


def test_insightface_is_pinned_as_make_install_pins_it(dockerfile):
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    (make_pin,) = set(re.findall(r"--no-deps \"(insightface==[^\"]+)\"", makefile))
    assert f'--no-deps "{make_pin}"' in dockerfile


def test_the_bento_holds_code_builders_and_payloads_only(bento):
    src = bento / "src"
    files = [path.relative_to(src) for path in src.rglob("*") if path.is_file()]
    names = {path.as_posix() for path in files}
    for builder in (PROJECT_ROOT / "models").glob("tiny_*.py"):
        assert f"models/{builder.name}" in names
    for payload in (PROJECT_ROOT / "loadtests" / "payloads").iterdir():
        assert f"loadtests/payloads/{payload.name}" in names
    assert "config/blocked_terms.txt" in names
    setuptools = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for module in setuptools["py-modules"]:  # every module the project installs
        assert f"{module}.py" in names
    for pattern in setuptools["packages"]["find"]["include"]:
        for package in PROJECT_ROOT.glob(pattern.rstrip("*")):
            for module in package.rglob("*.py"):
                assert module.relative_to(PROJECT_ROOT).as_posix() in names
    assert not [p for p in files if p.parts[0] in {"tests", ".models", ".venv"}]
    assert not [p for p in files if "__pycache__" in p.parts or p.suffix == ".pyc"]
    assert not [p for p in files if p.suffix in WEIGHT_SUFFIXES]
    assert sum((src / path).stat().st_size for path in files) < MAX_BENTO_BYTES


def test_the_gpu_image_holds_no_weights_tiny_or_real(dockerfile):
    """Its weights come from the model store's volume (the CPU image, container/Containerfile,
    has the tiny ones)."""
    assert "models.build" not in dockerfile
    assert "python -m models.pull" not in dockerfile


def test_the_packages_are_installed_before_the_code_is_copied(dockerfile):
    """A code change rebuilds from the code's layer, not the packages'."""
    install = dockerfile.index("install --no-cache -r src/pyproject.toml")
    assert dockerfile.index("COPY ./src/pyproject.toml") < install
    assert install < dockerfile.index("COPY . ./")
    assert "COPY . ./" not in dockerfile[:install]


def test_the_build_checks_imports_and_the_entry_command(dockerfile):
    (check,) = [
        line for line in dockerfile.replace("\\\n", " ").splitlines() if "import service" in line
    ]
    assert dockerfile.index("COPY . ./") < dockerfile.index("import service")
    assert "entrypoint.sh bentoml serve --help" in check
