"""Pull the `full` profile's real weights from the Hugging Face Hub into the local model store.

    depthid pull [--runner NAME ...] [--only NAME ...] [--cache-dir DIR] [--force]

`python -m models.pull` is the same command where `depthid` is not installed (the images, the
Kubernetes Job).

1. Plan: the files each checkpoint of models/manifest.py needs at its pinned commit, with their
   sizes from the hub's file metadata (from the cache itself with HF_HUB_OFFLINE=1). The total is
   printed before anything is downloaded.
2. Fetch: each file into the Hugging Face cache (hf_hub_download: resumable, and the same cache
   serves HF_HUB_OFFLINE=1 later), one progress line per file.
3. Install: the files are hard-linked from the cache into ``<model_store>/full/<name>/`` and the
   folder is marked complete (models/store.py), so an interrupted pull never looks complete.

Stored once: a hard link is the same bytes on disk as the cache's blob, not a copy. We keep the
cache rather than downloading straight into the store (``local_dir``) because the cache resumes
an interrupted 20 GB download and is what HF_HUB_OFFLINE=1 and mirrors fill. The cache defaults
to ``<model_store>/.hf-cache``, on the store's file system, where hard links always work; deleting
it afterwards frees nothing and breaks nothing. Only where a link is impossible (a cache on
another file system, chosen with HF_HUB_CACHE or --cache-dir) is the file copied, with a warning.

A checkpoint that fails does not stop the others: every failure is listed at the end, with what
to do about it, and the exit status is non-zero.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client: its TransportError is "the hub is unreachable"
from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name

from models import manifest
from models.store import COMPLETE_MARKER, install, is_complete, model_dir
from settings import Settings, get_settings

COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
# The variables with which a user chooses the Hugging Face cache; with none, the store's own.
CACHE_VARIABLES = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME")


class PullError(RuntimeError):
    """A checkpoint could not be pulled; the message says why and what to do."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # relative to the repository root
    size: int  # bytes
    cached: bool  # already in the Hugging Face cache at the pinned commit


@dataclass(frozen=True)
class Planned:
    name: str
    checkpoint: manifest.Checkpoint
    files: tuple[RemoteFile, ...]

    @property
    def size(self) -> int:
        return sum(file.size for file in self.files)


def _source(checkpoint: manifest.Checkpoint) -> str:
    return f"{checkpoint.repo_id}@{checkpoint.revision}"


def _is_current(target: Path, checkpoint: manifest.Checkpoint) -> bool:
    """Complete, and pulled from the revision the manifest pins now."""
    if not is_complete(target):
        return False
    return (target / COMPLETE_MARKER).read_text().strip() == _source(checkpoint)


def _size(size: int) -> str:
    """Bytes for people: 3.1 GB, 40.2 MB, 1.5 kB, 12 B."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def default_cache_dir(settings: Settings) -> Path:
    """The Hugging Face cache the user chose, else ``<model_store>/.hf-cache``."""
    if any(os.environ.get(variable) for variable in CACHE_VARIABLES):
        return Path(constants.HF_HUB_CACHE)
    return settings.model_store / ".hf-cache"


def select_names(only: Iterable[str] = (), runners: Iterable[str] = ()) -> list[str]:
    """Manifest names asked for by name and by runner, in manifest order; none asked: all."""
    wanted = set(only)
    for runner in runners:
        if runner not in manifest.RUNNER_MODELS:
            raise PullError(
                f"unknown runner {runner!r}; known: {', '.join(manifest.RUNNER_MODELS)}"
            )
        wanted.update(manifest.RUNNER_MODELS[runner])
    unknown = sorted(wanted - set(manifest.CHECKPOINTS))
    if unknown:
        raise PullError(f"unknown model(s) {unknown}; known: {', '.join(manifest.CHECKPOINTS)}")
    if not wanted:
        return list(manifest.CHECKPOINTS)
    return [name for name in manifest.CHECKPOINTS if name in wanted]


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _offline_hint(cache_dir: Path) -> str:
    return (
        f"not in the Hugging Face cache at {cache_dir} (HF_HUB_OFFLINE=1 is set): fill that "
        f"cache where the hub is reachable (`python -m models.pull --cache-dir DIR`, copy DIR "
        f"here), or unset HF_HUB_OFFLINE"
    )


def explain(
    exc: BaseException,
    checkpoint: manifest.Checkpoint,
    cache_dir: Path,
    endpoint: str | None = None,
) -> str:
    """What went wrong fetching `checkpoint`, and what the user can do about it."""
    repo = checkpoint.repo_id
    endpoint = endpoint or constants.ENDPOINT
    page = f"https://huggingface.co/{repo}"
    status = exc.response.status_code if isinstance(exc, HfHubHTTPError) else None
    if isinstance(exc, GatedRepoError) or (status in (401, 403) and checkpoint.gated):
        return (
            f"{repo} is gated: accept its licence at {page} (logged in to the Hub), then set "
            f"HF_TOKEN to a token of that account (https://huggingface.co/settings/tokens) "
            f"and pull again [{_one_line(exc)}]"
        )
    if isinstance(exc, RevisionNotFoundError):
        return f"{repo} has no commit {checkpoint.revision} on {endpoint} [{_one_line(exc)}]"
    if isinstance(exc, RepositoryNotFoundError) or status in (401, 403):
        return (
            f"{repo} is not found or not accessible on {endpoint} (HTTP {status}): if "
            f"it needs access, accept its terms at {page} and set HF_TOKEN; a mirror "
            f"(HF_ENDPOINT) must hold this repository [{_one_line(exc)}]"
        )
    if constants.is_offline_mode() or isinstance(exc, OfflineModeIsEnabled):
        return f"{_offline_hint(cache_dir)} [{_one_line(exc)}]"
    if isinstance(exc, httpx2.TransportError | LocalEntryNotFoundError | ConnectionError):
        return (
            f"cannot reach {endpoint}: behind a firewall or proxy, set HF_ENDPOINT to "
            f"a mirror of the hub; without a network, pull into a cache elsewhere "
            f"(`--cache-dir DIR`), bring DIR here and pull with HF_HUB_OFFLINE=1 "
            f"--cache-dir DIR [{_one_line(exc)}]"
        )
    return _one_line(exc)


def _match(checkpoint: manifest.Checkpoint, sizes: dict[str, int], where: str) -> dict[str, int]:
    """The files among `sizes` that the checkpoint's patterns select; each pattern must match.

    The same fnmatch patterns as huggingface_hub's allow_patterns.
    """
    selected: dict[str, int] = {}
    missing = []
    for pattern in checkpoint.allow_patterns:
        matches = fnmatch.filter(sizes, pattern)
        if not matches:
            missing.append(pattern)
        selected.update((path, sizes[path]) for path in matches)
    if missing:
        raise PullError(f"{where} has no file matching {', '.join(missing)}")
    return dict(sorted(selected.items()))


def plan(
    name: str, checkpoint: manifest.Checkpoint, cache_dir: Path, endpoint: str | None = None
) -> Planned:
    """The files `checkpoint` needs and their sizes, from the hub (or the cache when offline)."""
    if not COMMIT_SHA.fullmatch(checkpoint.revision):
        raise PullError(
            f"revision {checkpoint.revision!r} of {checkpoint.repo_id} is not a commit sha: pin "
            f"it in models/manifest.py (the `sha` of huggingface_hub.model_info) so that every "
            f"pull gets the same files"
        )
    if constants.is_offline_mode():
        snapshot = (
            cache_dir
            / repo_folder_name(repo_id=checkpoint.repo_id, repo_type="model")
            / "snapshots"
            / checkpoint.revision
        )
        if not snapshot.is_dir():
            raise PullError(
                f"{checkpoint.repo_id}@{checkpoint.revision} is {_offline_hint(cache_dir)}"
            )
        sizes = {
            path.relative_to(snapshot).as_posix(): path.stat().st_size
            for path in snapshot.rglob("*")
            if path.is_file()  # follows the snapshot's links to the blobs
        }
        where = f"the Hugging Face cache at {snapshot} (HF_HUB_OFFLINE=1)"
    else:
        info = HfApi(endpoint=endpoint).model_info(
            checkpoint.repo_id, revision=checkpoint.revision, files_metadata=True
        )
        sizes = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
        where = f"{checkpoint.repo_id} at {checkpoint.revision}"
    files = tuple(
        RemoteFile(
            path,
            size,
            cached=isinstance(
                try_to_load_from_cache(
                    checkpoint.repo_id, path, cache_dir=cache_dir, revision=checkpoint.revision
                ),
                str,
            ),
        )
        for path, size in _match(checkpoint, sizes, where).items()
    )
    return Planned(name, checkpoint, files)


def _link_or_copy(source: Path, target: Path) -> bool:
    """Hard-link `source` (a cache blob) at `target`; copy where that is impossible (False)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return True
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, target)
        return False


def fetch_and_install(
    planned: Planned,
    settings: Settings,
    cache_dir: Path,
    log: Callable[[str], None],
    endpoint: str | None = None,
) -> None:
    """Download the planned files into the cache, then install them into the store."""
    checkpoint = planned.checkpoint
    done = 0
    blobs: dict[str, Path] = {}
    for index, file in enumerate(planned.files, start=1):
        counter = f"{index}/{len(planned.files)}"
        if not file.cached:  # a big file takes minutes: say which one
            log(f"  {planned.name} {counter} {file.path} {_size(file.size)} downloading ...")
        started = time.perf_counter()
        pointer = hf_hub_download(
            checkpoint.repo_id,
            file.path,
            revision=checkpoint.revision,
            cache_dir=cache_dir,
            endpoint=endpoint,
        )
        blobs[file.path] = Path(pointer).resolve()  # the blob the snapshot links to
        done += file.size
        seconds = time.perf_counter() - started
        how = "in the cache" if file.cached else f"downloaded in {seconds:.1f}s"
        log(
            f"  {planned.name} {counter} {file.path} {_size(file.size)} {how} "
            f"({_size(done)} of {_size(planned.size)})"
        )
    target = model_dir(settings, planned.name)
    copied = []
    try:
        with install(target, source=_source(checkpoint)) as staging:
            for path, blob in blobs.items():
                if not _link_or_copy(blob, staging / path):
                    copied.append(path)
    except OSError as exc:
        raise PullError(f"cannot install into {target}: {_one_line(exc)}") from exc
    if copied:
        log(
            f"  warning: {planned.name}: {len(copied)} files copied, not linked, from {cache_dir} "
            f"(another file system?): they are stored twice; put the cache on the store's file "
            f"system (--cache-dir) or delete it"
        )


def pull(
    settings: Settings,
    names: Iterable[str] | None = None,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
    force: bool = False,
    endpoint: str | None = None,
) -> dict[str, str]:
    """Pull the manifest checkpoints `names` (default: all); returns {name: why} of failures."""
    names = select_names(only=names or ())
    cache_dir = cache_dir or default_cache_dir(settings)
    failures: dict[str, str] = {}

    planned: list[Planned] = []
    for name in names:
        checkpoint = manifest.CHECKPOINTS[name]
        if not force and _is_current(model_dir(settings, name), checkpoint):
            log(f"{name}: in the store ({_source(checkpoint)})")
            continue
        try:
            planned.append(plan(name, checkpoint, cache_dir, endpoint))
        except PullError as exc:
            failures[name] = str(exc)
        except Exception as exc:  # hub, network and file system errors alike: report, go on
            failures[name] = explain(exc, checkpoint, cache_dir, endpoint)
        if name in failures:
            log(f"{name}: cannot pull: {failures[name]}")

    if not planned:
        log("nothing to pull")
        return failures
    total = sum(item.size for item in planned)
    cached = sum(file.size for item in planned for file in item.files if file.cached)
    log(
        f"to pull: {len(planned)} checkpoints, {sum(len(item.files) for item in planned)} "
        f"files, {_size(total)} ({_size(total - cached)} to download, the rest in {cache_dir})"
    )
    for item in planned:
        log(
            f"  {item.name} {_source(item.checkpoint)}: {len(item.files)} files, {_size(item.size)}"
        )

    for index, item in enumerate(planned, start=1):
        log(f"[{index}/{len(planned)}] {item.name} {item.checkpoint.repo_id} ...")
        started = time.perf_counter()
        try:
            fetch_and_install(item, settings, cache_dir, log, endpoint)
        except PullError as exc:
            failures[item.name] = str(exc)
        except Exception as exc:
            failures[item.name] = explain(exc, item.checkpoint, cache_dir, endpoint)
        if item.name in failures:
            log(f"[{index}/{len(planned)}] {item.name}: failed: {failures[item.name]}")
        else:
            seconds = time.perf_counter() - started
            log(f"[{index}/{len(planned)}] {item.name}: complete in {seconds:.1f}s")
    return failures


def main(argv: list[str] | None = None, prog: str = "python -m models.pull") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Pull the full profile's real weights into the local model store.",
    )
    parser.add_argument(
        "--profile",
        choices=["full"],
        default="full",
        help="only `full` is pulled; the tiny models are built locally (`depthid models build`)",
    )
    parser.add_argument(
        "--runner",
        action="append",
        choices=list(manifest.RUNNER_MODELS),
        metavar="RUNNER",
        help="pull only this runner's models (repeatable); one of: "
        f"{', '.join(manifest.RUNNER_MODELS)}; default: DEPTHID_PULL_RUNNERS, else all",
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
        help="Hugging Face cache to download into (default: HF_HUB_CACHE if set, else "
        "<model store>/.hf-cache, whose files the store hard-links)",
    )
    parser.add_argument(
        "--force", action="store_true", help="install again even if present (the cache is reused)"
    )
    args = parser.parse_args(argv)

    settings = get_settings().model_copy(update={"profile": args.profile})
    runners = args.runner or ([] if args.only else settings.pull_runners)
    try:
        names = select_names(only=args.only or (), runners=runners)
    except PullError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"pulling {len(names)} {args.profile} models into {settings.profile_store()}")
    failures = pull(settings, names=names, cache_dir=args.cache_dir, force=args.force)
    if failures:
        print(f"{len(failures)} of {len(names)} models failed:", file=sys.stderr)
        for name, why in failures.items():
            print(f"  {name}: {why}", file=sys.stderr)
        return 1
    print(f"all {len(names)} models are in {settings.profile_store()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
