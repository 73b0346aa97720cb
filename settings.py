"""All configuration, in one typed object read from the environment (prefix ``DEPTHID_``).

Every setting is documented in the README's "Configuration" table. Nothing here imports torch,
so the Gateway process can read settings without loading the ML stack.
"""

from __future__ import annotations

import ipaddress
import itertools
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent

# The contract's output long side per model in the `full` profile; `tiny` uses 64 for all.
FULL_LONG_SIDE = {
    "sd1.5-controlnet-depth": 512,
    "instantid": 1024,
    "insta-depth": 1024,
    "flux-depth-pro": 1024,
}
TINY_LONG_SIDE = 64
# T5 tokens of the prompt flux attends to: FLUX.1 [dev]'s 512 in `full`. The tiny profile
# scales it down like its 64 px output: at 512, attention over mostly padding is nearly all of
# a tiny CPU run, which no real GPU run resembles.
FULL_FLUX_TEXT_TOKENS = 512
TINY_FLUX_TEXT_TOKENS = 64
# flux-depth-pro: the classifier's P(nsfw) at or above which an output is blocked, for
# safety_tolerance 1 (strictest) .. 6 (most permissive). Calibrated for the `full` profile's
# Falconsai/nsfw_image_detection; the README's "Content safety" section has the table.
DEFAULT_SAFETY_THRESHOLDS = (0.10, 0.20, 0.35, 0.50, 0.70, 0.90)
# How long a Redis command keeps retrying a dropped connection (gateway/redis_client.py): long
# enough for a Redis restart with a modest append-only file to load.
DEFAULT_REDIS_RETRY_S = 10.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEPTHID_", extra="ignore")

    # --- models -------------------------------------------------------------------------
    profile: Literal["tiny", "full"] = "tiny"
    model_store: Path = PROJECT_ROOT / ".models"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    output_long_side: int | None = Field(default=None, ge=8, le=4096)
    # torch threads of a runner on the CPU; unset: 1 in `tiny` (its tensors are so small that
    # handing work to a second thread costs more than it saves), torch's default in `full`.
    cpu_threads: int | None = Field(default=None, ge=1)
    # Runners whose models `python -m models.pull` pulls when run without --runner/--only
    # (comma-separated, e.g. "instantid,sd15_depth"); empty: every model (the k8s pull Job).
    pull_runners: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # --- GPU accelerations (runners/acceleration.py): "auto" = on for CUDA, off on the CPU ---
    attention: Literal["auto", "sdpa", "xformers"] = "auto"  # auto: PyTorch's SDPA
    channels_last: Literal["auto", "on", "off"] = "auto"
    fuse_qkv: Literal["auto", "on", "off"] = "auto"
    # Off unless asked: each new input shape (size, batch) compiles for minutes at first sight.
    compile: Literal["auto", "on", "off"] = "off"
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = "max-autotune-no-cudagraphs"
    warmup: Literal["auto", "on", "off"] = "auto"  # one generation at start-up
    # --- smaller GPUs (README "GPU memory"): off unless asked, as both cost time -------------
    # diffusers' model CPU offload: each model of a runner's pipeline is on the GPU only while
    # it runs (flux: the T5 encoder leaves the GPU before the transformer runs).
    cpu_offload: Literal["on", "off"] = "off"
    # The VAE decodes (and encodes) in tiles: its memory no longer grows with the image's area.
    vae_tiling: Literal["on", "off"] = "off"

    # --- serving ------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=1, le=65535)
    # URL of a separately deployed sd15_depth runner (Kubernetes); unset = run it in-process.
    sd15_runner_url: str | None = None
    # URL of a separately deployed flux_depth runner (Kubernetes); unset = run it in-process.
    flux_runner_url: str | None = None
    # URL of a separately deployed instantid runner (instantid + insta-depth); unset = in-process.
    instantid_runner_url: str | None = None
    generation_timeout_s: float = Field(default=300.0, gt=0)
    runner_workers: int = Field(default=1, ge=1)

    # --- adaptive batching (per runner) ----------------------------------------------------
    # Most samples one pipeline call holds; 1 switches batching off. A request's samples count.
    sd15_max_batch_size: int = Field(default=8, ge=1)
    instantid_max_batch_size: int = Field(default=4, ge=1)
    flux_max_batch_size: int = Field(default=4, ge=1)
    # T5 tokens of the prompt flux attends to; unset: 512 (full), 64 (tiny).
    flux_max_sequence_length: int | None = Field(default=None, ge=1, le=FULL_FLUX_TEXT_TOKENS)
    # instantid's enhance_face_region acts on the face detector's box grown by this fraction of
    # its width and height on each side; 0 (default): the box itself, as InstantID's demo.
    face_region_padding: float = Field(default=0.0, ge=0, le=1)
    # The longest BentoML's batching dispatcher holds a call on an idle runner hoping for
    # company (runners/batch_hold.py); unbounded, a burst's queue waits kept lone calls slow.
    batch_max_hold_ms: float = Field(default=50.0, ge=0)
    # BentoML refuses (503) a queued call it expects to finish later than this: keep it at
    # least the generation deadline, so batching never refuses what the deadline would allow.
    sd15_max_latency_ms: int = Field(default=300_000, ge=1)
    instantid_max_latency_ms: int = Field(default=300_000, ge=1)
    flux_max_latency_ms: int = Field(default=300_000, ge=1)

    # --- v2 jobs -------------------------------------------------------------------------
    # Unset: in-process memory (one Gateway process). "redis://host:6379/0": shared by replicas.
    job_store_url: str | None = None
    # A Redis command meeting a dropped connection (restart, failover) retries this long.
    redis_retry_s: float = Field(default=DEFAULT_REDIS_RETRY_S, ge=0)
    # Retry-After on the 503 a request gets while Redis stays unreachable past that.
    store_retry_after_s: int = Field(default=5, ge=1)
    job_retention_s: float = Field(default=3600.0, ge=1)  # Redis expiry is whole seconds
    job_queue_max: int = Field(default=1000, ge=1)
    # Jobs one Gateway process runs at once: enough to fill a runner batch (max batch size 8).
    job_workers: int = Field(default=8, ge=1)
    job_visibility_timeout_s: float = Field(default=30.0, gt=0)
    queue_retry_after_s: int = Field(default=5, ge=1)
    shutdown_grace_s: float = Field(default=60.0, ge=0)
    # Prefix of the status/result URLs v2 answers with (behind a proxy); unset: the request's.
    public_base_url: str | None = None

    # --- API keys, credits and per-key limits (README: "API keys, credits and limits") ------
    # JSON file of hashed keys; unset: no keys, no credits, no per-key limits (embedded default).
    api_keys_file: Path | None = None
    # Per-key defaults, overridable per key in the keys file; 0 = no limit. Shared through
    # Redis when job_store_url is set, else counted in this process.
    key_requests_per_minute: int = Field(default=60, ge=0)  # generation requests, burst = this
    key_concurrent_jobs: int = Field(default=4, ge=0)  # v1 generations running + v2 unfinished
    concurrency_retry_after_s: int = Field(default=5, ge=1)  # Retry-After on that 429

    # --- request limits -----------------------------------------------------------------
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=36_000_000, ge=64)
    # Every image field: the long side at most this many times the short one (README "Bad
    # input"): the depth and face preprocessors cannot use a sliver (a 1000x1 picture).
    max_aspect_ratio: float = Field(default=4.0, ge=1.0, le=64.0)
    # JSON bodies (gateway/http/json_limits.py): nesting of objects/arrays, and the length of every
    # string but the image fields', which carry base64 up to max_image_bytes and are bounded by
    # that limit instead. Our bodies are flat objects and prompts a few hundred characters.
    max_json_depth: int = Field(default=32, ge=1, le=500)  # below Python's recursion limit
    max_string_chars: int = Field(default=16_384, ge=256)
    # Items (array elements and object members) of a JSON body, bounded by its commas before it
    # is parsed; room for two prompts of max_string_chars commas.
    max_json_items: int = Field(default=100_000, ge=100)
    # Slow clients (README "Slow and idle connections"): a request head (request line and
    # headers) must arrive within this of the connection opening or of its previous answer,
    # else the connection is closed (gateway/http/connection_guard.py) ...
    request_head_timeout_s: float = Field(default=10.0, gt=0)
    # ... and a request body within this of its head, else 408 (gateway/http/middleware.py): a
    # 32 MB body at about 2 Mbit/s.
    request_body_timeout_s: float = Field(default=120.0, gt=0)

    # --- logging (log_format.py) ------------------------------------------------------------
    # "json": one JSON object per line (the served default), "text": BentoML-like lines.
    log_format: Literal["json", "text"] = "json"

    # --- tracing (tracing.py): BentoML's OpenTelemetry spans, exported over OTLP/HTTP -------
    # The collector's traces URL (e.g. http://otel-collector:4318/v1/traces); unset: no tracing.
    tracing_otlp_endpoint: str | None = None
    # Fraction of requests traced (the Gateway decides; the runners follow its choice).
    tracing_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)

    # --- image URL fetching -------------------------------------------------------------
    url_fetch_timeout_s: float = Field(default=10.0, gt=0)
    url_max_redirects: int = Field(default=3, ge=0, le=10)
    # Networks that may be fetched although private/loopback/link-local (comma-separated CIDRs).
    url_allowed_networks: Annotated[
        list[ipaddress.IPv4Network | ipaddress.IPv6Network], NoDecode
    ] = Field(default_factory=list)

    # --- content safety and prompt upsampling (flux-depth-pro) ------------------------------
    # Six comma-separated P(nsfw) thresholds, for safety_tolerance 1..6; non-decreasing.
    safety_thresholds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_SAFETY_THRESHOLDS)
    )
    # The editable prompt term list: one term or phrase per line, `#` starts a comment.
    blocked_terms_file: Path = PROJECT_ROOT / "config" / "blocked_terms.txt"
    # "auto": "llm" in `full`, "rules" in `tiny` (a deterministic expander, not a model).
    prompt_upsampler: Literal["auto", "llm", "rules"] = "auto"
    upsampler_max_new_tokens: int = Field(default=96, ge=8, le=512)

    @field_validator("safety_thresholds", mode="before")
    @classmethod
    def _split_thresholds(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("safety_thresholds")
    @classmethod
    def _check_thresholds(cls, value: list[float]) -> list[float]:
        count = len(DEFAULT_SAFETY_THRESHOLDS)
        if len(value) != count:
            raise ValueError(f"needs {count} thresholds, one per tolerance 1..{count}")
        if any(not 0.0 <= threshold <= 1.0 for threshold in value):
            raise ValueError("every threshold is a probability in 0..1")
        if any(later < earlier for earlier, later in itertools.pairwise(value)):
            raise ValueError("thresholds must not decrease: tolerance 1 is the strictest")
        return value

    @field_validator("pull_runners", mode="before")
    @classmethod
    def _split_runners(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("url_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def long_side(self, model: str) -> int:
        """Output long side for `model`: the explicit setting, else the profile's default."""
        if self.output_long_side is not None:
            return self.output_long_side
        return TINY_LONG_SIDE if self.profile == "tiny" else FULL_LONG_SIDE[model]

    def flux_text_tokens(self) -> int:
        """T5 tokens of the prompt flux attends to: the explicit setting, else the profile's."""
        if self.flux_max_sequence_length is not None:
            return self.flux_max_sequence_length
        return TINY_FLUX_TEXT_TOKENS if self.profile == "tiny" else FULL_FLUX_TEXT_TOKENS

    def resolved_prompt_upsampler(self) -> str:
        """`llm` or `rules`: `auto` is the language model in `full`, the rules in `tiny`."""
        if self.prompt_upsampler != "auto":
            return self.prompt_upsampler
        return "llm" if self.profile == "full" else "rules"

    def profile_store(self) -> Path:
        """Folder holding this profile's weights: ``<model_store>/<profile>``."""
        return self.model_store / self.profile


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
