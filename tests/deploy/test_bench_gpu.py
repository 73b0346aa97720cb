"""benchmarks/gpu.py at `--scale tiny` on the CPU: the same script as on a GPU, with toy configs,
so that it cannot rot between the (rare) runs on a GPU. The figures themselves are not tested:
timings belong in the benchmark; what is checked is that every model and row ran and reported."""

from __future__ import annotations

import re

import pytest
import torch

from benchmarks import gpu
from benchmarks.real_configs import REAL, TINY
from runners.flux_pipeline import FluxDepthPipeline
from runners.instantid_pipeline import InstantIDPipelines
from runners.sd15_pipeline import SD15DepthPipelines

# Everything but compiling (which takes a minute per model on this CPU), in a few seconds.
ROWS = ["baseline", "sdpa", "channels_last", "fused_qkv"]
ARGS = ["--scale", "tiny", "--device", "cpu", "--runs", "1", "--warmup", "0", "--steps", "2"]


def count_run_batch(monkeypatch, runner_class: type, calls: list) -> None:
    """Record (class, jobs' request ids, results) of every call of the class's own run_batch."""
    original = runner_class.run_batch

    def counted(self, jobs):
        results = original(self, jobs)
        calls.append((runner_class.__name__, [job.request_id for job in jobs], results))
        return results

    monkeypatch.setattr(runner_class, "run_batch", counted)


def test_every_model_and_row_reports_seconds_per_image_of_the_runners_run_batch(
    monkeypatch, capsys
):
    calls = []
    for runner_class in (SD15DepthPipelines, InstantIDPipelines, FluxDepthPipeline):
        count_run_batch(monkeypatch, runner_class, calls)
    gpu.main([*ARGS, "--rows", ",".join(ROWS), "--batches", "1,2"])
    out = capsys.readouterr().out
    for model in gpu.MODELS:
        assert f"### {model}: 64x64, 2 steps" in out
    rows = re.findall(r"^\| (.+?) \| ([\d.]+) \| ([\d.]+) \(batch ([12])\) \|$", out, re.M)
    assert [label for label, *_ in rows] == [gpu.ROW_LABELS[row] for row in ROWS] * 4
    assert all(float(batch_one) > 0 and float(best) > 0 for _, batch_one, best, _ in rows)
    assert "target" not in out  # targets are for the real sizes on a GPU only
    assert torch.get_default_dtype() == torch.float32  # building restored it
    # What was timed: each runner's run_batch, once per row and batch size (no warm-up call),
    # on one-sample jobs, every one answered with its image from one call of the batch.
    per_runner = {"SD15DepthPipelines": 1, "InstantIDPipelines": 2, "FluxDepthPipeline": 1}
    expected = [
        (name, [f"bench-{seed}" for seed in range(batch)])
        for name, models in per_runner.items()
        for _ in range(len(ROWS) * models)
        for batch in (1, 2)
    ]
    assert [(name, ids) for name, ids, _ in calls] == expected
    for _, ids, results in calls:
        assert all(r.failure is None and r.batch_size == len(ids) for r in results)
        assert all(len(r.images) == 1 for r in results)


def test_defaults_follow_the_contract_and_the_runners_batch_limits():
    args = gpu.parse_args(["--scale", "tiny", "--device", "cpu"])
    assert args.rows == [row for row in gpu.ROWS if row != "xformers"]  # no xformers on a CPU
    assert args.batches == {
        "sd1.5-controlnet-depth": [1, 2, 4, 8],
        "instantid": [1, 2, 4],
        "insta-depth": [1, 2, 4],
        "flux-depth-pro": [1, 2, 4],
    }
    assert args.size == {"sd15": 64, "sdxl": 64, "flux": 64}
    defaults = {model: (d.steps, d.guidance) for model, d in gpu.DEFAULTS.items()}
    assert defaults == {
        "sd1.5-controlnet-depth": (20, 7.5),
        "instantid": (10, 5),
        "insta-depth": (10, 3),
        "flux-depth-pro": (40, 7),
    }


def test_the_real_scale_refuses_a_machine_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        gpu.parse_args([])
    assert "the real scale needs a CUDA GPU" in capsys.readouterr().err


def test_real_and_tiny_configs_have_the_same_structure():
    """The tiny configs only shrink sizes: same sections, same keys per module."""
    for family in ("sd15", "sdxl", "flux", "preprocessors"):
        real, tiny = getattr(REAL, family), getattr(TINY, family)
        for name in real.__dataclass_fields__:
            assert set(getattr(real, name)) == set(getattr(tiny, name)), f"{family}.{name}"
