"""The package layer of both images (container/Containerfile's `deps` and `gpu-deps` stages).

    python install_packages.py cpu|gpu SRC   # SRC: the Bento's src/ (pyproject.toml, requirements/)

cpu: every pin of pyproject.toml, torch==2.13.0 among them, as `make install` installs them.
gpu: the same pins in one pip call with requirements/gpu.txt (torch's CUDA 13 build,
     onnxruntime-gpu), less the CPU packages that gpu.txt replaces (onnxruntime: both install
     the `onnxruntime` module, so the CPU one must never come in), then
     requirements/check_cuda.py: torch and onnxruntime-gpu must need the image's CUDA major;
     then the wheels' files that nothing in the image can load are deleted (UNUSED), in the
     same layer, so that they take no room in the image.

Both then install insightface without its declared deps (pyproject.toml says why). pip reads the
building machine's settings from PIP_CONFIG_FILE (the build secret, container/pip_settings.py);
no download cache is kept in the layer. tests/deploy/test_image_gpu.py resolves the same
`requirements(...)` without installing them.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

INSIGHTFACE = "insightface==2.1"  # the Makefile's pin; --no-deps
# The GPU image's packages that take the place of a CPU one of pyproject.toml's.
GPU_REPLACES = {"onnxruntime-gpu": "onnxruntime"}
# Files of the GPU wheels that no library of the image links (torch's and onnxruntime's are
# checked by container/smoke.py --cuda) and no code opens: cuSOLVER's multi-GPU library
# (torch's linear algebra uses the single-GPU one), NVRTC's alternative build (torch links
# libnvrtc.so.13), a static library, and onnxruntime's TensorRT provider, which needs TensorRT's
# libraries, not in the image. About 210 MB, relative to site-packages.
UNUSED = (
    "nvidia/cu13/lib/libcusolverMg.so.*",
    "nvidia/cu13/lib/libnvrtc.alt.so.*",
    "nvidia/cu13/lib/libnvrtc-builtins.alt.so.*",
    "nvidia/cu13/lib/*.a",
    "onnxruntime/capi/libonnxruntime_providers_tensorrt.so",
)
PIP = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check"]


def name(pin: str) -> str:
    """The package a pin names, normalised (`packaging` is not installed yet where this runs)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", pin).group(0)).lower()


def project_pins(src: Path) -> list[str]:
    return tomllib.loads((src / "pyproject.toml").read_text())["project"]["dependencies"]


def gpu_pins(src: Path) -> list[str]:
    lines = (src / "requirements" / "gpu.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def requirements(variant: str, src: Path) -> list[str]:
    """What the image's one resolving pip call installs."""
    if variant == "cpu":
        return project_pins(src)
    gpu = gpu_pins(src)
    replaced = {GPU_REPLACES[name(pin)] for pin in gpu if name(pin) in GPU_REPLACES}
    return gpu + [pin for pin in project_pins(src) if name(pin) not in replaced]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variant", choices=("cpu", "gpu"))
    parser.add_argument("src", type=Path, help="the Bento's src/ folder")
    parser.add_argument("--image-cuda", help="gpu: the image's CUDA version, for check_cuda.py")
    args = parser.parse_args(argv)
    if args.variant == "gpu" and not args.image_cuda:
        parser.error("gpu needs --image-cuda")
    pins = requirements(args.variant, args.src)
    print(f"install_packages: {args.variant}: {' '.join(pins)}", flush=True)
    subprocess.run([*PIP, "--quiet", *pins], check=True)
    subprocess.run([*PIP, "--quiet", "--no-deps", INSIGHTFACE], check=True)
    if args.variant == "gpu":
        check = [sys.executable, str(args.src / "requirements" / "check_cuda.py")]
        subprocess.run([*check, "--image-cuda", args.image_cuda], check=True)
        site = Path(sysconfig.get_paths()["purelib"])
        unused = sorted(path for pattern in UNUSED for path in site.glob(pattern))
        size = sum(path.stat().st_size for path in unused)
        for path in unused:
            path.unlink()
        print(f"install_packages: deleted {len(unused)} unused files, {size // 1_000_000} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
