"""Tests of `python -m models.pull` against a hub stand-in on 127.0.0.1
(tests/support/hub_standin.py).

huggingface_hub talks HTTP to the stand-in exactly as to the hub (HF_ENDPOINT), so these cover
the real download path: sizes from the file metadata, hf_hub_download into the cache, the gated
and network errors, and the store's hard links into the cache.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
import yaml

from models import manifest, pull
from models.manifest import Checkpoint
from models.store import COMPLETE_MARKER, is_complete, require_model
from settings import PROJECT_ROOT, Settings
from tests.support.hub_standin import ACCEPTED_TOKEN, HubStandIn, Repo

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "89abcdef0123456789abcdef0123456789abcdef"
UNET = b"u" * 2_000_000
FILES = {
    "config.json": b'{"tiny": true}',
    "unet/diffusion_pytorch_model.safetensors": UNET,
    "unet/diffusion_pytorch_model.bin": b"not asked for",
}
PATTERNS = ("config.json", "unet/*.safetensors")
UNET_FILE = "unet/diffusion_pytorch_model.safetensors"


def _store_files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != COMPLETE_MARKER
    }


def _settings(tmp_path: Path, name: str = "store") -> Settings:
    return Settings(model_store=tmp_path / name, profile="full")


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    """A stand-in hub with a plain, a second and a gated repository, and a manifest naming them."""
    repos = {
        "org/unet": Repo(SHA, dict(FILES)),
        "org/vae": Repo(OTHER_SHA, {"config.json": b"{}", "vae.safetensors": b"v" * 1_000}),
        "org/gated": Repo(SHA, {"config.json": b"{}"}, gated=True),
        "org/half": Repo(SHA, {"a.json": b"{}", "b.json": b"{}"}, broken={"b.json"}),
    }
    monkeypatch.setattr(
        manifest,
        "CHECKPOINTS",
        {
            "unet": Checkpoint("org/unet", SHA, PATTERNS, "plain"),
            "vae": Checkpoint("org/vae", OTHER_SHA, ("*.json", "*.safetensors"), "plain"),
            "gated": Checkpoint("org/gated", SHA, ("config.json",), "gated", gated=True),
            "absent": Checkpoint("org/absent", SHA, ("config.json",), "not on the hub"),
            "branch": Checkpoint("org/unet", "main", PATTERNS, "not pinned"),
            "no-match": Checkpoint("org/unet", SHA, ("text_encoder/*",), "no such file"),
            "half": Checkpoint("org/half", SHA, ("*.json",), "fails half-way"),
        },
    )
    monkeypatch.setattr(
        manifest, "RUNNER_MODELS", {"one": ("unet", "vae"), "two": ("vae", "gated")}
    )
    for variable in ("HF_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubStandIn(repos) as standin:
        yield standin


def test_pull_prints_sizes_first_and_links_each_file_once(hub: HubStandIn, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    lines: list[str] = []
    failures = pull.pull(settings, names=["unet", "vae"], endpoint=hub.url, log=lines.append)
    assert failures == {}

    # The total, from the hub's metadata, before the first file arrives; then a line per file.
    cache = settings.model_store / ".hf-cache"
    assert lines[0] == (
        f"to pull: 2 checkpoints, 4 files, 2.0 MB (2.0 MB to download, the rest in {cache})"
    )
    per_file = [line for line in lines if re.match(r"  (unet|vae) \d/2 .* downloaded in ", line)]
    starts = [line for line in lines if line.endswith(" downloading ...")]
    assert starts[1] == f"  unet 2/2 {UNET_FILE} 2.0 MB downloading ..."
    assert lines.index(starts[1]) < lines.index(per_file[1])
    assert [line.split()[2] for line in per_file] == [
        "config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "config.json",
        "vae.safetensors",
    ]
    assert "2.0 MB downloaded in" in per_file[1] and "(2.0 MB of 2.0 MB)" in per_file[1]

    # Only the asked-for files, complete, marked with their source.
    unet = require_model(settings, "unet")
    assert _store_files(unet) == {"config.json": FILES["config.json"], UNET_FILE: UNET}
    assert (unet / COMPLETE_MARKER).read_text().strip() == f"org/unet@{SHA}"
    assert is_complete(require_model(settings, "vae"))

    # Stored once: each store file is the cache's blob itself (a hard link), not a copy.
    blobs = list(cache.rglob("blobs/*"))
    assert len(blobs) == 4
    store_files = [p for p in settings.profile_store().rglob("*") if p.is_file()]
    store_files = [p for p in store_files if p.name != COMPLETE_MARKER]
    assert len(store_files) == 4
    for path in store_files:
        assert not path.is_symlink()
        assert path.stat().st_nlink == 2
        assert any(os.path.samefile(path, blob) for blob in blobs)
    assert {p.stat().st_ino for p in store_files} == {p.stat().st_ino for p in blobs}

    # Again: nothing downloaded, nothing replaced.
    before = dict(hub.downloads)
    again: list[str] = []
    assert pull.pull(settings, names=["unet", "vae"], endpoint=hub.url, log=again.append) == {}
    assert again[:2] == [
        f"unet: in the store (org/unet@{SHA})",
        f"vae: in the store (org/vae@{OTHER_SHA})",
    ]
    assert dict(hub.downloads) == before


def test_a_failing_checkpoint_does_not_stop_the_others(hub: HubStandIn, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    lines: list[str] = []
    names = ["gated", "absent", "branch", "no-match", "half", "unet"]
    failures = pull.pull(settings, names=names, endpoint=hub.url, log=lines.append)

    assert list(failures) == ["gated", "absent", "branch", "no-match", "half"]
    assert is_complete(require_model(settings, "unet"))
    for name in failures:
        assert not (settings.profile_store() / name).exists()  # never looks complete

    gated = failures["gated"]
    assert "org/gated is gated" in gated
    assert "https://huggingface.co/org/gated" in gated and "HF_TOKEN" in gated
    assert "GatedRepoError" in gated
    assert "org/absent is not found or not accessible" in failures["absent"]
    assert "'main' of org/unet is not a commit sha" in failures["branch"]
    assert "no file matching text_encoder/*" in failures["no-match"]
    assert "EntryNotFound" in failures["half"]
    # Half-way: the first file reached the cache, the store has nothing of it.
    assert hub.downloads[("org/half", "a.json")] == 1
    assert not list(settings.profile_store().glob(".half.*"))


def test_the_gated_checkpoint_pulls_with_an_accepted_token(
    hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_not_accepted")
    failures = pull.pull(settings, names=["gated"], endpoint=hub.url, log=lambda line: None)
    assert "org/gated is gated" in failures["gated"] and "403" in failures["gated"]

    monkeypatch.setenv("HF_TOKEN", ACCEPTED_TOKEN)
    assert pull.pull(settings, names=["gated"], endpoint=hub.url, log=lambda line: None) == {}
    assert _store_files(require_model(settings, "gated")) == {"config.json": b"{}"}


def test_a_network_error_says_how_to_use_a_mirror_or_a_cache(
    tmp_path: Path, hub: HubStandIn
) -> None:
    with socket.socket() as probe:  # a free port, closed again: nothing listens there
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    failures = pull.pull(
        _settings(tmp_path), names=["unet"], endpoint=closed, log=lambda line: None
    )
    assert f"cannot reach {closed}" in failures["unet"]
    assert "HF_ENDPOINT" in failures["unet"] and "HF_HUB_OFFLINE=1" in failures["unet"]


def test_offline_pull_from_a_filled_cache(
    hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    online = _settings(tmp_path, "online")
    assert pull.pull(online, names=["unet"], cache_dir=cache, endpoint=hub.url, log=print) == {}

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    offline = _settings(tmp_path, "offline")
    lines: list[str] = []
    failures = pull.pull(
        offline,
        names=["unet", "vae"],
        cache_dir=cache,
        endpoint="http://127.0.0.1:9",
        log=lines.append,
    )
    assert list(failures) == ["vae"]
    assert f"not in the Hugging Face cache at {cache} (HF_HUB_OFFLINE=1 is set)" in failures["vae"]
    assert _store_files(require_model(offline, "unet")) == {
        "config.json": FILES["config.json"],
        UNET_FILE: UNET,
    }
    assert "(0 B to download, the rest in" in next(
        line for line in lines if line.startswith("to pull")
    )


def test_a_cache_on_another_file_system_is_copied_with_a_warning(
    hub: HubStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cross_device(source: object, target: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(pull.os, "link", cross_device)
    settings = _settings(tmp_path)
    lines: list[str] = []
    assert pull.pull(settings, names=["unet"], endpoint=hub.url, log=lines.append) == {}
    assert _store_files(require_model(settings, "unet"))[UNET_FILE] == UNET
    warning = next(line for line in lines if "warning" in line)
    assert "2 files copied, not linked" in warning and "stored twice" in warning


def test_select_names_by_runner_and_by_name(hub: HubStandIn) -> None:
    assert pull.select_names() == list(manifest.CHECKPOINTS)
    assert pull.select_names(runners=["two"]) == ["vae", "gated"]
    assert pull.select_names(runners=["one", "two"], only=["half"]) == [
        "unet",
        "vae",
        "gated",
        "half",
    ]
    with pytest.raises(pull.PullError, match="unknown runner 'three'"):
        pull.select_names(runners=["three"])


# --- the real manifest, through the command line -------------------------------------------------


def _fake_files(checkpoint: Checkpoint) -> dict[str, bytes]:
    """One small file per allow pattern (a `*` becomes `x`), plus one the patterns leave out."""
    files = {pattern.replace("*", "x"): pattern.encode() for pattern in checkpoint.allow_patterns}
    files["README.md"] = b"not asked for"
    return files


def _run_pull(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "models.pull", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_command_pulls_the_real_manifest_by_runner_and_lists_failures(tmp_path: Path) -> None:
    repos = {
        checkpoint.repo_id: Repo(
            checkpoint.revision, _fake_files(checkpoint), gated=checkpoint.gated
        )
        for checkpoint in manifest.CHECKPOINTS.values()
    }
    store = tmp_path / "store"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGINGFACE_", "DEPTHID_"))
    }
    env |= {"DEPTHID_MODEL_STORE": str(store), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    with HubStandIn(repos) as hub:
        env["HF_ENDPOINT"] = hub.url

        # One runner, by flag: its models and no other.
        done = _run_pull(["--runner", "instantid"], env)
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in (store / "full").iterdir()) == sorted(
            manifest.RUNNER_MODELS["instantid"]
        )
        out = done.stdout.splitlines()
        total = next(i for i, line in enumerate(out) if line.startswith("to pull: 6 checkpoints"))
        assert total < next(i for i, line in enumerate(out) if line.startswith("[1/6]"))

        # One runner, by the environment variable the k8s Job sets.
        done = _run_pull([], env | {"DEPTHID_PULL_RUNNERS": "sd15_depth"})
        assert done.returncode == 0, done.stderr
        assert "depth-estimator: in the store" in done.stdout
        assert "to pull: 2 checkpoints" in done.stdout

        # Everything, without a token: the gated FLUX fails, the rest completes, exit 1.
        done = _run_pull([], env)
        assert done.returncode == 1
        assert done.stderr.splitlines()[0] == f"1 of {len(manifest.CHECKPOINTS)} models failed:"
        assert "flux-depth-dev: black-forest-labs/FLUX.1-Depth-dev is gated" in done.stderr
        assert "https://huggingface.co/black-forest-labs/FLUX.1-Depth-dev" in done.stderr
        assert "Traceback" not in done.stderr
    for name, checkpoint in manifest.CHECKPOINTS.items():
        folder = store / "full" / name
        if checkpoint.gated:
            assert not folder.exists()
        else:
            expected = {pattern.replace("*", "x") for pattern in checkpoint.allow_patterns}
            assert set(_store_files(folder)) == expected


def test_the_command_refuses_an_unknown_runner_in_the_environment(tmp_path: Path) -> None:
    env = dict(os.environ, DEPTHID_MODEL_STORE=str(tmp_path), DEPTHID_PULL_RUNNERS="nope")
    done = _run_pull([], env)
    assert done.returncode == 2
    assert "unknown runner 'nope'" in done.stderr


# --- the manifest, the docs and the k8s Job ------------------------------------------------------


def test_every_checkpoint_is_pinned_to_a_commit_and_has_a_licence() -> None:
    for name, checkpoint in manifest.CHECKPOINTS.items():
        assert pull.COMMIT_SHA.fullmatch(checkpoint.revision), name
        assert checkpoint.licence, name


def test_the_docs_licence_table_matches_the_manifest() -> None:
    models_doc = (PROJECT_ROOT / "docs" / "models.md").read_text()
    section = models_doc.split("## Licences", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(manifest.CHECKPOINTS)
    for name, checkpoint in manifest.CHECKPOINTS.items():
        _, repo, licence, gated, _ = rows[name][:5]
        assert f"[{checkpoint.repo_id}](https://huggingface.co/{checkpoint.repo_id})" == repo
        assert licence == checkpoint.licence
        assert gated == ("yes" if checkpoint.gated else "no")


def test_the_k8s_pull_job_passes_runners_and_an_optional_token() -> None:
    job = yaml.safe_load((PROJECT_ROOT / "k8s/components/gpu/pull-models-job.yaml").read_text())
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "models.pull"]
    env = {item["name"]: item for item in container["env"]}
    assert env["DEPTHID_PULL_RUNNERS"]["value"] == ""  # every model unless set
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    # The cache lives on the store's volume, so the store's files are hard links into it.
    assert env["HF_HUB_CACHE"]["value"].startswith(env["DEPTHID_MODEL_STORE"]["value"] + "/")
