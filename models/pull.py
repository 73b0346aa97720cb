"""Pull the `full` profile's real weights from the Hugging Face Hub into the local model store.

    python -m models.pull --profile full [--only NAME ...] [--cache-dir DIR] [--force]

Each checkpoint of models/manifest.py is fetched at its pinned revision with
huggingface_hub.snapshot_download (so HF_HUB_OFFLINE=1 with a pre-filled HF cache works), then its
files are copied, symlinks resolved, into ``<model_store>/full/<name>/``. Models already pulled at
the same revision are skipped unless --force is given.
"""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from huggingface_hub import snapshot_download

from models import manifest
from models.store import COMPLETE_MARKER, install, is_complete, model_dir
from settings import Settings, get_settings


class PullError(RuntimeError):
    """A checkpoint could not be pulled; the message names the model and the repository."""


def _source(checkpoint: manifest.Checkpoint) -> str:
    return f"{checkpoint.repo_id}@{checkpoint.revision}"


def _is_current(target: Path, checkpoint: manifest.Checkpoint) -> bool:
    """Complete, and pulled from the revision the manifest pins now."""
    if not is_complete(target):
        return False
    return (target / COMPLETE_MARKER).read_text().strip() == _source(checkpoint)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _fetch(name: str, checkpoint: manifest.Checkpoint, cache_dir: Path | None) -> Path:
    """The snapshot folder in the HF cache, downloading what is missing."""
    try:
        return Path(
            snapshot_download(
                checkpoint.repo_id,
                revision=checkpoint.revision,
                allow_patterns=list(checkpoint.allow_patterns),
                cache_dir=cache_dir,
            )
        )
    except Exception as exc:  # hub, network and file system errors alike: report, don't trace
        raise PullError(f"{name}: cannot fetch {_source(checkpoint)}: {_one_line(exc)}") from exc


def _select_files(name: str, checkpoint: manifest.Checkpoint, snapshot: Path) -> list[str]:
    """The snapshot's files that the checkpoint asks for, as paths relative to `snapshot`.

    A cached snapshot folder may hold more files (fetched earlier by other code) or fewer (an
    interrupted download, reused offline), so select with the same fnmatch patterns as
    snapshot_download and check that every pattern matched.
    """
    present = sorted(
        path.relative_to(snapshot).as_posix() for path in snapshot.rglob("*") if path.is_file()
    )
    selected: set[str] = set()
    missing = []
    for pattern in checkpoint.allow_patterns:
        matches = fnmatch.filter(present, pattern)
        if not matches:
            missing.append(pattern)
        selected.update(matches)
    if missing:
        raise PullError(
            f"{name}: the snapshot of {_source(checkpoint)} at {snapshot} "
            f"lacks {', '.join(missing)}"
        )
    return sorted(selected)


def pull(
    settings: Settings,
    names: Iterable[str] | None = None,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> None:
    """Pull each manifest checkpoint in `names` (default: all) into the settings' store."""
    names = list(manifest.CHECKPOINTS if names is None else names)
    unknown = sorted(set(names) - set(manifest.CHECKPOINTS))
    if unknown:
        raise PullError(f"unknown model(s) {unknown}; known: {list(manifest.CHECKPOINTS)}")

    for index, name in enumerate(names, start=1):
        checkpoint = manifest.CHECKPOINTS[name]
        prefix = f"[{index}/{len(names)}] {name} {checkpoint.repo_id}@{checkpoint.revision[:12]}:"
        target = model_dir(settings, name)
        if not force and _is_current(target, checkpoint):
            log(f"{prefix} cached")
            continue
        log(f"{prefix} fetching ...")
        started = time.perf_counter()
        snapshot = _fetch(name, checkpoint, cache_dir)
        files = _select_files(name, checkpoint, snapshot)
        try:
            with install(target, source=_source(checkpoint)) as staging:
                for file in files:
                    (staging / file).parent.mkdir(parents=True, exist_ok=True)
                    # The HF cache links snapshot files to blobs: copy the bytes, not the link.
                    shutil.copyfile(snapshot / file, staging / file)
        except OSError as exc:
            raise PullError(f"{name}: cannot copy into {target}: {_one_line(exc)}") from exc
        megabytes = sum((target / file).stat().st_size for file in files) / 1e6
        seconds = time.perf_counter() - started
        log(f"{prefix} {len(files)} files, {megabytes:.1f} MB in {seconds:.1f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.pull",
        description="Pull the full profile's real weights into the local model store.",
    )
    parser.add_argument(
        "--profile",
        choices=["full"],
        default="full",
        help="only `full` is pulled; the tiny models are built locally with `make models`",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(manifest.CHECKPOINTS),
        metavar="NAME",
        help=f"pull only this model (repeatable); one of: {', '.join(manifest.CHECKPOINTS)}",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="Hugging Face cache to use (default: HF_HUB_CACHE, ~/.cache/huggingface/hub)",
    )
    parser.add_argument("--force", action="store_true", help="pull again even if present")
    args = parser.parse_args(argv)

    settings = get_settings().model_copy(update={"profile": args.profile})
    print(f"pulling {args.profile} models into {settings.profile_store()}")
    try:
        pull(settings, names=args.only, cache_dir=args.cache_dir, force=args.force)
    except PullError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
