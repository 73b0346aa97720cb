"""benchmarks/gateway_core.py runs and prints its table: every row it promises, with numbers.
A behaviour check on a short run, not a timing threshold (the figures are for people)."""

from __future__ import annotations

import re
import subprocess
import sys

from benchmarks.gateway_core import MODELS
from settings import PROJECT_ROOT

NUMBER = r"(\d+\.\d+)"
SHORT_RUN = ["--requests", "5", "--warmup", "2", "--rounds", "1", "--body-mb", "2"]


def figures(output: str, label: str, count: int) -> list[list[float]]:
    """The numbers of every table row that starts with `label` and holds `count` of them."""
    row = re.compile(rf"^  {re.escape(label)}\s+" + r"\s+".join([NUMBER] * count) + r"\s*$")
    matches = (row.match(line) for line in output.splitlines())
    return [[float(n) for n in match.groups()] for match in matches if match]


def test_the_benchmark_prints_every_figure() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.gateway_core", *SHORT_RUN],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    output = run.stdout
    for model in MODELS:
        # (a): v1 median, p95, req/s; then v2 submit median, p95.
        v1 = figures(output, model, 3)
        v2 = figures(output, model, 2)
        assert len(v1) == 1 and len(v2) == 1, output
        assert all(value > 0 for value in v1[0] + v2[0]), output
        assert v1[0][0] <= v1[0][1], output  # the median is at most the p95
    # (b): the round, the median of the rounds (longest stall, p99 lag, total), the idle floor.
    for label in ("1", "median"):
        [[longest, p99, total]] = figures(output, label, 3)
        assert longest > 0 and total > 0 and 0 <= p99 <= longest, output
    assert "idle 1 s" in output, output
    assert "max_body_bytes" in output, output
