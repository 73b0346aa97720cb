"""Which device and dtype a runner uses, from settings ("auto" picks CUDA fp16 when present)."""

from __future__ import annotations

import torch

from settings import Settings

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(settings: Settings) -> torch.device:
    if settings.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEPTHID_DEVICE=cuda but no CUDA device is available")
    return torch.device(settings.device)


def pick_dtype(settings: Settings, device: torch.device, gpu_default: torch.dtype) -> torch.dtype:
    """The configured dtype; "auto" means `gpu_default` on CUDA and float32 on CPU.

    float16 on the CPU is refused at start-up: PyTorch's CPU kernels for it are missing or slow
    and its range overflows in the VAEs; bfloat16 runs there (slowly) if asked for."""
    if settings.dtype == "float16" and device.type != "cuda":
        raise RuntimeError(
            f"DEPTHID_DTYPE=float16 needs CUDA, but the runner is on {device.type}: "
            "use DEPTHID_DTYPE=auto (float32 on the CPU) or float32"
        )
    if settings.dtype != "auto":
        return _DTYPES[settings.dtype]
    return gpu_default if device.type == "cuda" else torch.float32


def set_cpu_threads(settings: Settings, device: torch.device) -> None:
    """settings.cpu_threads, or one thread for the tiny models: with the Gateway, other runners
    and clients on the same few cores, a second thread mostly waits, and a 64-pixel request
    took seconds instead of a fraction of one. The full profile keeps torch's default."""
    threads = settings.cpu_threads or (1 if settings.profile == "tiny" else None)
    if device.type == "cpu" and threads is not None:
        torch.set_num_threads(threads)


def load_onto(device: torch.device) -> dict[str, str]:
    """`from_pretrained`'s arguments that load a model's weights straight onto `device`: on CUDA
    each tensor goes from its file to the GPU in its dtype, with no copy of the model in host
    memory and no `.to()` after (diffusers and transformers both take `device_map`). On the CPU,
    loading already lands there."""
    return {"device_map": device.type} if device.type == "cuda" else {}
