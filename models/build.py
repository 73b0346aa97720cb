"""Build the `tiny` profile's models: real architectures, tiny configs, seeded random weights.

    depthid models build [--only NAME ...]          (or: python -m models.build)

Models already built (their `.complete` marker exists) are skipped, so running it again is cheap.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from models.manifest import CHECKPOINTS, TINY_MODELS
from models.store import install, installed_source, model_dir
from settings import Settings, get_settings

Builder = Callable[[Path], None]


def tiny_builder(name: str) -> Builder:
    """The function that builds checkpoint `name`'s tiny copy (its manifest entry's
    `tiny_builder`, "module:function"). Imported only when a model is built: a fully cached run
    never imports torch and diffusers."""
    module, function = CHECKPOINTS[name].tiny_builder.split(":")
    return getattr(importlib.import_module(module), function)


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
    for index, name in enumerate(names, start=1):
        prefix = f"[{index}/{len(names)}] {name}:"
        target = model_dir(settings, name)
        if installed_source(target) == source:
            log(f"{prefix} cached")
            continue
        build = tiny_builder(name)  # the first import takes a few seconds, not counted
        started = time.perf_counter()
        with install(target, source=source) as staging:
            build(staging)
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
