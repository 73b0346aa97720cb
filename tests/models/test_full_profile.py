"""The `full` profile without the hub: a store written by models/full_store.py at the ci scale
(the manifest's layout, real small files, real widths, random weights), loaded by every runner on
the CPU, served end to end by benchmarks/gpu_check.py (`make gpu-check` at the ci scale).

Marked `full_profile` (`pytest -m full_profile` runs only these). The store is written once into
`.models/full-ci/full/` and reused by later sessions (each model's `.complete` marker).
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import subprocess
import time

import pytest
import torch
from PIL import Image

from benchmarks import gpu_check
from gateway.schemas.registry import MODEL_SPECS
from models import manifest
from models.full_store import write_full_store
from settings import PROJECT_ROOT, Settings
from tests.support.jobs import flux_job, instantid_job, sd15_job
from tests.support.served import BENTOML

pytestmark = [pytest.mark.full_profile, pytest.mark.slow]  # writes a 2.5 GB store once

STORE = PROJECT_ROOT / ".models" / "full-ci"
FAST_STEPS = 2  # runner jobs bypass the request schemas: two steps prove the path


@pytest.fixture(scope="session")
def full_store() -> Settings:
    """The ci-scale full store (written on first use) and settings that load it on the CPU."""
    write_full_store(STORE, "ci")
    return Settings(
        profile="full",
        device="cpu",
        model_store=STORE,
        output_long_side=64,
        upsampler_max_new_tokens=8,
    )


def test_the_store_holds_exactly_the_manifest_files(full_store):
    for name, checkpoint in manifest.CHECKPOINTS.items():
        folder = full_store.profile_store() / name
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        files.remove(".complete")
        for pattern in checkpoint.allow_patterns:
            assert fnmatch.filter(files, pattern), f"{name}: nothing for {pattern}"
        for file in files:
            assert any(fnmatch.fnmatch(file, p) for p in checkpoint.allow_patterns), file
        # fp16 files exactly where the real repository publishes them (and the runner reads them)
        fp16 = [f for f in files if ".fp16." in f]
        assert bool(fp16) == (manifest.weights_variant("full", name) == "fp16"), name


def test_the_store_has_the_hub_configs_quirks(full_store):
    store = full_store.profile_store()
    safety = json.loads((store / "safety-checker" / "config.json").read_text())
    assert safety["label2id"] == {"normal": "0", "nsfw": "1"}
    depth = json.loads((store / "depth-estimator" / "config.json").read_text())
    assert "max_depth" in depth and depth["max_depth"] is None
    clip = json.loads((store / "sd15-base" / "tokenizer" / "vocab.json").read_text())
    assert len(clip) == 49408  # the real vocabulary's size


def test_safety_checker_reads_a_string_valued_label2id(full_store):
    from runners.safety import SafetyChecker

    checker = SafetyChecker.from_pretrained(
        full_store.profile_store() / "safety-checker",
        torch.device("cpu"),
        torch.float32,
        thresholds=full_store.safety_thresholds,
    )
    assert checker.unsafe_index == 1
    assert 0.0 <= checker.score(Image.new("RGB", (64, 48), "teal")) < 0.1  # leans to normal


def test_depth_estimator_loads_a_null_max_depth(full_store):
    from runners.depth import DepthEstimator

    depth = DepthEstimator.from_pretrained(
        full_store.profile_store() / "depth-estimator", torch.device("cpu"), torch.float32
    )
    assert depth(Image.new("RGB", (96, 64), "teal"), (64, 48)).size == (64, 48)


def _one_image(result, size=(64, 40)) -> None:
    [image] = result.images
    assert Image.open(io.BytesIO(image)).size == size


def test_sd15_runner_loads_fp16_files_computes_in_fp32_and_generates(full_store):
    from runners.sd15_pipeline import SD15DepthPipelines

    pipelines = SD15DepthPipelines.from_store(full_store)
    # From the fp16 files; on the CPU from_pretrained casts them to the runner's fp32.
    assert {p.dtype for p in pipelines.components["unet"].parameters()} == {torch.float32}
    assert {p.dtype for p in pipelines.components["controlnet"].parameters()} == {torch.float32}
    _one_image(pipelines.run(sd15_job(num_inference_steps=FAST_STEPS)))


def test_instantid_runner_generates_instantid_and_insta_depth(full_store):
    from runners.instantid_pipeline import InstantIDPipelines

    pipelines = InstantIDPipelines.from_store(full_store)
    assert pipelines.components["unet"].dtype == torch.float32
    _one_image(pipelines.run(instantid_job(num_inference_steps=FAST_STEPS)), (64, 64))
    insta_depth = instantid_job(
        num_inference_steps=FAST_STEPS, pose_image=instantid_job().face_image, depth_strength=0.5
    )
    _one_image(pipelines.run(insta_depth), (64, 64))


def test_flux_runner_generates_with_the_language_model_upsampler(full_store):
    from runners.flux_pipeline import FluxDepthPipeline
    from runners.upsampler import LLMUpsampler

    pipeline = FluxDepthPipeline.from_store(full_store)
    assert isinstance(pipeline.upsampler, LLMUpsampler)  # Qwen's files: chat template included
    result = pipeline.run(flux_job(steps=FAST_STEPS, prompt_upsampling=True))
    _one_image(result, (64, 48))


@pytest.mark.served
def test_serving_full_on_an_empty_store_ends_at_once_naming_the_model(tmp_path):
    env = {
        **os.environ,
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "DEPTHID_PROFILE": "full",
        "DEPTHID_DEVICE": "cpu",
        "DEPTHID_MODEL_STORE": str(tmp_path / "empty"),
    }
    started = time.monotonic()
    done = subprocess.run(
        [BENTOML, "serve", "service:Gateway", "--host", "127.0.0.1", "--port", "0"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert time.monotonic() - started < 60  # no restart loop
    out = done.stdout + done.stderr
    assert "model 'sd15-base' for profile 'full' is missing" in out
    assert "python -m models.pull --profile full" in out
    assert "model 'flux-depth-dev'" in out and "model 'sdxl-base'" in out


@pytest.mark.served
def test_gpu_check_at_the_ci_scale_serves_every_model_through_v1_and_v2(full_store, capsys):
    """`make gpu-check` on the CPU: the same script, the ci store, every model v1 and v2."""
    args = gpu_check.parse_args(["--scale", "ci", "--device", "cpu", "--store", str(STORE)])
    args.bench = False  # benchmarks/gpu.py has its own test (tests/deploy/test_bench_gpu.py)
    rows, title = gpu_check.run(args)
    assert [row.model for row in rows] == list(MODEL_SPECS)
    for row in rows:
        assert row.v1_seconds and row.v1_seconds > 0 and row.v2 == "COMPLETED", row
        assert row.accelerations.startswith("dtype=float32"), row  # from the runner's log
    assert "(ci scale, random weights) on CPU" in title
    printed = gpu_check.table(rows, title)
    assert printed.count("| COMPLETED |") == len(MODEL_SPECS)


def test_gpu_check_refuses_the_real_scale_without_cuda(capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(["--scale", "real", "--device", "cpu"])
    assert exit_.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err


def test_gpu_check_reads_the_best_seconds_of_bench_gpus_tables():
    table = (
        "| acceleration | batch 1 (s/image) | best batch (s/image) |\n"
        "| baseline (math attention) | 3.212 | 3.212 (batch 1) |\n"
        "| sdpa | 2.900 | 2.512 (batch 4) |\n"
    )
    assert gpu_check.best_seconds(table) == "2.512"
    assert gpu_check.best_seconds("out of memory") == "?"
