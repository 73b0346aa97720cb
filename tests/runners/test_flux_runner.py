"""The flux_depth runner on the tiny models: the real pipeline, classifier and filters, called
directly. Safety thresholds are checked with the real tiny classifier driven to known scores."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from runners.encoding import encode_image
from runners.prompt_filter import PromptFilter, read_terms
from runners.safety import is_blocked, threshold_for
from runners.upsampler import LLMUpsampler, RuleUpsampler, make_upsampler
from settings import DEFAULT_SAFETY_THRESHOLDS, Settings
from tests.support.flux_helpers import drive_score, restored_classifier
from tests.support.helpers import scene_image
from tests.support.jobs import flux_job as job
from tests.support.jobs import pixels

TOLERANCES = range(1, len(DEFAULT_SAFETY_THRESHOLDS) + 1)
SCORE_MARGIN = 1e-3  # how far either side of a threshold the driven score lands


@pytest.fixture(scope="module")
def pipeline(tiny_settings):
    from runners.flux_pipeline import FluxDepthPipeline

    return FluxDepthPipeline.from_store(tiny_settings)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- the safety classifier, driven to chosen scores (tests/support/flux_helpers.py) -----------


def test_the_tiny_classifier_scores_images(pipeline):
    checker = pipeline.safety
    scene = decode(scene_image(96, 64))
    noise = Image.effect_noise((64, 48), 80).convert("RGB")
    scores = [checker.score(scene), checker.score(noise)]
    # Built to lean to "normal" like a real one on ordinary pictures, and image-dependent.
    assert all(0 < score < DEFAULT_SAFETY_THRESHOLDS[0] for score in scores), scores
    assert scores[0] != scores[1]


def test_drive_score_pins_the_given_image_only(pipeline):
    checker = pipeline.safety
    scene = decode(scene_image(96, 64))
    other = Image.effect_noise((64, 48), 80).convert("RGB")
    with restored_classifier(checker):
        drive_score(checker, scene, 0.6)
        assert checker.score(scene) == pytest.approx(0.6, abs=1e-5)
        assert checker.score(other) != pytest.approx(0.6, abs=1e-5)


@pytest.mark.parametrize("tolerance", TOLERANCES)
def test_every_tolerance_threshold_from_both_sides(pipeline, tolerance):
    checker = pipeline.safety
    image = decode(scene_image(96, 64))
    threshold = threshold_for(tolerance, checker.thresholds)
    with restored_classifier(checker):
        drive_score(checker, image, threshold - SCORE_MARGIN)
        assert not checker.blocks(checker.score(image), tolerance)
        drive_score(checker, image, threshold + SCORE_MARGIN)
        assert checker.blocks(checker.score(image), tolerance)
        # One score, every tolerance: blocked exactly at the strict ones.
        score = checker.score(image)
        blocked = [t for t in TOLERANCES if checker.blocks(score, t)]
        assert blocked == list(range(1, tolerance + 1))


def test_threshold_table_and_exact_boundary():
    assert [threshold_for(t, DEFAULT_SAFETY_THRESHOLDS) for t in TOLERANCES] == [
        0.10, 0.20, 0.35, 0.50, 0.70, 0.90,
    ]  # fmt: skip
    for tolerance in TOLERANCES:
        threshold = threshold_for(tolerance, DEFAULT_SAFETY_THRESHOLDS)
        assert is_blocked(threshold, tolerance, DEFAULT_SAFETY_THRESHOLDS)  # at: blocked
        below = math.nextafter(threshold, 0.0)
        assert not is_blocked(below, tolerance, DEFAULT_SAFETY_THRESHOLDS)
    for tolerance in (0, 7):
        with pytest.raises(ValueError):
            threshold_for(tolerance, DEFAULT_SAFETY_THRESHOLDS)


def test_thresholds_are_a_validated_setting(monkeypatch):
    monkeypatch.setenv("DEPTHID_SAFETY_THRESHOLDS", "0, 0.1,0.1, 0.5,0.8,1")
    assert Settings().safety_thresholds == [0.0, 0.1, 0.1, 0.5, 0.8, 1.0]
    for bad in ("0.1,0.2,0.3", "0.5,0.4,0.6,0.7,0.8,0.9", "0.1,0.2,0.3,0.4,0.5,1.5"):
        monkeypatch.setenv("DEPTHID_SAFETY_THRESHOLDS", bad)
        with pytest.raises(ValidationError, match="safety_thresholds"):
            Settings()


# --- generation ---------------------------------------------------------------------------------


def test_output_formats_and_size(pipeline):
    png = pipeline.run(job(output_format="PNG"))
    jpg = pipeline.run(job(output_format="JPEG"))
    assert decode(png.images[0]).format == "PNG" and decode(jpg.images[0]).format == "JPEG"
    for result in (png, jpg):
        [image] = result.images
        assert decode(image).size == (64, 48)
        assert result.failure is None and result.prompt_used is None
        assert result.seed == 96522 and result.inference_time > 0
    # The same picture in both: the JPEG is exactly the PNG's pixels, JPEG-encoded.
    assert jpg.images[0] == encode_image(decode(png.images[0]), "JPEG")
    assert png.images[0] != jpg.images[0]


def test_same_seed_same_bytes_other_seed_other_image(pipeline):
    first = pipeline.run(job(seed=96522)).images[0]
    again = pipeline.run(job(seed=96522)).images[0]
    other = pipeline.run(job(seed=96523)).images[0]
    assert first == again
    assert np.abs(pixels(first) - pixels(other)).mean() > 1.0


def test_steps_guidance_and_control_image_drive_the_transformer(pipeline):
    calls = []
    hook = pipeline.pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    try:
        base = pipeline.run(job(steps=17)).images[0]
    finally:
        hook.remove()
    assert len(calls) == 17
    other_guidance = pipeline.run(job(steps=17, guidance=30.0)).images[0]
    mirrored = job(steps=17).control_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    other_control = pipeline.run(job(steps=17, control_image=mirrored)).images[0]
    assert base != other_guidance and base != other_control


def test_the_depth_map_is_the_control(pipeline):
    control = job().control_image.convert("RGB").resize((64, 48))
    depth = pipeline.depth(control, (64, 48))
    assert depth.size == (64, 48)
    grey = np.asarray(depth)[..., 0]
    assert (grey.min(), grey.max()) == (0, 255)


# --- blocked results ------------------------------------------------------------------------


def test_a_blocked_image_is_a_failure_without_images(pipeline):
    allowed = pipeline.run(job())
    [data] = allowed.images
    generated = decode(data).convert("RGB")  # PNG: exactly the pixels the classifier saw
    between = (DEFAULT_SAFETY_THRESHOLDS[1] + DEFAULT_SAFETY_THRESHOLDS[2]) / 2
    with restored_classifier(pipeline.safety):
        drive_score(pipeline.safety, generated, between)
        blocked = pipeline.run(job(safety_tolerance=2))
        assert blocked.images == []
        assert blocked.failure is not None and blocked.failure.kind == "blocked"
        assert "safety_tolerance 2" in blocked.failure.message
        assert pipeline.run(job(safety_tolerance=1)).failure is not None
        # More permissive tolerances let the very same image through.
        for tolerance in (3, 6):
            result = pipeline.run(job(safety_tolerance=tolerance))
            assert result.failure is None and result.images == [data]


def test_a_prompt_with_a_listed_term_is_blocked_before_generating(pipeline):
    calls = []
    hook = pipeline.pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    try:
        result = pipeline.run(job(prompt="a NUDE figure by a lake"))
    finally:
        hook.remove()
    assert calls == [] and result.images == []
    assert result.failure.kind == "blocked" and "'nude'" in result.failure.message


def test_an_upsampled_prompt_is_screened_too(pipeline, monkeypatch):
    monkeypatch.setattr(pipeline, "upsampler", lambda prompt: f"{prompt}, gory details")
    result = pipeline.run(job(prompt_upsampling=True))
    assert result.images == [] and "upsampled prompt" in result.failure.message
    assert result.prompt_used == "a house by a lake, gory details"


# --- prompt upsampling -------------------------------------------------------------------------


def test_upsampling_changes_the_prompt_used_and_the_image(pipeline):
    plain = pipeline.run(job())
    upsampled = pipeline.run(job(prompt_upsampling=True))
    assert upsampled.prompt_used == RuleUpsampler()("a house by a lake")
    assert upsampled.prompt_used.startswith("a house by a lake, ")
    assert upsampled.images != plain.images  # the expanded prompt is what was generated from
    assert pipeline.run(job(prompt_upsampling=True)).images == upsampled.images


def test_rule_upsampler_is_deterministic_and_follows_the_words():
    upsample = RuleUpsampler()
    prompt = "A red barn in a snowy field"
    expanded = upsample(prompt)
    assert expanded.startswith(prompt + ", ") and len(expanded.split(", ")) == 5
    assert upsample(prompt) == expanded
    assert upsample("a red BARN in a snowy field.") == upsample(prompt).replace(
        "A red barn", "a red BARN"
    )  # the same words pick the same clauses, whatever the case or punctuation
    others = {upsample(p).removeprefix(p) for p in ("a cat", "a dog", "a ship", "a tower")}
    assert len(others) > 1


def test_make_upsampler_picks_by_setting_and_profile(tmp_path: Path):
    cpu = torch.device("cpu")
    tiny = Settings(profile="tiny", model_store=tmp_path)
    assert isinstance(make_upsampler(tiny, cpu, torch.float32), RuleUpsampler)
    full = Settings(profile="full", model_store=tmp_path, prompt_upsampler="rules")
    assert isinstance(make_upsampler(full, cpu, torch.float32), RuleUpsampler)


def test_llm_upsampler_runs_a_local_causal_lm(tmp_path: Path):
    """The `full` default's code path, on a tiny random Qwen2 built here (its text is noise)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from models.store import install, model_dir
    from models.tiny_tokenizer import build_clip_tokenizer

    settings = Settings(profile="full", model_store=tmp_path, upsampler_max_new_tokens=8)
    tokenizer = build_clip_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    with install(model_dir(settings, "prompt-upsampler"), source="test") as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    upsample = make_upsampler(settings, torch.device("cpu"), torch.float32)
    assert isinstance(upsample, LLMUpsampler)
    first = upsample("a cat")
    assert isinstance(first, str) and first
    assert upsample("a cat") == first  # greedy: deterministic


# --- the term list -----------------------------------------------------------------------------


def test_term_list_file(tmp_path: Path):
    path = tmp_path / "terms.txt"
    path.write_text("# comment\n\n  Nude  \nexplicit sex  # phrase\ngore\n", encoding="utf-8")
    assert read_terms(path) == ["nude", "explicit sex", "gore"]
    terms = PromptFilter.from_file(path)
    assert terms.blocked_term("A nude statue") == "nude"
    assert terms.blocked_term("an EXPLICIT-sex scene") == "explicit sex"
    assert terms.blocked_term("explicit_sex") == "explicit sex"
    assert terms.blocked_term("explicit  sex") == "explicit sex"
    # Whole words only: longer words that merely contain a term pass.
    for prompt in ("nudeln in a bowl", "a gorey street", "gorgeous explicitly sexy"):
        assert terms.blocked_term(prompt) is None, prompt


def test_the_shipped_list_is_the_setting(tmp_path: Path):
    shipped = Settings().blocked_terms_file
    assert shipped.is_file() and "nude" in read_terms(shipped)
    assert PromptFilter.from_file(shipped).blocked_term("a house by a lake") is None
    custom = tmp_path / "terms.txt"
    custom.write_text("lake\n", encoding="utf-8")
    settings = Settings(blocked_terms_file=custom)
    assert PromptFilter.from_file(settings.blocked_terms_file).blocked_term("a lake") == "lake"


# --- the T5 limit ------------------------------------------------------------------------------


def test_a_prompt_past_the_t5_limit_is_marked_truncated(pipeline):
    """Flux keeps its T5 limit (tiny: 64 tokens); the result says when the prompt was cut."""
    assert pipeline.run(job(prompt="a house by a lake")).prompt_truncated is False
    long_prompt = " ".join(["a house by a lake"] * 40)
    result = pipeline.run(job(prompt=long_prompt))
    assert result.failure is None and result.prompt_truncated is True
