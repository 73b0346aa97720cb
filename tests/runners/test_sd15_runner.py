"""The sd15_depth runner on the tiny models: the real diffusers pipelines, called directly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from runners.schedulers import SCHEDULERS, make_scheduler
from runners.sd15_depth import SD15DepthJob
from tests.support.jobs import pixels
from tests.support.jobs import sd15_job as job


@pytest.fixture(scope="module")
def pipelines(tiny_settings):
    from runners.sd15_pipeline import SD15DepthPipelines

    return SD15DepthPipelines.from_store(tiny_settings)


def test_output_is_a_jpeg_of_the_requested_size(pipelines):
    result = pipelines.run(job())
    [image] = result.images
    decoded = Image.open(io.BytesIO(image))
    assert decoded.format == "JPEG" and decoded.size == (64, 40)
    assert result.seed == 1234 and result.inference_time > 0


def test_png_output(pipelines):
    [image] = pipelines.run(job(output_format="PNG")).images
    assert Image.open(io.BytesIO(image)).format == "PNG"


def test_same_seed_same_bytes_other_seed_other_image(pipelines):
    first = pipelines.run(job(seed=99)).images[0]
    again = pipelines.run(job(seed=99)).images[0]
    other = pipelines.run(job(seed=100)).images[0]
    assert first == again
    assert np.abs(pixels(first) - pixels(other)).mean() > 1.0


def test_samples_use_seed_plus_i(pipelines):
    result = pipelines.run(job(samples=3, seed=500, output_format="PNG"))
    assert len(result.images) == 3
    for i, image in enumerate(result.images):
        alone = pipelines.run(job(samples=1, seed=500 + i, output_format="PNG")).images[0]
        # Same starting noise; a batch of 3 may round a float differently than a batch of 1
        # on the CPU's kernels, so allow two grey levels, far below what another seed gives.
        assert np.abs(pixels(image) - pixels(alone)).max() <= 2, f"sample {i}"
    assert np.abs(pixels(result.images[0]) - pixels(result.images[1])).mean() > 10


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_runs(pipelines, name):
    [image] = pipelines.run(job(scheduler=name, output_format="PNG")).images
    assert pixels(image).shape == (40, 64, 3)


def test_schedulers_switch_per_request_without_leaking(pipelines):
    before = pipelines.run(job(scheduler="UniPC", output_format="PNG")).images[0]
    euler_a = pipelines.run(job(scheduler="Euler a", output_format="PNG")).images[0]
    ddim = pipelines.run(job(scheduler="DDIM", output_format="PNG")).images[0]
    after = pipelines.run(job(scheduler="UniPC", output_format="PNG")).images[0]
    assert before == after  # nothing of Euler a or DDIM stayed behind
    assert before != euler_a and euler_a != ddim
    # The loaded pipeline's own scheduler is never swapped by a request.
    assert type(pipelines.components["scheduler"]).__name__ == "PNDMScheduler"


def count_unet_calls(pipelines, job_: SD15DepthJob) -> tuple[int, bytes]:
    calls = []
    hook = pipelines.components["unet"].register_forward_hook(lambda *_: calls.append(1))
    try:
        image = pipelines.run(job_).images[0]
    finally:
        hook.remove()
    return len(calls), image


def test_strength_is_img2img_strength(pipelines):
    # img2img at strength s runs int(steps * s) denoising steps from the noised input image;
    # strength 1 runs them all from pure noise (the text-to-image form).
    full_steps, from_noise = count_unet_calls(pipelines, job(strength=1.0, output_format="PNG"))
    half_steps, half = count_unet_calls(pipelines, job(strength=0.5, output_format="PNG"))
    assert (full_steps, half_steps) == (20, 10)
    assert half != from_noise
    assert pipelines.run(job(strength=0.5, output_format="PNG")).images[0] == half


def test_depth_map_follows_the_input(pipelines):
    image = job().image.convert("RGB").resize((64, 40))
    depth = pipelines.depth(image, (64, 40))
    assert depth.size == (64, 40) and depth.mode == "RGB"
    # Normalised to the full grey range, and a function of the picture.
    grey = np.asarray(depth)[..., 0]
    assert (grey.min(), grey.max()) == (0, 255)
    assert np.array_equal(np.asarray(pipelines.depth(image, (64, 40))), np.asarray(depth))
    mirrored = pipelines.depth(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (64, 40))
    assert not np.array_equal(np.asarray(mirrored), np.asarray(depth))


# --- prompts: long-prompt weighting -------------------------------------------------------------


def test_an_unweighted_prompt_within_77_tokens_is_as_diffusers_encodes_it(pipelines):
    """Bit-identical to the pipeline called with the text itself (what the runner did before
    long-prompt weighting)."""
    import torch

    row = job(output_format="PNG", num_inference_steps=4)
    ours = pipelines.run(row).images[0]
    size = (row.width, row.height)
    image = row.image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    text = pipelines._pipeline(row.scheduler, img2img=False)(
        prompt=[row.prompt],
        negative_prompt=[row.negative_prompt],
        image=[pipelines.depth(image, size)],
        num_inference_steps=row.num_inference_steps,
        guidance_scale=row.guidance_scale,
        generator=[torch.Generator().manual_seed(row.seed)],
        height=row.height,
        width=row.width,
    ).images[0]
    assert np.array_equal(pixels(ours), np.asarray(text, dtype=np.int16))


def test_prompts_differing_only_after_token_77_give_different_images(pipelines):
    head = " ".join(["photo"] * 80)  # one token each in the tiny vocabulary
    first = pipelines.run(job(prompt=f"{head} of a cat")).images[0]
    other = pipelines.run(job(prompt=f"{head} of a dog")).images[0]
    assert np.abs(pixels(first) - pixels(other)).mean() > 0.5


def test_a_weight_changes_the_image(pipelines):
    plain = pipelines.run(job(prompt="photo of a cat")).images[0]
    weighted = pipelines.run(job(prompt="photo of a (cat:1.5)")).images[0]
    assert np.abs(pixels(plain) - pixels(weighted)).mean() > 0.5


def test_the_tiny_scheduler_config_does_not_clip_as_the_real_one(pipelines):
    assert pipelines.scheduler_config["clip_sample"] is False
    for name in ("DDIM", "DDPM"):
        assert make_scheduler(name, pipelines.scheduler_config).config.clip_sample is False
