"""Write the `full` profile's model store without the hub: random weights, real file layout.

    depthid models full-store [--scale ci|real] [--only NAME ...] [--force]

(`python -m models.full_store` is the same command.) Every checkpoint of models/manifest.py is
written to ``<model_store>/full/<name>/`` exactly as `depthid pull` lays it out: the manifest's
file names, subfolders and variants (fp16 where the real repository has it, bf16 for FLUX.1 and
Qwen), the real repositories' model_index.json, scheduler, tokenizer and preprocessor files (their
values written down here) and random weights. Files a save writes beyond the manifest's patterns
are removed, and a pattern that matches nothing is an error, so the runners are proven on what a
pull gives them.

Scales:
- `real`: the real configs (benchmarks/real_configs.py), layer counts and all. Tens of GB: for
  `make gpu-check` on a GPU host (weights are created on CUDA when present).
- `ci`: the real widths where modules meet (text encoders' hidden sizes, cross-attention and
  joint-attention widths, latent channels, the Resampler's 512 -> 2048, ArcFace's 512, real
  vocabulary sizes) with few layers, the UNets' two outer levels (320, 640 channels) and Flux with
  two of its 128-wide heads: about 1 GB on disk, minutes on a 2-core CI machine.

The tokenizers cannot be had offline: each is built at its real size and in its real format (CLIP
49408 tokens of byte-level BPE, T5 32100 Unigram pieces with a spiece.model, Qwen2.5 151643
byte-level BPE tokens plus its special tokens), with made-up merges. The antelopev2 face models
are the tiny profile's hand-set ONNX detector and recogniser (models/tiny_faces.py) under the real
file names at both scales: random ONNX weights would find no face, and these find the faces of
tests/support/face_images.py.

The `.complete` marker names this writer, not a repository revision, so `make pull` replaces
these models with real ones.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models import manifest
from models.build import builders_fingerprint
from models.store import install, installed_source, model_dir
from settings import Settings, get_settings

# torch is imported where the weights are made, as diffusers and transformers are: `depthid
# models full-store --help` then answers at once.
if TYPE_CHECKING:
    import torch

SCALES = ("ci", "real")
SEED = 0

# --- the real repositories' small files, written down ---------------------------------------
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

SD15_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
SD15_FEATURE_EXTRACTOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
    "resample": 3,
    "size": 224,
}
SDXL_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.19.0.dev0",
    "force_zeros_for_empty_prompt": True,
    "add_watermarker": None,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
FLUX_MODEL_INDEX = {
    "_class_name": "FluxControlPipeline",
    "_diffusers_version": "0.32.0.dev0",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
# depth-anything/Depth-Anything-V2-Small-hf preprocessor_config.json
DEPTH_PROCESSOR = {
    "do_normalize": True,
    "do_pad": False,
    "do_rescale": True,
    "do_resize": True,
    "ensure_multiple_of": 14,
    "image_mean": IMAGENET_MEAN,
    "image_processor_type": "DPTImageProcessor",
    "image_std": IMAGENET_STD,
    "keep_aspect_ratio": True,
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"height": 518, "width": 518},
}
# Falconsai/nsfw_image_detection preprocessor_config.json
SAFETY_PROCESSOR = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "ViTImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "rescale_factor": 1 / 255,
    "size": {"height": 224, "width": 224},
}
# Qwen/Qwen2.5-0.5B-Instruct: its special tokens follow its 151643 regular ones.
QWEN_REGULAR_TOKENS = 151643
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
# Qwen2.5's ChatML template without its tool-calling branches (the upsampler sends none).
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN_GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.1,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
}
CLIP_VOCAB_SIZE = 49408
T5_PIECES = 32000  # google/t5-v1_1-xxl's spiece.model; then 100 <extra_id_N>
T5_EXTRA_IDS = 100


# --- configs per scale --------------------------------------------------------------------------
def _configs(scale: str) -> dict[str, Any]:
    """Constructor arguments of every module, at `scale`."""
    from benchmarks.real_configs import REAL

    real: dict[str, Any] = {
        "sd15_unet": REAL.sd15.unet,
        "sd15_controlnet": REAL.sd15.controlnet,
        "sd_vae": REAL.sd15.vae,
        "clip_l": REAL.sd15.text_encoder,
        "clip_g": REAL.sdxl.text_encoder_2,
        "sdxl_unet": REAL.sdxl.unet,
        "sdxl_controlnet": REAL.sdxl.identitynet,
        "sdxl_vae": REAL.sdxl.vae,
        "resampler": REAL.sdxl.resampler,
        "flux_transformer": REAL.flux.transformer,
        "flux_vae": REAL.flux.vae,
        "t5": REAL.flux.text_encoder_2,
        # Depth-Anything-V2-Small-hf config.json (DINOv2-S backbone, four of its 12 layers)
        "depth": {"layers": 12, "out_indices": [3, 6, 9, 12]},
        # Falconsai/nsfw_image_detection config.json (ViT-B/16 at 224)
        "safety_layers": 12,
        # Qwen/Qwen2.5-0.5B-Instruct config.json
        "qwen_layers": 24,
    }
    if scale == "real":
        return real
    sd_levels = {
        "block_out_channels": (320, 640),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    }
    sdxl_levels = {
        "block_out_channels": (320, 640),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "attention_head_dim": (5, 10),
        "transformer_layers_per_block": (1, 1),
    }
    return {
        **real,
        "sd15_unet": {
            **real["sd15_unet"],
            **sd_levels,
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        },
        "sd15_controlnet": {**real["sd15_controlnet"], **sd_levels},
        "sd_vae": {**real["sd_vae"], "layers_per_block": 1},
        "clip_l": {**real["clip_l"], "num_hidden_layers": 2},
        "clip_g": {**real["clip_g"], "num_hidden_layers": 2},
        "sdxl_unet": {
            **real["sdxl_unet"],
            **sdxl_levels,
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        },
        "sdxl_controlnet": {**real["sdxl_controlnet"], **sdxl_levels},
        "sdxl_vae": {**real["sdxl_vae"], "layers_per_block": 1},
        # The Resampler stays real: diffusers' load_ip_adapter assumes its depth of 4.
        "flux_transformer": {
            **real["flux_transformer"],
            "num_layers": 1,
            "num_single_layers": 1,
            "num_attention_heads": 2,
        },
        "flux_vae": {**real["flux_vae"], "layers_per_block": 1},
        "t5": {**real["t5"], "num_layers": 1, "num_heads": 8, "d_ff": 1024},
        "depth": {"layers": 4, "out_indices": [1, 2, 3, 4]},
        "safety_layers": 1,
        "qwen_layers": 1,
    }


# --- helpers --------------------------------------------------------------------------------------
def _device() -> torch.device:
    import torch

    # Real-size weights are made on the GPU when there is one: a 12B transformer in fp32 on the
    # CPU would need 48 GB.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def _creating(dtype: str) -> Iterator[None]:
    """New modules' weights in `dtype` ("float16"...) on _device(), seeded."""
    import torch

    previous = torch.get_default_dtype()
    torch.manual_seed(SEED)
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with _device():
            yield
    finally:
        torch.set_default_dtype(previous)


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def _pair_merges(alphabet: list[str], count: int, suffix: str = "") -> list[tuple[str, str]]:
    """`count` BPE merges that are valid in order: pairs of alphabet symbols first (the second
    with and without `suffix`, CLIP's end-of-word mark), then a pair merged with a symbol."""
    merges: list[tuple[str, str]] = []
    seconds = [*alphabet, *(s + suffix for s in alphabet)] if suffix else alphabet
    for first in alphabet:
        for second in seconds:
            merges.append((first, second))
            if len(merges) == count:
                return merges
    pairs = list(merges)
    for left, right in pairs:
        if right.endswith(suffix) and suffix:
            continue
        for symbol in alphabet:
            merges.append((left + right, symbol))
            if len(merges) == count:
                return merges
    raise ValueError(f"cannot make {count} merges from {len(alphabet)} symbols")


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _clip_tokenizer(dest: Path, pad_token: str) -> None:
    """A CLIP tokenizer's files as the real repositories hold them (vocab.json, merges.txt,
    special_tokens_map.json, tokenizer_config.json; no tokenizer.json), at the real size."""
    alphabet = _byte_alphabet()
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    merges = _pair_merges(alphabet, CLIP_VOCAB_SIZE - 2 * len(alphabet) - 2, suffix="</w>")
    tokens = [*alphabet, *(a + "</w>" for a in alphabet), *(a + b for a, b in merges), bos, eos]
    dest.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(tokens)}
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    special = {"bos_token": bos, "eos_token": eos, "pad_token": pad_token, "unk_token": eos}
    _write_json(dest / "special_tokens_map.json", special)
    _write_json(
        dest / "tokenizer_config.json",
        {
            **special,
            "add_prefix_space": False,
            "do_lower_case": True,
            "errors": "replace",
            "model_max_length": 77,
            "tokenizer_class": "CLIPTokenizer",
        },
    )


def _t5_tokenizer(dest: Path) -> None:
    """T5 v1.1's tokenizer at its real size: tokenizer.json (Unigram) and a spiece.model."""
    from transformers import T5TokenizerFast
    from transformers.utils import sentencepiece_model_pb2_new as spm

    alphabet = _byte_alphabet()
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(a, -10.0) for a in alphabet] + [("▁" + a, -9.0) for a in alphabet]
    for a, b in _pair_merges(alphabet, T5_PIECES - len(pieces)):
        pieces.append(("▁" + a + b, -8.0))
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=T5_EXTRA_IDS, model_max_length=512)
    tokenizer.save_pretrained(dest)

    model = spm.ModelProto()
    model.trainer_spec.model_type = spm.TrainerSpec.UNIGRAM
    model.trainer_spec.vocab_size = len(pieces)
    model.normalizer_spec.name = "nmt_nfkc"
    model.normalizer_spec.add_dummy_prefix = True
    kinds = {"<pad>": spm.ModelProto.SentencePiece.CONTROL}
    kinds |= {"</s>": spm.ModelProto.SentencePiece.CONTROL}
    kinds |= {"<unk>": spm.ModelProto.SentencePiece.UNKNOWN}
    for piece, score in pieces:
        model.pieces.add(piece=piece, score=score, type=kinds.get(piece, 1))
    (dest / "spiece.model").write_bytes(model.SerializeToString())


def _qwen_tokenizer(dest: Path) -> None:
    """Qwen2.5's tokenizer files at the real size (151643 byte-level BPE tokens + specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = _byte_alphabet()
    merges = _pair_merges(alphabet, QWEN_REGULAR_TOKENS - len(alphabet))
    tokens = [*alphabet, *(a + b for a, b in merges), *QWEN_SPECIAL_TOKENS]
    vocab = {token: index for index, token in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(QWEN_SPECIAL_TOKENS))  # already in the vocab: ids kept
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    # In tokenizer_config.json, as the real repository has it (not chat_template.jinja).
    tokenizer.save_pretrained(dest, save_jinja_files=False)
    regular = {token: index for token, index in vocab.items() if index < QWEN_REGULAR_TOKENS}
    (dest / "vocab.json").write_text(json.dumps(regular, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )


def _clip_text(cls: type, config: dict) -> torch.nn.Module:
    from transformers import CLIPTextConfig

    # The real CLIP configs' ids (pooling then takes the highest id: <|endoftext|>).
    return cls(CLIPTextConfig(**config, bos_token_id=0, eos_token_id=2, pad_token_id=1))


def _controlnet(config: dict) -> torch.nn.Module:
    from diffusers import ControlNetModel

    from models.tiny_sd15 import _let_control_image_through

    controlnet = ControlNetModel(**config)
    _let_control_image_through(controlnet)  # else an untrained ControlNet adds nothing
    return controlnet


def _edit_json(path: Path, **values: Any) -> None:
    config = json.loads(path.read_text())
    config.update(values)
    _write_json(path, config)


# --- one writer per checkpoint ------------------------------------------------------------------
def _sd15_base(dest: Path, c: dict) -> None:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from models.tiny_sd15 import SCHEDULER_CONFIG

    _write_json(dest / "model_index.json", SD15_MODEL_INDEX)
    _write_json(dest / "feature_extractor" / "preprocessor_config.json", SD15_FEATURE_EXTRACTOR)
    PNDMScheduler.from_config(SCHEDULER_CONFIG).save_pretrained(dest / "scheduler")
    _clip_tokenizer(dest / "tokenizer", pad_token="<|endoftext|>")
    with _creating("float16"):
        text_encoder = _clip_text(CLIPTextModel, c["clip_l"])
        text_encoder.save_pretrained(dest / "text_encoder", variant="fp16")
        del text_encoder
        UNet2DConditionModel(**c["sd15_unet"]).save_pretrained(dest / "unet", variant="fp16")
        AutoencoderKL(**c["sd_vae"]).save_pretrained(dest / "vae", variant="fp16")


def _sd15_controlnet(dest: Path, c: dict) -> None:
    with _creating("float16"):
        _controlnet(c["sd15_controlnet"]).save_pretrained(dest, variant="fp16")


def _depth_estimator(dest: Path, c: dict) -> None:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=384,
        num_hidden_layers=c["depth"]["layers"],
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        out_indices=c["depth"]["out_indices"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=384,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
        head_hidden_size=32,
        depth_estimation_type="relative",
    )
    with _creating("float32"):
        DepthAnythingForDepthEstimation(config).save_pretrained(dest)
    _edit_json(dest / "config.json", max_depth=None)  # as the hub's config.json has it
    _write_json(dest / "preprocessor_config.json", DEPTH_PROCESSOR)


def _safety_checker(dest: Path, c: dict) -> None:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from models.tiny_safety import LABELS, NORMAL_MARGIN

    config = ViTConfig(
        hidden_size=768,
        num_hidden_layers=c["safety_layers"],
        num_attention_heads=12,
        intermediate_size=3072,
        image_size=224,
        patch_size=16,
        id2label=dict(enumerate(LABELS)),
        label2id={label: index for index, label in enumerate(LABELS)},
    )
    with _creating("float32"):
        model = ViTForImageClassification(config)
        with torch.no_grad():  # leans to `normal`, like the tiny one (models/tiny_safety.py)
            model.classifier.bias.zero_()
            model.classifier.bias[LABELS.index("nsfw")] = -NORMAL_MARGIN
        model.save_pretrained(dest)
    # Falconsai's config.json stores label2id's values as strings.
    labels = {label: str(index) for index, label in enumerate(LABELS)}
    _edit_json(dest / "config.json", label2id=labels, problem_type="single_label_classification")
    _write_json(dest / "preprocessor_config.json", SAFETY_PROCESSOR)


def _flux_depth(dest: Path, c: dict) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from models.tiny_flux import SCHEDULER_CONFIG

    _write_json(dest / "model_index.json", FLUX_MODEL_INDEX)
    FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(dest / "scheduler")
    _clip_tokenizer(dest / "tokenizer", pad_token="<|endoftext|>")
    _t5_tokenizer(dest / "tokenizer_2")
    with _creating("bfloat16"):
        _clip_text(CLIPTextModel, c["clip_l"]).save_pretrained(dest / "text_encoder")
        t5 = T5EncoderModel(T5Config(**c["t5"], pad_token_id=0, eos_token_id=1))
        t5.save_pretrained(dest / "text_encoder_2", max_shard_size="5GB")  # 2 files, as real
        del t5
        transformer = FluxTransformer2DModel(**c["flux_transformer"])
        transformer.save_pretrained(dest / "transformer", max_shard_size="10GB")  # 3 files
        del transformer
    with _creating("float32"):
        AutoencoderKL(**c["flux_vae"]).save_pretrained(dest / "vae")


def _sdxl_base(dest: Path, c: dict) -> None:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from models.tiny_sdxl import SCHEDULER_CONFIG

    _write_json(dest / "model_index.json", SDXL_MODEL_INDEX)
    EulerDiscreteScheduler(**SCHEDULER_CONFIG).save_pretrained(dest / "scheduler")
    _clip_tokenizer(dest / "tokenizer", pad_token="<|endoftext|>")
    _clip_tokenizer(dest / "tokenizer_2", pad_token="!")  # OpenCLIP bigG pads with "!"
    with torch.device("meta"):  # the base's own VAE is replaced by sdxl-vae: its config only
        AutoencoderKL(**{**c["sd_vae"], "scaling_factor": 0.13025}).save_config(dest / "vae")
    with _creating("float16"):
        _clip_text(CLIPTextModel, c["clip_l"]).save_pretrained(
            dest / "text_encoder", variant="fp16"
        )
        _clip_text(CLIPTextModelWithProjection, c["clip_g"]).save_pretrained(
            dest / "text_encoder_2", variant="fp16"
        )
        UNet2DConditionModel(**c["sdxl_unet"]).save_pretrained(dest / "unet", variant="fp16")


def _sdxl_vae(dest: Path, c: dict) -> None:
    from diffusers import AutoencoderKL

    with _creating("float32"):
        AutoencoderKL(**c["sdxl_vae"]).save_pretrained(dest)


def _instantid(dest: Path, c: dict) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    from models.tiny_instantid import image_proj_state, ip_adapter_state

    with _creating("float16"):
        identitynet = _controlnet(c["sdxl_controlnet"])
        identitynet.save_pretrained(dest / manifest.INSTANTID_IDENTITYNET_FOLDER)
        del identitynet
        resampler = image_proj_state(**c["resampler"])
    with torch.device("meta"):  # only its layers' shapes are read
        unet = UNet2DConditionModel(**c["sdxl_unet"])
    with _creating("float16"):
        state = {
            "image_proj": resampler,
            "ip_adapter": ip_adapter_state(unet, c["sdxl_unet"]["cross_attention_dim"]),
        }
    torch.save(state, dest / manifest.INSTANTID_IP_ADAPTER_FILE)


def _sdxl_controlnet_depth(dest: Path, c: dict) -> None:
    with _creating("float16"):
        _controlnet(c["sdxl_controlnet"]).save_pretrained(dest, variant="fp16")


def _face_analysis(dest: Path, c: dict) -> None:
    from models.tiny_faces import build_face_models

    build_face_models(dest)


def _prompt_upsampler(dest: Path, c: dict) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _qwen_tokenizer(dest)
    _write_json(dest / "generation_config.json", QWEN_GENERATION_CONFIG)
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=c["qwen_layers"],
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
        use_sliding_window=False,
    )
    with _creating("bfloat16"):
        Qwen2ForCausalLM(config).save_pretrained(dest)
    (dest / "generation_config.json").unlink(missing_ok=True)  # save wrote its own: the real one
    _write_json(dest / "generation_config.json", QWEN_GENERATION_CONFIG)


WRITERS: dict[str, Callable[[Path, dict], None]] = {
    "sd15-base": _sd15_base,
    "sd15-controlnet-depth": _sd15_controlnet,
    "depth-estimator": _depth_estimator,
    "flux-depth-dev": _flux_depth,
    "safety-checker": _safety_checker,
    "prompt-upsampler": _prompt_upsampler,
    "sdxl-base": _sdxl_base,
    "sdxl-vae": _sdxl_vae,
    "instantid": _instantid,
    "sdxl-controlnet-depth": _sdxl_controlnet_depth,
    "face-analysis": _face_analysis,
}


def _keep_manifest_files(name: str, folder: Path) -> list[Path]:
    """Remove what a pull would not have; every manifest pattern must match a written file."""
    patterns = manifest.CHECKPOINTS[name].allow_patterns
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    missing = [pattern for pattern in patterns if not fnmatch.filter(files, pattern)]
    if missing:
        raise RuntimeError(f"{name}: the writer wrote nothing for {missing}")
    kept = []
    for file in files:
        if any(fnmatch.fnmatch(file, pattern) for pattern in patterns):
            kept.append(folder / file)
        else:
            (folder / file).unlink()
    return kept


def source_for(scale: str) -> str:
    """The `.complete` marker's text: never a repository revision, so a pull replaces it; with
    a hash of the writers' code, so a store written by other code is rewritten, never reused."""
    digest = hashlib.sha256(builders_fingerprint().encode())
    digest.update(Path(__file__).read_bytes())
    return f"models.full_store (random weights, scale {scale}) {digest.hexdigest()[:16]}"


def write_full_store(
    model_store: Path,
    scale: str = "ci",
    names: Iterable[str] | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Write every manifest checkpoint in `names` (default: all) into `<model_store>/full/`."""
    import torch

    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; one of {SCALES}")
    names = list(manifest.CHECKPOINTS if names is None else names)
    unknown = sorted(set(names) - set(WRITERS))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; known: {list(WRITERS)}")
    configs = _configs(scale)
    settings = Settings(profile="full", model_store=model_store)
    source = source_for(scale)
    for index, name in enumerate(names, start=1):
        prefix = f"[{index}/{len(names)}] {name} ({scale}):"
        target = model_dir(settings, name)
        if not force and installed_source(target) == source:
            log(f"{prefix} cached")
            continue
        log(f"{prefix} writing ...")
        started = time.perf_counter()
        with install(target, source=source) as staging:
            WRITERS[name](staging, configs)
            files = _keep_manifest_files(name, staging)
            megabytes = sum(f.stat().st_size for f in files) / 1e6
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the served runners need the memory the weights were made in
        seconds = time.perf_counter() - started
        log(f"{prefix} {len(files)} files, {megabytes:.0f} MB in {seconds:.1f}s")
    return settings.profile_store()


def main(argv: list[str] | None = None, prog: str = "python -m models.full_store") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write the full profile's model store with random weights (no hub).",
    )
    parser.add_argument(
        "--scale",
        choices=SCALES,
        default="ci",
        help="ci: the real widths with few layers, about 1 GB, minutes on a CPU; real: the real "
        "configs, tens of GB, for a GPU host (default: %(default)s)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(WRITERS),
        metavar="NAME",
        help=f"write only this model (repeatable); one of: {', '.join(WRITERS)}",
    )
    parser.add_argument("--force", action="store_true", help="rewrite models already written")
    args = parser.parse_args(argv)
    store = get_settings().model_store
    print(f"writing the full store ({args.scale} scale, random weights) into {store / 'full'}")
    write_full_store(store, args.scale, names=args.only, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
