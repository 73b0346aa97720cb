"""Tests of the models package: tiny builds and the store's completeness rule.

No network: the tiny models are built locally. The puller has its own tests
(tests/models/test_pull.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models import build
from models.build import build_tiny
from models.manifest import TINY_MODELS
from models.store import COMPLETE_MARKER, MissingModelError, install, model_dir, require_model
from models.tiny_tokenizer import build_clip_tokenizer
from runners.sd15_depth import FULL_LONG_SIDE
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
        FULL_LONG_SIDE
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
