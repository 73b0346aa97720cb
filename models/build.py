"""Build the `tiny` profile's models: real architectures, tiny configs, seeded random weights.

    depthid models build [--only NAME ...]          (or: python -m models.build)

Models already built (their `.complete` marker exists) are skipped, so running it again is cheap.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from models.manifest import TINY_MODELS
from models.store import install, installed_source, model_dir
from settings import Settings, get_settings

Builder = Callable[[Path], None]


def _builders() -> dict[str, Builder]:
    # Imported here, not at the top: a fully cached run then never imports torch and diffusers.
    from models.tiny_depth import build_depth_estimator
    from models.tiny_faces import build_face_models
    from models.tiny_flux import build_flux_depth
    from models.tiny_instantid import build_instantid
    from models.tiny_safety import build_safety_classifier
    from models.tiny_sd15 import build_sd15_base, build_sd15_controlnet
    from models.tiny_sdxl import build_sdxl_base, build_sdxl_controlnet_depth, build_sdxl_vae

    return {
        "sd15-base": build_sd15_base,
        "sd15-controlnet-depth": build_sd15_controlnet,
        "depth-estimator": build_depth_estimator,
        "flux-depth-dev": build_flux_depth,
        "safety-checker": build_safety_classifier,
        "sdxl-base": build_sdxl_base,
        "sdxl-vae": build_sdxl_vae,
        "instantid": build_instantid,
        "sdxl-controlnet-depth": build_sdxl_controlnet_depth,
        "face-analysis": build_face_models,
    }


def builders_fingerprint() -> str:
    """A hash of the tiny builders' code: a model built by other code is rebuilt, never reused."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("tiny_*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def build_tiny(
    settings: Settings,
    names: Iterable[str] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Build every missing tiny model in `names` (default: all) into the settings' store."""
    names = list(TINY_MODELS if names is None else names)
    unknown = sorted(set(names) - set(TINY_MODELS))
    if unknown:
        raise ValueError(f"unknown tiny model(s) {unknown}; known: {list(TINY_MODELS)}")

    source = f"models.build (tiny, random weights) {builders_fingerprint()}"
    builders: dict[str, Builder] | None = None
    for index, name in enumerate(names, start=1):
        prefix = f"[{index}/{len(names)}] {name}:"
        target = model_dir(settings, name)
        if installed_source(target) == source:
            log(f"{prefix} cached")
            continue
        if builders is None:
            builders = _builders()  # a few seconds, once; not counted in the build time
        started = time.perf_counter()
        with install(target, source=source) as staging:
            builders[name](staging)
        log(f"{prefix} building ... done in {time.perf_counter() - started:.1f}s")


def main(argv: list[str] | None = None, prog: str = "python -m models.build") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Build the tiny profile's random-weight models into the local model store.",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=TINY_MODELS,
        metavar="NAME",
        help=f"build only this model (repeatable); one of: {', '.join(TINY_MODELS)}",
    )
    args = parser.parse_args(argv)

    settings = get_settings()
    if settings.profile != "tiny":
        print(
            f"error: DEPTHID_PROFILE is {settings.profile!r}; models.build only builds the tiny "
            "profile. Pull the full weights with `python -m models.pull --profile full`.",
            file=sys.stderr,
        )
        return 2
    print(f"building tiny models into {settings.profile_store()}")
    build_tiny(settings, names=args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
