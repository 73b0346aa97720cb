"""All configuration, in one typed object read from the environment (prefix ``DEPTHID_``).

Each field's description is its documentation: docs/configuration.md is generated from this
class (`make docs`, docs/generate.py), grouped by SECTIONS. Nothing here imports torch, so the
Gateway process can read settings without loading the ML stack.
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

# The output long side of every model in the `tiny` profile (in `full`, each runner's own:
# FULL_LONG_SIDE in runners/<runner>.py).
TINY_LONG_SIDE = 64
# The runner services' names (runners/*.py, models/manifest.py RUNNER_MODELS); each has its URL
# and its max batch size below (Settings.runner_url).
RUNNERS = ("sd15_depth", "flux_depth", "instantid")
# T5 tokens of the prompt flux attends to: FLUX.1 [dev]'s 512 in `full`. The tiny profile
# scales it down like its 64 px output: at 512, attention over mostly padding is nearly all of
# a tiny CPU run, which no real GPU run resembles.
FULL_FLUX_TEXT_TOKENS = 512
TINY_FLUX_TEXT_TOKENS = 64
# flux-depth-pro: the classifier's P(nsfw) at or above which an output is blocked, for
# safety_tolerance 1 (strictest) .. 6 (most permissive). Calibrated for the `full` profile's
# Falconsai/nsfw_image_detection; docs/models.md ("Content safety" under flux-depth-pro) has
# the table.
DEFAULT_SAFETY_THRESHOLDS = (0.10, 0.20, 0.35, 0.50, 0.70, 0.90)
# How long a Redis command keeps retrying a dropped connection (gateway/redis_client.py): long
# enough for a Redis restart with a modest append-only file to load.
DEFAULT_REDIS_RETRY_S = 10.0

# The sections of docs/configuration.md, in order: (title, first field, what the section is
# about). A field belongs to the section of the nearest first field above it in the class, so
# a new field joins its section by where it is written; each title is also the heading comment
# above that field.
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("Models", "profile", "Which weights are served, where they are and on what device."),
    (
        "GPU accelerations",
        "attention",
        'The runners\' GPU paths (`runners/acceleration.py`; docs/performance.md, "GPU"): '
        "`auto` is on for CUDA, off on the CPU.",
    ),
    (
        "Smaller GPUs",
        "cpu_offload",
        'Memory savers (docs/performance.md, "GPU memory"): off unless asked, as both cost time.',
    ),
    ("Serving", "host", "Where the server listens, where its runners are, generation deadlines."),
    (
        "Adaptive batching",
        "sd15_max_batch_size",
        'Per runner (docs/performance.md, "Adaptive batching").',
    ),
    (
        "v2 jobs",
        "job_store_url",
        'The queue and its job store (docs/api.md, "v2 job lifecycle"; docs/architecture.md, '
        '"v2 job stores").',
    ),
    (
        "Webhooks",
        "webhook_secret",
        'A v2 submit\'s `webhook` (docs/api.md, "Webhooks"): signed deliveries, retried with '
        "backoff for a bounded time, apart from the job workers.",
    ),
    (
        "API keys, credits and per-key limits",
        "api_keys_file",
        "docs/api-keys.md. Per-key defaults are overridable per key in the keys file.",
    ),
    (
        "Request limits",
        "max_body_bytes",
        'Hostile or mistaken input is refused before it costs anything (docs/api.md, "Bad input").',
    ),
    ("Logging", "log_format", "`log_format.py`; docs/observability.md."),
    (
        "Tracing",
        "tracing_otlp_endpoint",
        "BentoML's OpenTelemetry spans, exported over OTLP/HTTP (`tracing.py`; "
        "docs/observability.md).",
    ),
    ("Image URL fetching", "url_fetch_timeout_s", "Image fields given as `http(s)` URLs."),
    (
        "Content safety and prompt upsampling",
        "safety_thresholds",
        'flux-depth-pro (docs/models.md, "flux-depth-pro").',
    ),
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEPTHID_", extra="ignore")

    # --- Models ---------------------------------------------------------------------------
    profile: Literal["tiny", "full"] = Field(
        default="tiny",
        description="`tiny`: random-weight models of the real architectures, built offline in "
        "seconds, on the CPU (their output is noise, by design); `full`: the real checkpoints "
        "of `models/manifest.py`, on CUDA.",
    )
    model_store: Path = Field(
        default=PROJECT_ROOT / ".models",
        description="Folder holding `<profile>/<model>/` weights.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="`auto`: CUDA when present, else the CPU."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto",
        description="`auto`: on CUDA fp16, bf16 for Flux; fp32 on the CPU. `float16` is CUDA "
        "only: a start-up error on the CPU.",
    )
    output_long_side: int | None = Field(
        default=None,
        ge=8,
        le=4096,
        description="Output long side in pixels; unset: 64 in `tiny`, the contract's per model "
        "in `full` (512 for SD1.5, 1024 for SDXL and Flux).",
    )
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch threads of every runner on the CPU; unset: 1 in `tiny` (its tensors "
        "are so small that handing work to a second thread costs more than it saves, most of "
        "all with other processes on the same cores), torch's default in `full`.",
    )
    weights_read_threads: int = Field(
        default=4,
        ge=0,
        description="Threads that read a runner's weight files into the page cache before "
        "its models are built (`models/weights.py`), in large parallel ranges at the disk's "
        "speed; skipped when the files do not fit the memory available. 0: off (each model "
        "reads its files as it loads).",
    )
    pull_runners: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Runners whose models `depthid pull` (`python -m models.pull`) pulls when "
        "run without `--runner`/`--only`, comma-separated (`sd15_depth`, `flux_depth`, "
        "`instantid`); empty: every model. The Kubernetes pull Job's way to choose.",
    )

    # --- GPU accelerations ----------------------------------------------------------------
    attention: Literal["auto", "sdpa", "xformers"] = Field(
        default="auto",
        description="Attention kernels: `sdpa` (PyTorch's scaled-dot-product attention; what "
        "`auto` means) or `xformers` (CUDA, needs xformers installed).",
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        default="auto", description="UNet, ControlNet and VAE weights in NHWC."
    )
    fuse_qkv: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Fused query/key/value projections; never in the InstantID UNet, whose "
        "IP-Adapter processors it would replace.",
    )
    compile: Literal["auto", "on", "off"] = Field(
        default="off",
        description="`torch.compile` the UNet, ControlNets and Flux transformer. Off unless "
        "asked: each new input shape (size, batch) compiles for minutes at first sight.",
    )
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = Field(default="max-autotune-no-cudagraphs", description="`torch.compile`'s mode.")
    warmup: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="One generation at the default output size when a runner starts, before "
        "it reports ready.",
    )

    # --- Smaller GPUs ---------------------------------------------------------------------
    cpu_offload: Literal["on", "off"] = Field(
        default="off",
        description="diffusers' model CPU offload in every runner: each model of a runner's "
        "pipeline (text encoders, the UNet / Flux transformer) is on the GPU only while it runs "
        "(flux: the T5 encoder leaves the GPU before the transformer runs). Slower: each call "
        "moves gigabytes.",
    )
    vae_tiling: Literal["on", "off"] = Field(
        default="off",
        description="The VAEs decode (and encode) in tiles: their memory no longer grows with "
        "the image's area. Tiles can show faint seams.",
    )

    # --- Serving --------------------------------------------------------------------------
    host: str = Field(
        default="127.0.0.1",
        description="The server's address when nothing else names it: where `depthid serve` "
        "listens unless `--host` names another, the server `depthid predict` calls unless "
        "`--url` names one, and the ready banner's URL. "
        "(`make serve` listens on its own `HOST=`, default 127.0.0.1.)",
    )
    port: int = Field(
        default=3000,
        ge=1,
        le=65535,
        description="The port that goes with `host` (`depthid serve --port`; `make serve`: "
        "`PORT=`, default 3000).",
    )
    sd15_runner_url: str | None = Field(
        default=None,
        description="URL of a separately deployed sd15_depth runner "
        "(`runners.sd15_depth:SD15Depth`, e.g. on Kubernetes); unset: run it in-process.",
    )
    flux_runner_url: str | None = Field(
        default=None,
        description="URL of a separately deployed flux_depth runner "
        "(`runners.flux_depth:FluxDepth`); unset: run it in-process.",
    )
    instantid_runner_url: str | None = Field(
        default=None,
        description="URL of a separately deployed instantid runner "
        "(`runners.instantid:InstantID`); unset: run it in-process.",
    )
    generation_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Deadline of one generation: past it the answer is 504 and the runner drops "
        'or stops the work (docs/performance.md, "Deadlines and abandoned work").',
    )
    runner_workers: int = Field(default=1, ge=1, description="Worker processes per runner.")
    scale_to_zero_runners: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Runners that may have no replica (`sd15_depth`, `flux_depth`, `instantid`, "
        "comma-separated; Kubernetes: the `scale-to-zero` component). A request for one that "
        "has no ready replica waits for one up to its deadline (`generation_timeout_s`), "
        "counted in `depthid_waiting_for_runner` (what KEDA wakes the runner on), instead of "
        "answering 502 at once; 502 only when none is ready by the deadline. The Gateway's "
        "/readyz does not wait for them. Empty: every runner is always up.",
    )

    # --- Adaptive batching ----------------------------------------------------------------
    sd15_max_batch_size: int = Field(
        default=8,
        ge=1,
        description="Most samples one sd15_depth pipeline call holds (a request's samples "
        "count); 1 switches batching off.",
    )
    instantid_max_batch_size: int = Field(
        default=4,
        ge=1,
        description="The same for the instantid runner.",
    )
    flux_max_batch_size: int = Field(
        default=4, ge=1, description="The same for the flux_depth runner."
    )
    flux_max_sequence_length: int | None = Field(
        default=None,
        ge=1,
        le=FULL_FLUX_TEXT_TOKENS,
        description="T5 tokens of the prompt flux attends to; unset: 512 in `full`, 64 in "
        "`tiny` (scaled down like its 64 px output). A prompt cut there is answered with "
        "`x-prompt-truncated: true`.",
    )
    face_region_padding: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="instantid's `enhance_face_region` acts on the face detector's box grown "
        "by this fraction of its width and height on each side; 0: the box itself, as "
        "InstantID's demo.",
    )
    # --- v2 jobs --------------------------------------------------------------------------
    job_store_url: str | None = Field(
        default=None,
        description="The v2 job store, and where the credit ledger and per-key limits are "
        "counted: unset, in-process memory (one Gateway process); `redis://host:6379/0`, a "
        "Redis shared by every replica.",
    )
    redis_retry_s: float = Field(
        default=DEFAULT_REDIS_RETRY_S,
        ge=0,
        description="A Redis command meeting a dropped connection (a restart, a failover) "
        "reconnects and retries this long.",
    )
    store_retry_after_s: int = Field(
        default=5,
        ge=1,
        description="`Retry-After` on the 503 a request gets while Redis stays unreachable "
        "past `redis_retry_s`.",
    )
    job_retention_s: float = Field(
        default=3600.0,
        ge=1,
        description="How long v2 results and images are kept, then 404 (Redis expiry is whole "
        "seconds).",
    )
    job_queue_max: int = Field(
        default=1000, ge=1, description="Waiting v2 jobs; past it, submit answers 429."
    )
    job_workers: int = Field(
        default=8,
        ge=1,
        description="v2 jobs one Gateway process runs at once: at least the runners' max batch "
        "size (8), so v2 jobs can fill a batch.",
    )
    job_max_attempts: int = Field(
        default=3,
        ge=1,
        description="A v2 job taken this many times without ending (its runner or Gateway "
        "died while running it, each time) ends `FAILED` instead of being taken again.",
    )
    job_result_wait_s: float = Field(
        default=300.0,
        ge=0,
        description="A finished job whose outcome cannot be written (Redis unreachable past "
        "`redis_retry_s`) keeps it and tries again this long, rather than dropping it and "
        "generating the job again.",
    )
    job_visibility_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A job whose worker stops renewing its lease this long is taken again by "
        "another replica (Redis).",
    )
    queue_retry_after_s: int = Field(
        default=5, ge=1, description="`Retry-After` on the full-queue 429."
    )
    shutdown_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="On shutdown, how long jobs in hand may finish before they are handed back "
        "to the queue.",
    )
    idempotency_retention_s: float = Field(
        default=3600.0,
        ge=1,
        description="How long a generation request's `Idempotency-Key` is remembered: the "
        "same key and body within it answer as the first did, charged once.",
    )
    public_base_url: str | None = Field(
        default=None,
        description="Prefix of the `status_url`, `response_url` and output links v2 answers "
        "with (behind a proxy or load balancer); unset: the request's own.",
    )

    # --- Webhooks -------------------------------------------------------------------------
    webhook_secret: str | None = Field(
        default=None,
        description="The Standard Webhooks signing secret (`whsec_` and base64) of webhooks "
        "while API keys are off; with keys, each key's own `webhook_secret` signs (the keys "
        "CLI makes one). Unset with keys off: a submit naming a `webhook` answers 400.",
    )
    webhook_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="One delivery attempt (every redirect included) may take this long; "
        "past it, it failed and is retried.",
    )
    webhook_backoff_s: float = Field(
        default=5.0,
        gt=0,
        description="Wait before the first retry of a failed delivery; each next retry waits "
        "twice as long, up to 10 minutes.",
    )
    webhook_retry_for_s: float = Field(
        default=3600.0,
        ge=0,
        description="A delivery still failing this long after its first attempt is given up "
        "(its job's status says so). Bounded by `job_retention_s` too: the job goes then.",
    )
    webhook_workers: int = Field(
        default=4,
        ge=1,
        description="Deliveries one Gateway process makes at once, apart from its job workers "
        "(a slow receiver never holds a generation).",
    )

    # --- API keys, credits and per-key limits ---------------------------------------------
    api_keys_file: Path | None = Field(
        default=None,
        description="JSON file of hashed API keys; unset: no keys, no credits, no per-key "
        "limits (the embedded default).",
    )
    key_requests_per_minute: int = Field(
        default=60,
        ge=0,
        description="Per key: generation requests per minute, in bursts of up to as many; "
        "0: no limit.",
    )
    key_concurrent_jobs: int = Field(
        default=4,
        ge=0,
        description="Per key: v1 generations running plus v2 jobs not finished; 0: no limit.",
    )
    concurrency_retry_after_s: int = Field(
        default=5, ge=1, description="`Retry-After` on the concurrent-jobs 429."
    )

    # --- Request limits -------------------------------------------------------------------
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Larger request bodies answer 413, counted as they stream in.",
    )
    max_image_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Larger decoded images answer 413."
    )
    max_image_pixels: int = Field(
        default=36_000_000,
        ge=64,
        description="Decompression-bomb guard: more pixels answer 413, read from the image's "
        "header before it is decoded.",
    )
    max_aspect_ratio: float = Field(
        default=4.0,
        ge=1.0,
        le=64.0,
        description="Every image field: a long side more than this many times the short one "
        "answers 400 naming the field and the limit. The depth and face preprocessors cannot "
        "use a sliver (a 1000x1 picture).",
    )
    max_json_depth: int = Field(
        default=32,
        ge=1,
        le=500,  # below Python's recursion limit
        description="JSON bodies nested deeper (objects and arrays) answer 400 "
        "(`gateway/http/json_limits.py`).",
    )
    max_string_chars: int = Field(
        default=16_384,
        ge=256,
        description="Longer JSON strings (values and keys) answer 400 naming the field. Not the "
        "image fields (`image`, `face_image`, `pose_image`, `control_image`), which carry base64 "
        "up to `max_image_bytes` and are held to that limit (413) instead. Our bodies are flat "
        "objects and prompts a few hundred characters.",
    )
    max_json_items: int = Field(
        default=100_000,
        ge=100,
        description="JSON bodies with more items (array elements, object members) answer 400, "
        "counted as the body's commas before it is parsed; room for two prompts of "
        "`max_string_chars` commas.",
    )
    request_head_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A request head (request line and headers) must arrive within this of the "
        "connection opening or of its previous answer, else the connection is closed "
        "(`compat/uvicorn_httptools.py`).",
    )
    request_body_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="A request body must arrive within this of its head, else 408 and the "
        "connection is closed (`gateway/http/middleware.py`): a 32 MB body at about 2 Mbit/s.",
    )

    # --- Logging --------------------------------------------------------------------------
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="The served processes' log lines: `json`, one object per line (the served "
        "default), or `text`, BentoML-like lines (what `make serve` sets). Each names its "
        "request id.",
    )

    # --- Tracing --------------------------------------------------------------------------
    tracing_otlp_endpoint: str | None = Field(
        default=None,
        description="The collector's OTLP/HTTP traces URL (e.g. "
        "`http://otel-collector:4318/v1/traces`): every service exports BentoML's spans to it; "
        "unset: no tracing.",
    )
    tracing_sample_rate: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Fraction of requests traced (the Gateway decides; the runners follow its "
        "choice).",
    )

    # --- Image URL fetching ---------------------------------------------------------------
    url_fetch_timeout_s: float = Field(
        default=10.0, gt=0, description="Timeout for fetching an image URL."
    )
    url_max_redirects: int = Field(
        default=3, ge=0, le=10, description="Redirects followed, each hop checked again."
    )
    url_allowed_networks: Annotated[
        list[ipaddress.IPv4Network | ipaddress.IPv6Network], NoDecode
    ] = Field(
        default_factory=list,
        description="Networks that image URLs may reach although private, loopback or "
        "link-local, comma-separated CIDRs (e.g. `127.0.0.0/8` in tests).",
    )

    # --- Content safety and prompt upsampling ---------------------------------------------
    safety_thresholds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_SAFETY_THRESHOLDS),
        description="Six comma-separated P(nsfw) thresholds, for `safety_tolerance` 1..6 "
        "(non-decreasing, each 0..1): an image scoring at or above its tolerance's threshold is "
        "blocked. Recalibrate them when you change the classifier.",
    )
    blocked_terms_file: Path = Field(
        default=PROJECT_ROOT / "config" / "blocked_terms.txt",
        description="The editable prompt term list, read when the runner starts: one term or "
        "phrase per line, `#` starts a comment.",
    )
    prompt_upsampler: Literal["auto", "llm", "rules"] = Field(
        default="auto",
        description="What `prompt_upsampling` runs: `llm` (a local instruct model) or `rules` "
        "(a deterministic expander, not a model); `auto`: `llm` in `full`, `rules` in `tiny`.",
    )
    upsampler_max_new_tokens: int = Field(
        default=96, ge=8, le=512, description="Longest expansion the `llm` upsampler writes."
    )

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

    @field_validator("pull_runners", "scale_to_zero_runners", mode="before")
    @classmethod
    def _split_runners(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("scale_to_zero_runners")
    @classmethod
    def _check_runners(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(RUNNERS))
        if unknown:
            raise ValueError(f"unknown runner(s) {unknown}; one of {list(RUNNERS)}")
        return value

    @field_validator("url_allowed_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def long_side(self, full_long_side: int) -> int:
        """Output long side of a runner's models, given their side in `full` (the runner's
        FULL_LONG_SIDE): the explicit setting, else the profile's."""
        if self.output_long_side is not None:
            return self.output_long_side
        return TINY_LONG_SIDE if self.profile == "tiny" else full_long_side

    def runner_url(self, runner: str) -> str | None:
        """Where runner `runner` is deployed; None: `bentoml serve service:Gateway` starts it."""
        return {
            "sd15_depth": self.sd15_runner_url,
            "flux_depth": self.flux_runner_url,
            "instantid": self.instantid_runner_url,
        }[runner]

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
