"""runners/acceleration.py on the CPU: which accelerations the settings resolve to, what each
apply function changes on the tiny models (and that their output stays the same), the NaN guard,
the start-up warm-up and the start-up line of every runner."""

from __future__ import annotations

import copy
import importlib
import io
import logging

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    FluxControlPipeline,
    FluxTransformer2DModel,
    StableDiffusionControlNetPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
)
from PIL import Image
from pydantic import ValidationError

from models.store import require_model
from runners import acceleration
from runners.acceleration import (
    Accelerations,
    NonFiniteOutputError,
    apply_attention,
    apply_channels_last,
    apply_compile,
    apply_fused_qkv,
    guard_finite_decode,
    log_accelerations,
    resolve_accelerations,
)
from runners.ip_adapter_attention import FaceAdapterAttnProcessor, SelfAttnProcessor
from runners.sd15_depth import SD15DepthJob
from settings import Settings
from tests.support.helpers import scene_image

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # resolution only looks at the device's type: no GPU needed
ALL_ON = {"channels_last": "on", "fuse_qkv": "on"}


# --- resolution -------------------------------------------------------------------------------


def test_on_the_cpu_everything_is_off_by_default():
    resolved = resolve_accelerations(Settings(), CPU, gpu_dtype=torch.float16)
    assert resolved == Accelerations(
        dtype=torch.float32,
        attention="sdpa",
        channels_last=False,
        fuse_qkv=False,
        compile=False,
        compile_mode="max-autotune-no-cudagraphs",
        warmup=False,
    )


@pytest.mark.parametrize("gpu_dtype", [torch.float16, torch.bfloat16])
def test_on_cuda_everything_but_compile_is_on_by_default(gpu_dtype):
    resolved = resolve_accelerations(Settings(), CUDA, gpu_dtype=gpu_dtype)
    assert resolved.dtype == gpu_dtype and resolved.attention == "sdpa"
    assert resolved.channels_last and resolved.fuse_qkv and resolved.warmup
    assert not resolved.compile


def test_explicit_settings_override_auto():
    off = Settings(channels_last="off", fuse_qkv="off", warmup="off", dtype="float32")
    resolved = resolve_accelerations(off, CUDA, gpu_dtype=torch.float16)
    assert resolved.dtype == torch.float32
    assert not (resolved.channels_last or resolved.fuse_qkv or resolved.warmup)
    on = Settings(compile="on", compile_mode="default", **ALL_ON, warmup="on")
    resolved = resolve_accelerations(on, CPU, gpu_dtype=torch.float16)
    assert resolved.channels_last and resolved.fuse_qkv and resolved.warmup
    assert resolved.compile and resolved.compile_mode == "default"
    # compile "auto" follows the device like the others
    assert resolve_accelerations(Settings(compile="auto"), CUDA, torch.float16).compile
    assert not resolve_accelerations(Settings(compile="auto"), CPU, torch.float16).compile


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DEPTHID_CHANNELS_LAST", "off")
    monkeypatch.setenv("DEPTHID_COMPILE", "on")
    monkeypatch.setenv("DEPTHID_COMPILE_MODE", "max-autotune")
    resolved = resolve_accelerations(Settings(), CUDA, gpu_dtype=torch.float16)
    assert not resolved.channels_last and resolved.fuse_qkv
    assert resolved.compile and resolved.compile_mode == "max-autotune"
    monkeypatch.setenv("DEPTHID_FUSE_QKV", "yes please")
    with pytest.raises(ValidationError, match="fuse_qkv"):
        Settings()


def test_float16_on_the_cpu_is_a_start_up_error():
    with pytest.raises(RuntimeError, match="DEPTHID_DTYPE=float16 needs CUDA"):
        resolve_accelerations(Settings(dtype="float16"), CPU, gpu_dtype=torch.float16)
    # bfloat16 is allowed on the CPU when asked for
    resolved = resolve_accelerations(Settings(dtype="bfloat16"), CPU, gpu_dtype=torch.float16)
    assert resolved.dtype == torch.bfloat16


def test_xformers_needs_cuda_and_the_package(monkeypatch):
    with pytest.raises(RuntimeError, match="xformers needs CUDA"):
        resolve_accelerations(Settings(attention="xformers"), CPU, torch.float16)
    monkeypatch.setattr(acceleration.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="xformers is not installed"):
        resolve_accelerations(Settings(attention="xformers"), CUDA, torch.float16)
    monkeypatch.setattr(acceleration.importlib.util, "find_spec", lambda name: object())
    assert resolve_accelerations(Settings(attention="xformers"), CUDA, torch.float16).attention == (
        "xformers"
    )


# --- the apply functions on the tiny SD1.5 modules --------------------------------------------


@pytest.fixture
def sd15(tiny_settings) -> dict[str, torch.nn.Module]:
    """Fresh tiny SD1.5 UNet, depth ControlNet and VAE (each test changes them)."""
    base = require_model(tiny_settings, "sd15-base")
    return {
        "unet": UNet2DConditionModel.from_pretrained(base, subfolder="unet").eval(),
        "controlnet": ControlNetModel.from_pretrained(
            require_model(tiny_settings, "sd15-controlnet-depth")
        ).eval(),
        "vae": AutoencoderKL.from_pretrained(base, subfolder="vae").eval(),
    }


@torch.no_grad()
def sd15_outputs(modules: dict[str, torch.nn.Module]) -> list[torch.Tensor]:
    """One denoising step with ControlNet residuals, and one VAE decode, on seeded inputs."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(1, 77, modules["unet"].config.cross_attention_dim, generator=generator)
    control = torch.rand(1, 3, 64, 64, generator=generator)
    down, mid = modules["controlnet"](
        latents, 10, encoder_hidden_states=text, controlnet_cond=control, return_dict=False
    )
    noise = modules["unet"](
        latents,
        10,
        encoder_hidden_states=text,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
        return_dict=False,
    )[0]
    return [noise, modules["vae"].decode(latents, return_dict=False)[0]]


def assert_close(before: list[torch.Tensor], after: list[torch.Tensor]) -> None:
    for one, other in zip(before, after, strict=True):
        torch.testing.assert_close(other, one, rtol=1e-4, atol=1e-4)


def test_channels_last_changes_the_weights_layout_not_the_output(sd15):
    before = sd15_outputs(sd15)
    note = apply_channels_last(sd15)
    for module in (sd15["unet"], sd15["controlnet"], sd15["vae"].decoder):
        weight = module.conv_in.weight
        assert weight.is_contiguous(memory_format=torch.channels_last)
        assert not weight.is_contiguous()
    assert note == "on[unet, controlnet, vae]"
    assert_close(before, sd15_outputs(sd15))


def test_attention_makes_sdpa_explicit(sd15):
    sd15["unet"].set_attn_processor(AttnProcessor())  # the classic, non-SDPA processor
    before = sd15_outputs(sd15)
    note = apply_attention(sd15, "sdpa")
    for module in sd15.values():
        assert {type(p) for p in module.attn_processors.values()} == {AttnProcessor2_0}
    assert note == "sdpa[unet, controlnet, vae]"
    assert_close(before, sd15_outputs(sd15))


def test_attention_keeps_processors_of_our_own(sd15):
    unet = sd15["unet"]
    unet.set_attn_processor(SelfAttnProcessor())
    note = apply_attention({"unet": unet}, "sdpa")
    assert {type(p) for p in unet.attn_processors.values()} == {SelfAttnProcessor}
    assert note == f"sdpa[unet ({len(unet.attn_processors)} own processors kept)]"


def test_fused_qkv_fuses_every_attention_layer(sd15):
    before = sd15_outputs(sd15)
    note = apply_fused_qkv(sd15, "sdpa")
    for module in sd15.values():
        layers = [layer for layer in module.modules() if isinstance(layer, Attention)]
        assert layers and all(layer.fused_projections for layer in layers)
        for layer in layers:
            fused = layer.to_kv if layer.is_cross_attention else layer.to_qkv
            assert fused.out_features == layer.inner_dim * (2 if layer.is_cross_attention else 3)
        assert {type(p) for p in module.attn_processors.values()} == {FusedAttnProcessor2_0}
    assert note == "on[unet, controlnet, vae]"
    assert_close(before, sd15_outputs(sd15))


def test_fused_qkv_skips_a_module_with_processors_of_our_own_and_says_why(sd15, caplog):
    unet = sd15["unet"]
    unet.set_attn_processor(SelfAttnProcessor())
    with caplog.at_level(logging.INFO, logger="runners.acceleration"):
        note = apply_fused_qkv({"unet": unet, "vae": sd15["vae"]}, "sdpa")
    assert note.startswith("on[vae] skipped[unet: it has attention processors of its own")
    assert "fused QKV projections skipped for unet" in caplog.text
    assert {type(p) for p in unet.attn_processors.values()} == {SelfAttnProcessor}
    assert not any(getattr(layer, "fused_projections", False) for layer in unet.modules())


def test_fused_qkv_is_skipped_with_xformers(sd15):
    note = apply_fused_qkv({"vae": sd15["vae"]}, "xformers")
    assert note == "on[] skipped[vae: the fused processor is SDPA only, and xformers is the " + (
        "chosen attention]"
    )


def test_compile_wraps_the_forward_in_place(sd15):
    unet = sd15["unet"]
    note = apply_compile({"unet": unet}, "default")  # compiles at the first call: not made here
    assert isinstance(unet, UNet2DConditionModel)
    assert unet._compiled_call_impl is not None
    assert note == "default[unet]"


# --- Flux: dispatched attention ----------------------------------------------------------------


@pytest.fixture
def flux_transformer(tiny_settings) -> FluxTransformer2DModel:
    folder = require_model(tiny_settings, "flux-depth-dev")
    return FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer").eval()


@torch.no_grad()
def flux_output(transformer: FluxTransformer2DModel) -> torch.Tensor:
    config = transformer.config
    generator = torch.Generator().manual_seed(0)
    image_tokens, text_tokens = 16, 8
    return transformer(
        hidden_states=torch.randn(1, image_tokens, config.in_channels, generator=generator),
        encoder_hidden_states=torch.randn(
            1, text_tokens, config.joint_attention_dim, generator=generator
        ),
        pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=generator),
        timestep=torch.tensor([0.5]),
        img_ids=torch.rand(image_tokens, 3, generator=generator),
        txt_ids=torch.zeros(text_tokens, 3),
        guidance=torch.tensor([3.5]),
        return_dict=False,
    )[0]


def test_flux_gets_the_backend_and_fused_projections(flux_transformer):
    before = flux_output(flux_transformer)
    assert apply_attention({"transformer": flux_transformer}, "sdpa") == "sdpa[transformer]"
    assert apply_channels_last({"transformer": flux_transformer}) == "on[]"  # no convolutions
    assert apply_fused_qkv({"transformer": flux_transformer}, "sdpa") == "on[transformer]"
    layers = [m for m in flux_transformer.modules() if hasattr(m, "fused_projections")]
    assert layers and all(layer.fused_projections for layer in layers)
    assert all(hasattr(layer, "to_qkv") for layer in layers)
    backends = {p._attention_backend for p in flux_transformer.attn_processors.values()}
    assert {str(getattr(b, "value", b)) for b in backends} == {"native"}
    torch.testing.assert_close(flux_output(flux_transformer), before, rtol=1e-4, atol=1e-4)


# --- fused QKV frees the separate projections -------------------------------------------------


def parameter_count(modules: dict[str, torch.nn.Module]) -> int:
    return sum(p.numel() for module in modules.values() for p in module.parameters())


def fused_projection_count(modules: dict[str, torch.nn.Module]) -> int:
    """Parameters of the fused projections: as many as the separate ones they were copied from."""
    return sum(
        p.numel()
        for module in modules.values()
        for layer in module.modules()
        if getattr(layer, "fused_projections", False)
        for name in ("to_qkv", "to_kv", "to_added_qkv")
        if getattr(layer, name, None) is not None
        for p in getattr(layer, name).parameters()
    )


def fuse_keeping_and_freeing(
    modules: dict[str, torch.nn.Module], monkeypatch: pytest.MonkeyPatch
) -> dict[str, torch.nn.Module]:
    """Fuse a copy of `modules` as diffusers alone does (the separate projections kept) and
    `modules` themselves as the runners do (freed); returns the copy."""
    kept = copy.deepcopy(modules)
    with monkeypatch.context() as patch:
        patch.setattr(acceleration, "free_unfused_projections", lambda module: 0)
        apply_fused_qkv(kept, "sdpa")
    apply_fused_qkv(modules, "sdpa")
    return kept


def assert_freed(
    unfused: int, kept: dict[str, torch.nn.Module], freed: dict[str, torch.nn.Module]
) -> None:
    fused = fused_projection_count(kept)
    assert fused > 0
    assert parameter_count(kept) == unfused + fused  # diffusers alone: both copies
    assert parameter_count(freed) == unfused  # freed: the fused copy only
    for module in freed.values():
        for layer in module.modules():
            if getattr(layer, "fused_projections", False):
                assert getattr(layer, "to_k", None) is None
                assert getattr(layer, "to_v", None) is None
                assert getattr(layer, "add_k_proj", None) is None


def assert_same(one: list[torch.Tensor], other: list[torch.Tensor]) -> None:
    """The same fused weights compute the same outputs, up to the float rounding of a copy's
    other memory layout (about 1e-7 here)."""
    for a, b in zip(one, other, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fusing_frees_the_separate_projections_of_sd15(sd15, monkeypatch):
    unfused = parameter_count(sd15)
    kept = fuse_keeping_and_freeing(sd15, monkeypatch)
    assert_freed(unfused, kept, sd15)
    assert_same(sd15_outputs(kept), sd15_outputs(sd15))


@torch.no_grad()
def sdxl_outputs(modules: dict[str, torch.nn.Module]) -> list[torch.Tensor]:
    """One SDXL denoising step with the IdentityNet's residuals, on seeded inputs."""
    unet = modules["unet"]
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * (
        unet.config.addition_time_embed_dim
    )
    added = {
        "text_embeds": torch.randn(1, pooled, generator=generator),
        "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]),
    }
    control = torch.rand(1, 3, 64, 64, generator=generator)
    down, mid = modules["identitynet"](
        latents,
        10,
        encoder_hidden_states=text,
        controlnet_cond=control,
        added_cond_kwargs=added,
        return_dict=False,
    )
    noise = unet(
        latents,
        10,
        encoder_hidden_states=text,
        added_cond_kwargs=added,
        down_block_additional_residuals=down,
        mid_block_additional_residual=mid,
        return_dict=False,
    )[0]
    return [noise]


def test_fusing_frees_the_separate_projections_of_sdxl(tiny_settings, monkeypatch):
    """The SDXL UNet (as sd15, without InstantID's adapter) and the IdentityNet."""
    modules = {
        "unet": UNet2DConditionModel.from_pretrained(
            require_model(tiny_settings, "sdxl-base"), subfolder="unet"
        ).eval(),
        "identitynet": ControlNetModel.from_pretrained(
            require_model(tiny_settings, "instantid"), subfolder="ControlNetModel"
        ).eval(),
    }
    unfused = parameter_count(modules)
    kept = fuse_keeping_and_freeing(modules, monkeypatch)
    assert_freed(unfused, kept, modules)
    assert_same(sdxl_outputs(kept), sdxl_outputs(modules))


def test_fusing_frees_the_separate_projections_of_flux(flux_transformer, monkeypatch):
    """Flux's joint blocks also fuse the text stream's add_q/k/v_proj into to_added_qkv."""
    modules = {"transformer": flux_transformer}
    unfused = parameter_count(modules)
    kept = fuse_keeping_and_freeing(modules, monkeypatch)
    assert any(hasattr(layer, "to_added_qkv") for layer in kept["transformer"].modules())
    assert_freed(unfused, kept, modules)
    assert_same([flux_output(kept["transformer"])], [flux_output(flux_transformer)])


# --- the NaN guard -------------------------------------------------------------------------------


def test_a_vae_decoding_nan_is_an_error_not_a_black_image(sd15):
    vae = sd15["vae"]
    guard_finite_decode(vae, "sd15_depth")
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.isfinite(vae.decode(latents).sample).all()  # a healthy VAE passes
        vae.decoder.conv_out.bias.fill_(float("nan"))
        with pytest.raises(NonFiniteOutputError, match="sd15_depth: the VAE decoded NaN"):
            vae.decode(latents)


# --- the runners: warm-up, start-up line, same images with the accelerations on ----------------

RUNNERS = {
    # runner -> (pipeline module, class, what one warm-up generation calls once)
    "sd15_depth": (
        "runners.sd15_pipeline",
        "SD15DepthPipelines",
        (StableDiffusionControlNetPipeline, "__call__"),
    ),
    "flux_depth": ("runners.flux_pipeline", "FluxDepthPipeline", (FluxControlPipeline, "__call__")),
    "instantid": ("runners.instantid_pipeline", "InstantIDPipelines", None),
}


def build_counting_calls(monkeypatch, runner: str, settings: Settings) -> tuple[object, list]:
    """The runner's pipelines, built while counting the generations their start-up runs."""
    module_name, class_name, target = RUNNERS[runner]
    module = importlib.import_module(module_name)
    calls = []
    owner, attribute = target if target is not None else (module, "sample")
    original = getattr(owner, attribute)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, counted)
    return getattr(module, class_name).from_store(settings), calls


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_warm_up_runs_one_generation_at_start_and_the_line_says_so(
    tiny_settings, monkeypatch, caplog, runner
):
    settings = tiny_settings.model_copy(update={"warmup": "on", **ALL_ON})
    with caplog.at_level(logging.INFO, logger="runners.acceleration"):
        _, calls = build_counting_calls(monkeypatch, runner, settings)
    assert len(calls) == 1
    [line] = [r.message for r in caplog.records if r.message.startswith(f"{runner} accelerations")]
    assert "dtype=float32 attention=sdpa[" in line
    assert "channels_last=on[" in line and "fused_qkv=on[" in line
    assert "compile=off" in line and "warmup=on[" in line


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_no_warm_up_on_the_cpu_by_default_and_the_line_says_so(
    tiny_settings, monkeypatch, caplog, runner
):
    with caplog.at_level(logging.INFO, logger="runners.acceleration"):
        _, calls = build_counting_calls(monkeypatch, runner, tiny_settings)
    assert calls == []
    [line] = [r.message for r in caplog.records if r.message.startswith(f"{runner} accelerations")]
    assert "channels_last=off fused_qkv=off compile=off warmup=off" in line


def test_instantid_keeps_its_ip_adapter_processors_and_fuses_the_controlnets(tiny_settings):
    from runners.instantid_pipeline import InstantIDPipelines

    pipelines = InstantIDPipelines.from_store(tiny_settings.model_copy(update=ALL_ON))
    kinds = {type(p) for p in pipelines.components["unet"].attn_processors.values()}
    assert kinds == {FaceAdapterAttnProcessor, SelfAttnProcessor}
    for controlnet in (pipelines.identitynet, pipelines.depth_controlnet):
        assert {type(p) for p in controlnet.attn_processors.values()} == {FusedAttnProcessor2_0}
        assert controlnet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_sd15_images_are_the_same_with_the_accelerations_on(tiny_settings):
    from runners.sd15_pipeline import SD15DepthPipelines

    job = SD15DepthJob(
        request_id="t",
        prompt="a house",
        image=Image.open(io.BytesIO(scene_image(64, 64))),
        samples=1,
        scheduler="UniPC",
        num_inference_steps=20,
        guidance_scale=7.5,
        strength=1.0,
        seed=5,
        width=64,
        height=64,
        output_format="PNG",
    )

    def pixels(settings: Settings) -> np.ndarray:
        [image] = SD15DepthPipelines.from_store(settings).run(job).images
        return np.asarray(Image.open(io.BytesIO(image)), dtype=np.int16)

    plain = pixels(tiny_settings)
    accelerated = pixels(tiny_settings.model_copy(update=ALL_ON))
    assert np.abs(plain - accelerated).max() <= 2  # float rounding, far below another seed's


def test_the_line_names_each_path():
    resolved = Accelerations(
        dtype=torch.float16,
        attention="sdpa",
        channels_last=True,
        fuse_qkv=True,
        compile=True,
        compile_mode="default",
        warmup=True,
    )
    done = {"attention": "sdpa[unet]", "channels_last": "on[unet]", "compile": "default[unet]"}
    line = log_accelerations("sd15_depth", resolved, {**done, "warmup": "on[1.0 s]"}, faces="CPU")
    assert line == (
        "sd15_depth accelerations: dtype=float16 attention=sdpa[unet] channels_last=on[unet] "
        "fused_qkv=off compile=default[unet] warmup=on[1.0 s] cpu_offload=off vae_tiling=off "
        "faces=CPU"
    )
