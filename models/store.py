"""Where model weights live: ``<model_store>/<profile>/<name>/``, and what is there
(`depthid models list`).

A model folder counts as present only when it holds the ``.complete`` marker. The builder and the
puller fill a temporary folder beside the target, rename it into place and write the marker last,
so an interrupted build or download never looks complete.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from settings import Settings, get_settings

COMPLETE_MARKER = ".complete"

# The command that provides each profile's weights, quoted in MissingModelError.
PROVIDE_COMMAND = {
    "tiny": "make models",
    "full": "python -m models.pull --profile full",
}


class MissingModelError(RuntimeError):
    """A model the current profile needs is not (completely) in the local model store."""


def model_dir(settings: Settings, name: str) -> Path:
    """Folder of model `name` in the current profile's store (it may not exist yet)."""
    return settings.profile_store() / name


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


def installed_source(path: Path) -> str | None:
    """What the complete model at `path` was installed from (the marker's text), or None."""
    marker = path / COMPLETE_MARKER
    return marker.read_text().strip() if marker.is_file() else None


def require_model(settings: Settings, name: str) -> Path:
    """The folder of model `name`, or MissingModelError saying how to provide it."""
    path = model_dir(settings, name)
    if is_complete(path):
        return path
    state = "is incomplete (no .complete marker)" if path.exists() else "does not exist"
    command = PROVIDE_COMMAND[settings.profile]
    raise MissingModelError(
        f"model {name!r} for profile {settings.profile!r} is missing: {path} {state}; "
        f"run `{command}` to provide it"
    )


def runner_models(settings: Settings, runner: str) -> tuple[str, ...]:
    """The models runner `runner` loads in the settings' profile (manifest.RUNNER_MODELS; the
    prompt upsampler only when it is the language model)."""
    from models.manifest import RUNNER_MODELS

    names = RUNNER_MODELS[runner]
    if settings.resolved_prompt_upsampler() != "llm":
        names = tuple(name for name in names if name != "prompt-upsampler")
    return names


def check_runner_models(settings: Settings, runners: Iterable[str]) -> None:
    """MissingModelError naming every model the runners lack, and the command that provides them."""
    errors = []
    for runner in runners:
        for name in runner_models(settings, runner):
            try:
                require_model(settings, name)
            except MissingModelError as exc:
                errors.append(f"{runner}: {exc}")
    if errors:
        raise MissingModelError("\n".join(dict.fromkeys(errors)))


@contextmanager
def install(target: Path, source: str) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; fill it, and on success it becomes `target`.

    Whatever was at `target` before (an incomplete leftover, or a model being replaced) is removed
    only after the new content is ready. The marker, holding `source`, is written last.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    # Beside the target (same file system) so that the final rename is atomic.
    staging = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    )
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private; the model folder should not be
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        (target / COMPLETE_MARKER).write_text(source + "\n")
    finally:
        # Only left over when filling it failed or was interrupted.
        shutil.rmtree(staging, ignore_errors=True)


def describe(path: Path) -> str:
    """One line on the model folder at `path`: complete (its size and source), or why not."""
    if not path.exists():
        return "missing"
    megabytes = sum(file.stat().st_size for file in path.rglob("*") if file.is_file()) / 1e6
    source = installed_source(path)
    if source is None:
        return f"incomplete (no {COMPLETE_MARKER} marker), {megabytes:.1f} MB"
    return f"complete, {megabytes:.1f} MB, from {source}"


def main(argv: list[str] | None = None, prog: str = "depthid models list") -> int:
    from models.manifest import CHECKPOINTS, TINY_MODELS

    parser = argparse.ArgumentParser(
        prog=prog, description="List each profile's models in the local model store."
    )
    parser.add_argument(
        "--profile", choices=["tiny", "full"], action="append", help="only this profile's"
    )
    args = parser.parse_args(argv)

    names = {"tiny": TINY_MODELS, "full": tuple(CHECKPOINTS)}
    provide = {"tiny": "depthid models build", "full": "depthid pull"}
    for profile in args.profile or ["tiny", "full"]:
        settings = get_settings().model_copy(update={"profile": profile})
        print(f"{profile}: {settings.profile_store()}")
        complete = 0
        for name in names[profile]:
            path = model_dir(settings, name)
            complete += is_complete(path)
            print(f"  {name:<24} {describe(path)}")
        missing = len(names[profile]) - complete
        hint = f"; `{provide[profile]}` provides the other {missing}" if missing else ""
        print(f"  {complete} of {len(names[profile])} complete{hint}")
    return 0
