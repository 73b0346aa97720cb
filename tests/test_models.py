"""Tests of the models package: tiny builds, the store's completeness rule, and the puller.

No network: the tiny models are built locally and the puller reads a fake Hugging Face cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image

from models import build, manifest, pull
from models.build import build_tiny
from models.manifest import TINY_MODELS, Checkpoint
from models.store import COMPLETE_MARKER, MissingModelError, install, model_dir, require_model
from models.tiny_tokenizer import build_clip_tokenizer
from settings import Settings, get_settings

PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[str]]:
    """All tiny models, built once for the module, with the build's log lines."""
    settings = Settings(model_store=tmp_path_factory.mktemp("store"), profile="tiny")
    lines: list[str] = []
    build_tiny(settings, log=lines.append)
    return settings, lines


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    """get_settings() is cached: clear it around tests that change the environment."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# Weight files of every kind the tiny builds write: diffusers/transformers, ONNX (face
# analysis), torch.save (InstantID's ip-adapter.bin).
WEIGHT_SUFFIXES = {".safetensors", ".onnx", ".bin"}


def _weight_files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.suffix in WEIGHT_SUFFIXES
    }


# --- tokenizer ------------------------------------------------------------------------------------


def test_tokenizer_round_trips_through_save_and_load(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    tokenizer = build_clip_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)

    def encode(tok: CLIPTokenizer) -> torch.Tensor:
        return tok(PROMPT, padding="max_length", truncation=True, return_tensors="pt").input_ids

    ids = encode(tokenizer)
    assert ids.shape == (1, 77)
    assert torch.equal(encode(loaded), ids)
    assert len(loaded) == len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(ids[0, :7].tolist())
    assert tokens == [
        "<|startoftext|>",
        "a</w>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "cat</w>",
        "<|endoftext|>",
    ]


# --- tiny build -----------------------------------------------------------------------------------


def test_build_tiny_builds_all_models_then_reports_them_cached(
    tiny_store: tuple[Settings, list[str]],
) -> None:
    settings, first_lines = tiny_store
    assert len(first_lines) == len(TINY_MODELS)
    for index, (name, line) in enumerate(zip(TINY_MODELS, first_lines, strict=True), start=1):
        assert line.startswith(f"[{index}/{len(TINY_MODELS)}] {name}: building")
        assert (model_dir(settings, name) / COMPLETE_MARKER).is_file()
    mtimes = {path: path.stat().st_mtime_ns for path in settings.profile_store().rglob("*")}

    second_lines: list[str] = []
    build_tiny(settings, log=second_lines.append)

    assert all(line.endswith(": cached") for line in second_lines), second_lines
    assert {path: path.stat().st_mtime_ns for path in mtimes} == mtimes
    # Nothing else left beside the models (no staging folders).
    assert sorted(p.name for p in settings.profile_store().iterdir()) == sorted(TINY_MODELS)


def test_a_model_built_by_other_builder_code_is_rebuilt(tmp_path: Path) -> None:
    settings = Settings(model_store=tmp_path, profile="tiny")
    build_tiny(settings, names=["depth-estimator"], log=lambda _: None)
    marker = model_dir(settings, "depth-estimator") / COMPLETE_MARKER
    assert build.builders_fingerprint() in marker.read_text()
    # As if the builders changed since: the old build must not be reused.
    marker.write_text("models.build (tiny, random weights) 0000000000000000\n")
    lines: list[str] = []
    build_tiny(settings, names=["depth-estimator"], log=lines.append)
    assert len(lines) == 1 and ": building" in lines[0]
    assert build.builders_fingerprint() in marker.read_text()


def test_build_tiny_is_deterministic(
    tiny_store: tuple[Settings, list[str]], tmp_path: Path
) -> None:
    settings, _ = tiny_store
    again = Settings(model_store=tmp_path, profile="tiny")
    build_tiny(again, log=lambda line: None)
    for name in TINY_MODELS:
        first = _weight_files(model_dir(settings, name))
        assert first, f"{name} has no weight files"
        assert _weight_files(model_dir(again, name)) == first, name


def test_build_tiny_rejects_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope"):
        build_tiny(Settings(model_store=tmp_path, profile="tiny"), names=["nope"])


def test_build_main_refuses_full_profile(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fresh_settings: None,
) -> None:
    monkeypatch.setenv("DEPTHID_PROFILE", "full")
    monkeypatch.setenv("DEPTHID_MODEL_STORE", str(tmp_path))
    assert build.main([]) == 2
    assert "tiny" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# --- the tiny models load and run with the loaders used for the real weights -------------------


def test_sd15_controlnet_pipeline_loads_and_generates(
    tiny_store: tuple[Settings, list[str]],
) -> None:
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    settings, _ = tiny_store
    controlnet = ControlNetModel.from_pretrained(require_model(settings, "sd15-controlnet-depth"))
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        require_model(settings, "sd15-base"),
        controlnet=controlnet,
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    # The default output size is the tiny profile's long side, as 512 is the real one's.
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == settings.long_side(
        "sd1.5-controlnet-depth"
    )

    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (48, 1, 3))

    def generate(control: np.ndarray) -> np.ndarray:
        return pipe(
            PROMPT,
            image=Image.fromarray(control),
            num_inference_steps=2,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images[0]

    image = generate(ramp)
    assert image.shape == (48, 64, 3)  # the control image's size (64 wide, 48 high)
    assert np.isfinite(image).all()
    # The ControlNet is wired in: another control image gives another result.
    assert np.abs(generate(ramp[:, ::-1].copy()) - image).max() > 1e-3


def test_depth_estimator_loads_and_predicts(tiny_store: tuple[Settings, list[str]]) -> None:
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    settings, _ = tiny_store
    folder = require_model(settings, "depth-estimator")
    model = AutoModelForDepthEstimation.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder)

    image = Image.new("RGB", (64, 48), (200, 120, 40))
    inputs = processor(images=image, return_tensors="pt")
    # Aspect ratio kept, sides multiples of the 14-pixel patch.
    assert inputs.pixel_values.shape == (1, 3, 42, 56)
    with torch.no_grad():
        depth = model(**inputs).predicted_depth
    assert depth.shape == (1, 42, 56)
    assert torch.isfinite(depth).all()


# --- store --------------------------------------------------------------------------------------


def test_require_model_explains_an_absent_model(tmp_path: Path) -> None:
    settings = Settings(model_store=tmp_path, profile="tiny")
    with pytest.raises(MissingModelError) as error:
        require_model(settings, "sd15-base")
    message = str(error.value)
    assert "sd15-base" in message
    assert str(tmp_path / "tiny" / "sd15-base") in message
    assert "make models" in message

    full = Settings(model_store=tmp_path, profile="full")
    with pytest.raises(MissingModelError, match=r"python -m models\.pull --profile full"):
        require_model(full, "sd15-base")


def test_require_model_needs_the_complete_marker(tmp_path: Path) -> None:
    settings = Settings(model_store=tmp_path, profile="tiny")
    folder = model_dir(settings, "depth-estimator")
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(MissingModelError, match=r"depth-estimator.*incomplete"):
        require_model(settings, "depth-estimator")

    (folder / COMPLETE_MARKER).write_text("test\n")
    assert require_model(settings, "depth-estimator") == folder


def test_interrupted_install_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with pytest.raises(RuntimeError), install(target, source="test") as staging:
        (staging / "weights.bin").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


# --- pull, from a fake Hugging Face cache --------------------------------------------------------

FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"
FAKE_FILES = {
    "config.json": b'{"tiny": true}',
    "unet/diffusion_pytorch_model.safetensors": b"fake unet weights",
    "unet/diffusion_pytorch_model.bin": b"not wanted",  # not in allow_patterns
}


def _fake_hub_repo(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """Lay out a repo like the HF hub cache: blobs, refs/main, snapshots/<sha> linking to blobs."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(FAKE_SHA)
    snapshot = repo / "snapshots" / FAKE_SHA
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (name.count("/") + 2), "blobs", blob.name))


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An offline HF cache with two fake repos, and a manifest pointing at them."""
    cache = tmp_path / "hf-cache"
    _fake_hub_repo(cache, "fake-org/tiny-unet", FAKE_FILES)
    _fake_hub_repo(cache, "fake-org/partial", {"config.json": b"{}"})
    patterns = ("config.json", "unet/*.safetensors")
    monkeypatch.setattr(
        manifest,
        "CHECKPOINTS",
        {
            "pinned": Checkpoint("fake-org/tiny-unet", FAKE_SHA, patterns, "by commit sha"),
            "branch": Checkpoint("fake-org/tiny-unet", "main", patterns, "by branch"),
            "partial": Checkpoint("fake-org/partial", FAKE_SHA, patterns, "lacks weights"),
            "absent": Checkpoint("fake-org/absent", FAKE_SHA, patterns, "not in the cache"),
        },
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import time.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_pull_copies_resolved_files_from_the_hub_cache(fake_hub: Path, tmp_path: Path) -> None:
    settings = Settings(model_store=tmp_path / "store", profile="full")
    lines: list[str] = []
    pull.pull(settings, names=["pinned", "branch"], cache_dir=fake_hub, log=lines.append)

    for name in ("pinned", "branch"):
        folder = require_model(settings, name)
        copied = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        assert copied == [
            COMPLETE_MARKER,
            "config.json",
            "unet/diffusion_pytorch_model.safetensors",
        ]
        for relative in copied[1:]:
            path = folder / relative
            assert not path.is_symlink()
            assert path.read_bytes() == FAKE_FILES[relative]
        revision = manifest.CHECKPOINTS[name].revision
        assert (folder / COMPLETE_MARKER).read_text().strip() == f"fake-org/tiny-unet@{revision}"
    assert lines[0] == "[1/2] pinned fake-org/tiny-unet@0123456789ab: fetching ..."
    assert lines[1].startswith("[1/2] pinned fake-org/tiny-unet@0123456789ab: 2 files, 0.0 MB in ")

    again: list[str] = []
    pull.pull(settings, names=["pinned"], cache_dir=fake_hub, log=again.append)
    assert again == ["[1/1] pinned fake-org/tiny-unet@0123456789ab: cached"]
    pull.pull(settings, names=["pinned"], cache_dir=fake_hub, log=again.append, force=True)
    assert again[-1].startswith("[1/1] pinned fake-org/tiny-unet@0123456789ab: 2 files")


def test_pull_names_a_repo_missing_from_the_cache(fake_hub: Path, tmp_path: Path) -> None:
    settings = Settings(model_store=tmp_path / "store", profile="full")
    with pytest.raises(pull.PullError, match=r"^absent: cannot fetch fake-org/absent@"):
        pull.pull(settings, names=["absent"], cache_dir=fake_hub, log=lambda line: None)
    with pytest.raises(pull.PullError, match=r"^partial: .*lacks unet/\*\.safetensors"):
        pull.pull(settings, names=["partial"], cache_dir=fake_hub, log=lambda line: None)
    assert not (tmp_path / "store" / "full" / "absent").exists()
    assert not (tmp_path / "store" / "full" / "partial").exists()


def test_pull_main_exits_non_zero_with_one_line(
    fake_hub: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fresh_settings: None,
) -> None:
    monkeypatch.setenv("DEPTHID_MODEL_STORE", str(tmp_path / "store"))
    argv = ["--profile", "full", "--only", "absent", "--cache-dir", str(fake_hub)]
    assert pull.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "absent" in err and "fake-org/absent" in err
    assert "Traceback" not in err

    argv = ["--profile", "full", "--only", "pinned", "--cache-dir", str(fake_hub)]
    assert pull.main(argv) == 0
    assert (tmp_path / "store" / "full" / "pinned" / COMPLETE_MARKER).is_file()
