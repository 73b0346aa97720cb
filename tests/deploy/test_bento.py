"""The Bento (bentofile.yaml): `bentoml build`, as `make bento` runs it, works with no network,
into a temporary BENTOML_HOME; the Bento holds the code, the tiny builders, the GPU image's
requirements and the payloads, and no tests, caches or weights. Both images are built from its
files by container/Containerfile (tests/deploy/test_image.py, test_image_gpu.py)."""

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


def bentofile() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "bentofile.yaml").read_text())


def test_the_bento_serves_the_gateway_and_its_runners(bento):
    spec = yaml.safe_load((bento / "bento.yaml").read_text())
    assert spec["service"] == bentofile()["service"] == "service:Gateway"
    assert {s["name"] for s in spec["services"]} == {
        "gateway",
        "sd15_depth",
        "flux_depth",
        "instantid",
    }


def test_the_bento_holds_code_builders_and_payloads_only(bento):
    src = bento / "src"
    files = [path.relative_to(src) for path in src.rglob("*") if path.is_file()]
    names = {path.as_posix() for path in files}
    for builder in (PROJECT_ROOT / "models").glob("tiny_*.py"):
        assert f"models/{builder.name}" in names
    for payload in (PROJECT_ROOT / "loadtests" / "payloads").iterdir():
        assert f"loadtests/payloads/{payload.name}" in names
    assert "config/blocked_terms.txt" in names
    assert "requirements/gpu.txt" in names and "requirements/check_cuda.py" in names
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
