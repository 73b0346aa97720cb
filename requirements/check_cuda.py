"""Build-time check of the GPU image: every CUDA wheel needs the image's CUDA major.

A wheel built for another CUDA major installs and imports without a word, and onnxruntime still
lists `CUDAExecutionProvider` among its available providers; only at run time does a session
fail to load the CUDA provider and run the face models on the CPU. So this reads what each
installed CUDA wheel declares it needs, before anything runs:

- its `Requires-Dist`, extras included (onnxruntime-gpu declares its CUDA libraries under its
  `cuda` and `cudnn` extras): CUDA runtime packages pinned by version (`nvidia-cuda-runtime~=13.0`,
  `cuda-toolkit==13.0.3`) and packages named after their CUDA major (`nvidia-cudnn-cu13`);
- its build info: onnxruntime's `capi/build_and_package_info.py` (`cuda_version = '13.0'`) and
  torch's `version.py` (`cuda = '13.0'`, what `torch.version.cuda` returns), read as text.

    python requirements/check_cuda.py --image-cuda "$CUDA_VERSION"   # in the image
    python requirements/check_cuda.py                                # torch and onnxruntime agree

Exit status 0 when every source names one CUDA major (the image's, when given), else 1 with one
line per disagreement. The GPU image runs it after its installs (container/install_packages.py)
and again in its smoke stage, with the Containerfile's CUDA_VERSION; `make install` on a CUDA
host runs it without `--image-cuda`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from importlib.metadata import Distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# The wheels whose CUDA must match, and the file in each that records the CUDA it was built with.
BUILD_INFO = {
    "torch": ("torch/version.py", re.compile(r"^cuda\s*(?::[^=]*)?=\s*'([^']+)'", re.M)),
    "onnxruntime-gpu": (
        "onnxruntime/capi/build_and_package_info.py",
        re.compile(r"^cuda_version\s*=\s*'([^']+)'", re.M),
    ),
}
# CUDA packages versioned with CUDA itself. Other CUDA libraries (cufft 12.x, curand 10.x for
# CUDA 13) have their own version numbers and say nothing about the major.
VERSIONED_LIKE_CUDA = {"nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "cuda-toolkit", "cuda-bindings"}
CU_SUFFIX = re.compile(r"^nvidia-.+-cu(\d+)$")  # nvidia-cudnn-cu13, nvidia-cuda-runtime-cu12
# onnxruntime (CPU) installs the same `onnxruntime` module: beside onnxruntime-gpu, whichever was
# installed last owns the files.
CPU_ONNXRUNTIME = "onnxruntime"


def declared_majors(dist: Distribution) -> dict[str, str]:
    """The CUDA major each source of `dist` names: {source: major}."""
    found = {}
    for line in dist.requires or []:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        suffix = CU_SUFFIX.match(name)
        if suffix:
            found[f"Requires-Dist {line}"] = suffix.group(1)
        elif name in VERSIONED_LIKE_CUDA:
            lower = [s.version for s in requirement.specifier if s.operator in {"==", "~=", ">="}]
            if lower:
                found[f"Requires-Dist {line}"] = lower[0].split(".")[0]
    relative, pattern = BUILD_INFO[canonicalize_name(dist.metadata["Name"])]
    info = Path(str(dist.locate_file(relative)))
    if info.is_file():
        match = pattern.search(info.read_text())
        if match:
            found[f"{relative}: {match.group(0)}"] = match.group(1).split(".")[0]
    return found


def find(name: str, paths: Sequence[str] | None) -> Distribution | None:
    return next(iter(Distribution.discover(name=name, path=list(paths or sys.path))), None)


def problems(image_cuda: str | None, paths: Sequence[str] | None = None) -> list[str]:
    """Every disagreement, one line each; none when the image is coherent."""
    image_major = image_cuda.split(".")[0] if image_cuda else None
    found: list[str] = []
    majors: dict[str, str] = {}  # "name source" -> major
    for name in BUILD_INFO:
        dist = find(name, paths)
        if dist is None:
            found.append(f"{name} is not installed")
            continue
        declared = declared_majors(dist)
        if not declared:
            found.append(f"{name} {dist.version} declares no CUDA: it is not a CUDA build")
        majors.update({f"{name} {dist.version} {source}": m for source, m in declared.items()})
    if find(CPU_ONNXRUNTIME, paths) is not None:
        found.append(
            f"{CPU_ONNXRUNTIME} (CPU) is installed beside onnxruntime-gpu and shares its module: "
            f"uninstall it, then reinstall onnxruntime-gpu"
        )
    expected = image_major or (sorted(set(majors.values()))[0] if majors else None)
    for source, major in majors.items():
        if major != expected:
            against = f"the image's CUDA {image_cuda}" if image_major else f"CUDA {expected}"
            found.append(f"{source} needs CUDA {major}, not {against}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-cuda", help="the image's CUDA version (its CUDA_VERSION)")
    parser.add_argument("--path", action="append", help="where to look for the wheels (sys.path)")
    args = parser.parse_args(argv)
    found = problems(args.image_cuda, args.path)
    for line in found:
        print(f"check_cuda: {line}", file=sys.stderr)
    if found:
        print("check_cuda: the CUDA wheels do not match (requirements/gpu.txt)", file=sys.stderr)
        return 1
    print(f"check_cuda: torch and onnxruntime-gpu need CUDA {args.image_cuda or 'the same major'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
