"""The instantid runner on the tiny models: real insightface, real diffusers modules, called
directly. Tiny output is noise; what is checked is what reaches the pipeline and what changes it.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention
from PIL import Image

from models.manifest import INSTANTID_IP_ADAPTER_FILE
from models.store import require_model
from runners.instantid import InstantIDJob
from runners.instantid_sampler import Sample, SampleRequest, sample
from runners.ip_adapter_attention import FaceAdapterAttnProcessor, SelfAttnProcessor
from tests.support.face_images import face_picture, payload_face, payload_pose
from tests.support.jobs import instantid_job as job
from tests.support.jobs import pixels


@pytest.fixture(scope="module")
def pipelines(tiny_settings):
    from runners.instantid_pipeline import InstantIDPipelines

    return InstantIDPipelines.from_store(tiny_settings)


FACE = payload_face()
POSE = payload_pose()
# Same framing as POSE, the face elsewhere: other keypoints, same everything else.
OTHER_POSE = face_picture(192, 256, [(80, 150, 36)], body=True)
# Another identity: the same disc with a pale band over the eyes.
OTHER_FACE = payload_face()
OTHER_FACE.paste((250, 250, 250), (90, 95, 166, 108))


def depth_job(**fields) -> InstantIDJob:
    return job(pose_image=POSE, depth_strength=0.5, **fields)


def image_of(pipelines, job_: InstantIDJob, index: int = 0) -> bytes:
    result = pipelines.run(job_)
    assert result.failure is None, result.failure
    return result.images[index]


def differ(a: bytes, b: bytes) -> float:
    return float(np.abs(pixels(a) - pixels(b)).mean())


def forward_calls(module: torch.nn.Module, pipelines, job_: InstantIDJob) -> tuple[int, bytes]:
    calls = []
    hook = module.register_forward_hook(lambda *_: calls.append(1))
    try:
        image = image_of(pipelines, job_)
    finally:
        hook.remove()
    return len(calls), image


# --- output ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make_job", [job, depth_job], ids=["instantid", "insta-depth"])
def test_output_is_a_jpeg_of_the_job_size(pipelines, make_job):
    result = pipelines.run(make_job(output_format="JPEG", width=128, height=64))
    [image] = result.images
    decoded = Image.open(io.BytesIO(image))
    assert decoded.format == "JPEG" and decoded.size == (128, 64)
    assert result.seed == 1234 and result.inference_time > 0


def test_same_seed_same_bytes_other_seed_other_image(pipelines):
    first = image_of(pipelines, job(seed=7))
    assert image_of(pipelines, job(seed=7)) == first
    assert differ(image_of(pipelines, job(seed=8)), first) > 1.0


def test_samples_use_seed_plus_i(pipelines):
    result = pipelines.run(job(samples=3, seed=500))
    assert len(result.images) == 3
    for i, image in enumerate(result.images):
        alone = image_of(pipelines, job(seed=500 + i))
        # A batch may round a float differently from a batch of one on the CPU's kernels.
        assert np.abs(pixels(image) - pixels(alone)).max() <= 2, f"sample {i}"
    assert differ(result.images[0], result.images[1]) > 1.0


# --- no face --------------------------------------------------------------------------------


BLANK = Image.new("RGB", (96, 96), (30, 30, 30))


@pytest.mark.parametrize(
    ("job_", "field"),
    [
        (job(face_image=BLANK), "face_image"),
        (job(face_image=BLANK, pose_image=POSE), "face_image"),
        (job(pose_image=BLANK), "pose_image"),
        (job(pose_image=BLANK, depth_strength=0.5), "pose_image"),
    ],
    ids=["instantid face", "instantid face with pose", "instantid pose", "insta-depth pose"],
)
def test_no_face_fails_the_job_naming_the_field(pipelines, job_, field):
    result = pipelines.run(job_)
    assert result.images == []
    assert result.failure.kind == "invalid_input" and result.failure.field == field
    assert field in result.failure.message


# --- what each setting changes ---------------------------------------------------------------


def test_zero_identity_strength_is_no_identitynet(pipelines):
    calls, without = forward_calls(pipelines.identitynet, pipelines, job(identity_strength=0))
    assert calls == 0
    # Without the IdentityNet the keypoints cannot matter; with it they do. (The face box still
    # would with enhance_face_region: it confines the face attention too.)
    unposed = [
        image_of(pipelines, job(identity_strength=0, pose_image=p, enhance_face_region=False))
        for p in (POSE, OTHER_POSE)
    ]
    assert unposed[0] == unposed[1]
    calls, with_identity = forward_calls(pipelines.identitynet, pipelines, job())
    assert calls == 4  # one call per step (both guidance halves in one batch)
    assert differ(with_identity, without) > 1.0
    posed, posed_elsewhere = (image_of(pipelines, job(pose_image=p)) for p in (POSE, OTHER_POSE))
    assert differ(posed, posed_elsewhere) > 1.0
    assert differ(image_of(pipelines, job(identity_strength=0.4)), with_identity) > 0.5


def test_adapter_strength_scales_the_face_embedding(pipelines):
    # identity_strength 0 leaves the adapter as the face's only way in; acting everywhere, not
    # confined to the face box.
    def run(strength: float, face: Image.Image) -> bytes:
        fields = {"identity_strength": 0, "enhance_face_region": False, "pose_image": POSE}
        return image_of(pipelines, job(adapter_strength=strength, face_image=face, **fields))

    assert run(0, FACE) == run(0, OTHER_FACE)  # no adapter: the identity cannot matter
    assert differ(run(0.8, FACE), run(0.8, OTHER_FACE)) > 0.5
    assert differ(run(0.8, FACE), run(0, FACE)) > 0.5
    assert differ(run(0.8, FACE), run(0.3, FACE)) > 0.2


def test_enhance_face_region_changes_the_output(pipelines):
    enhanced = image_of(pipelines, job(enhance_face_region=True))
    assert differ(image_of(pipelines, job(enhance_face_region=False)), enhanced) > 0.5


def test_insta_depth_adds_the_depth_controlnet(pipelines):
    calls, with_depth = forward_calls(pipelines.depth_controlnet, pipelines, depth_job())
    assert calls == 4
    without, _ = forward_calls(pipelines.depth_controlnet, pipelines, job(pose_image=POSE))
    assert without == 0
    assert differ(image_of(pipelines, job(pose_image=POSE)), with_depth) > 0.5


# --- isolation: nothing of one request stays for, or leaks into, another ----------------------

A = {"identity_strength": 0.2, "adapter_strength": 0.3, "enhance_face_region": False}
B = {"identity_strength": 0.9, "adapter_strength": 1.0, "pose_image": OTHER_POSE}


def test_requests_do_not_leak_into_each_other(pipelines):
    first = image_of(pipelines, job(**A))
    other = image_of(pipelines, depth_job(samples=2, identity_strength=1.0, adapter_strength=0.1))
    assert image_of(pipelines, job(**A)) == first
    assert differ(other, first) > 1.0


def test_concurrent_requests_equal_requests_alone(pipelines):
    alone = {"a": image_of(pipelines, job(**A)), "b": image_of(pipelines, job(**B))}
    together: dict[str, bytes] = {}

    def run(name: str, fields: dict) -> None:
        together[name] = image_of(pipelines, job(**fields))

    threads = [threading.Thread(target=run, args=item) for item in (("a", A), ("b", B))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone
    assert alone["a"] != alone["b"]


def test_the_shared_unet_holds_no_per_request_scale(pipelines):
    pipelines.run(job(adapter_strength=0.37))
    processors = pipelines.components["unet"].attn_processors.values()
    kinds = {type(processor) for processor in processors}
    assert kinds == {FaceAdapterAttnProcessor, SelfAttnProcessor}
    assert not any(hasattr(processor, "scale") for processor in processors)
    assert pipelines.components["unet"].encoder_hid_proj is None


# --- the tiny IP-Adapter file has InstantID's layout -------------------------------------------


def test_ip_adapter_file_has_instantids_layout(tiny_settings):
    path = require_model(tiny_settings, "instantid") / INSTANTID_IP_ADAPTER_FILE
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == {"image_proj", "ip_adapter"}
    image_proj = state["image_proj"]
    assert image_proj["latents"].shape[1] == 16  # face tokens
    assert image_proj["proj_in.weight"].shape[1] == 512  # the ArcFace embedding
    assert "layers.0.0.to_kv.weight" in image_proj and "layers.3.1.3.weight" in image_proj
    keys = sorted(state["ip_adapter"], key=lambda key: int(key.split(".")[0]))
    assert keys[:2] == ["1.to_k_ip.weight", "1.to_v_ip.weight"]
    assert all(int(key.split(".")[0]) % 2 == 1 for key in keys)  # cross-attention layers only


# --- as InstantID's demo computes it ------------------------------------------------------------


def _face_sample(pipelines, adapter_mask: Image.Image | None, adapter_scale: float) -> Sample:
    embedding = pipelines.faces.largest_face(FACE).embedding
    return Sample(
        prompt="photo of a man",
        negative_prompt="lowquality",
        face_embedding=embedding,
        adapter_scale=adapter_scale,
        controls=[],
        seed=3,
        adapter_mask=adapter_mask,
    )


def _sampled(pipelines, samples: list[Sample]) -> list[np.ndarray]:
    request = SampleRequest(
        samples=samples, num_inference_steps=3, guidance_scale=5.0, width=64, height=64
    )
    images = sample(pipelines._pipeline(), pipelines.face_projection, request)
    return [np.asarray(image, dtype=np.int16) for image in images]


def test_outside_the_face_mask_the_adapter_adds_nothing(pipelines):
    """A layer's face attention is multiplied by the mask on its token grid: masked out
    everywhere, the face changes nothing at all; a mask of ones is no mask."""
    black = Image.new("L", (64, 64), 0)
    white = Image.new("L", (64, 64), 255)
    [no_face] = _sampled(pipelines, [_face_sample(pipelines, None, 0.0)])
    [masked_out] = _sampled(pipelines, [_face_sample(pipelines, black, 0.8)])
    [ones] = _sampled(pipelines, [_face_sample(pipelines, white, 0.8)])
    [unmasked] = _sampled(pipelines, [_face_sample(pipelines, None, 0.8)])
    assert np.array_equal(masked_out, no_face)
    assert np.array_equal(ones, unmasked)
    assert np.abs(unmasked - no_face).mean() > 0.5


def test_face_attention_is_zero_off_the_mask_in_every_layer():
    """The processor itself: rows of tokens the mask leaves out get exactly the text attention."""
    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    processor = FaceAdapterAttnProcessor(torch.nn.Linear(6, 8), torch.nn.Linear(6, 8))
    hidden = torch.randn(2, 16, 8)  # a 4 x 4 token grid
    context = (torch.randn(2, 5, 6), torch.randn(2, 3, 6))
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, :16, :16] = 1  # row 0: the top-left quarter; row 1: nothing
    text_only = processor(attn, hidden, context, ip_adapter_scale=0.0)
    with_face = processor(attn, hidden, context, ip_adapter_scale=0.8, ip_adapter_mask=mask)
    inside = torch.zeros(2, 16, dtype=torch.bool)
    inside[0] = torch.tensor([r < 2 and c < 2 for r in range(4) for c in range(4)])
    assert torch.equal(with_face[~inside], text_only[~inside])
    assert not torch.isclose(with_face[inside], text_only[inside]).all(dim=-1).any()


def test_enhance_face_region_on_and_off_batched_equal_alone(pipelines):
    """The mask is per sample: one with the option off gets ones and is as alone."""
    rows = [job(enhance_face_region=True), job(enhance_face_region=False, seed=99)]
    together = pipelines.run_batch(rows)
    assert {result.batch_size for result in together} == {2}
    for row, result in zip(rows, together, strict=True):
        alone = image_of(pipelines, row)
        assert np.abs(pixels(result.images[0]) - pixels(alone)).max() <= 2


def test_prompts_differing_only_after_token_77_give_different_images(pipelines):
    head = " ".join(["photo"] * 80)  # one token each in the tiny vocabulary
    first = image_of(pipelines, job(prompt=f"{head} of a cat"))
    assert differ(image_of(pipelines, job(prompt=f"{head} of a dog")), first) > 0.5


# Prompts of other lengths share a call, padded and masked, and each equals its image alone:
# tests/runners/test_batching.py.
