"""The load test (loadtests/, `make loadtest`): the smoke run against the served tiny instance
passes the smoke thresholds and writes its CSV and HTML reports; a threshold no run can meet
makes it exit non-zero; and the gate's checks, on hand-made statistics."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from loadtests.run import (
    THRESHOLDS,
    Check,
    Entry,
    Thresholds,
    evaluate,
    generation_entry,
    read_summary,
    with_verdict,
)
from settings import PROJECT_ROOT

SMOKE = tomllib.loads((PROJECT_ROOT / "loadtests" / "scenarios" / "smoke.toml").read_text())
PAIRS = [(model, flow) for flow, weights in SMOKE["weights"].items() for model in weights]
# Shorter than the profile's own run, for CI's time; the users take the (model, flow) picks in
# turn, so even a short run covers every pair.
RUN_TIME = "15s"
SHORT_RUN_TIME = "4s"


def run_gate(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--profile", "smoke", "--out", str(out), *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.served
def test_smoke_run_passes_and_writes_reports(served_url, tmp_path):
    result = run_gate(tmp_path, "--host", served_url, "--run-time", RUN_TIME)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "PASSED" in result.stdout
    entries = {entry.name: entry for entry in read_summary(tmp_path / "smoke_summary.json")}
    for model, flow in PAIRS:  # every model, both flows, completed
        entry = entries[generation_entry(model, flow)]
        assert entry.requests > entry.failures == 0
    with (tmp_path / "smoke_stats.csv").open(newline="") as file:
        reported = {row["Name"] for row in csv.DictReader(file)}
    assert {generation_entry(model, flow) for model, flow in PAIRS} <= reported
    html = (tmp_path / "smoke.html").read_text()
    assert "<html" in html.lower() and generation_entry("flux-depth-pro", "v2") in html
    # While it ran: a progress line every 5 s. After: the verdict in the HTML and the summary.
    progress = [line for line in result.stdout.splitlines() if line.startswith("progress")]
    assert len(progress) >= 2 and "failures, p95 so far" in progress[-1], result.stdout
    assert "Release gate, profile smoke: PASSED" in html
    verdict = json.loads((tmp_path / "smoke_summary.json").read_text())["verdict"]
    assert verdict["passed"] is True
    throughput = next(c for c in verdict["checks"] if c["check"].startswith("throughput"))
    assert throughput["measured"].endswith("generations/s") and throughput["threshold"]


@pytest.mark.served
def test_an_impossible_threshold_fails_the_run(served_url, tmp_path):
    smoke = tomllib.loads(THRESHOLDS.read_text())["smoke"]
    impossible = {**smoke, "min_throughput_rps": 1e9}
    thresholds = tmp_path / "thresholds.toml"
    thresholds.write_text("[smoke]\n" + "".join(f"{k} = {v}\n" for k, v in impossible.items()))
    result = run_gate(
        tmp_path,
        "--host",
        served_url,
        "--run-time",
        SHORT_RUN_TIME,
        "--thresholds",
        str(thresholds),
    )
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-4000:]
    assert "BREACH throughput" in result.stdout and "FAILED" in result.stdout
    assert (tmp_path / "smoke_stats.csv").is_file() and (tmp_path / "smoke.html").is_file()
    html = (tmp_path / "smoke.html").read_text()
    assert "Release gate, profile smoke: FAILED" in html and ">BREACH</td>" in html
    verdict = json.loads((tmp_path / "smoke_summary.json").read_text())["verdict"]
    breached = [c for c in verdict["checks"] if not c["ok"]]
    assert verdict["passed"] is False and breached[0]["threshold"] == ">= 1000000000.0"


# --- the gate's checks ------------------------------------------------------------------------

LIMITS = Thresholds(
    max_failure_ratio=0.01,
    min_throughput_rps=1.0,
    max_p95_ms=1000,
    max_p95_ms_by_model={"flux-depth-pro": 5000},
)
EXPECTED = [("sd1.5-controlnet-depth", "v1"), ("flux-depth-pro", "v2")]


def entry(name: str, requests: int = 100, failures: int = 0, rps: float = 2.0, p95=500.0):
    return Entry("POST", name, requests, failures, rps, rps * failures / requests, p95)


def stats(**overrides: Entry) -> list[Entry]:
    entries = {
        "v1 sd1.5-controlnet-depth": entry("v1 sd1.5-controlnet-depth"),
        "v2 job flux-depth-pro": entry("v2 job flux-depth-pro", p95=4000.0),
    }
    entries.update(overrides)
    requests = sum(e.requests for e in entries.values())
    failures = sum(e.failures for e in entries.values())
    return [*entries.values(), Entry("", "Aggregated", requests, failures, 4.0, 0.0, 4000.0)]


def breaches(entries: list[Entry]) -> list[str]:
    return [check.what for check in evaluate(entries, LIMITS, EXPECTED) if not check.ok]


def test_the_gate_passes_numbers_within_every_threshold():
    assert breaches(stats()) == []


def test_the_gate_names_a_model_over_its_p95():
    slow = entry("v2 job flux-depth-pro", p95=6000.0)  # over its own 5000, under none other
    (breach,) = breaches(stats(**{"v2 job flux-depth-pro": slow}))
    assert breach.startswith("v2 job flux-depth-pro: p95 6000 ms <= 5000 ms")


def test_the_gate_breaches_on_failures_and_low_throughput():
    failing = entry("v1 sd1.5-controlnet-depth", failures=5)
    assert any(b.startswith("failure ratio") for b in breaches(stats(**{failing.name: failing})))
    slow = [entry(n, rps=0.4) for n in ("v1 sd1.5-controlnet-depth", "v2 job flux-depth-pro")]
    assert any(b.startswith("throughput") for b in breaches(stats(**{e.name: e for e in slow})))


def test_the_gate_breaches_when_a_weighted_pair_never_completed():
    entries = [e for e in stats() if e.name != "v1 sd1.5-controlnet-depth"]
    assert "v1 sd1.5-controlnet-depth: never completed" in breaches(entries)
    all_failed = entry("v1 sd1.5-controlnet-depth", requests=3, failures=3)
    assert "v1 sd1.5-controlnet-depth: never completed" in breaches(
        stats(**{all_failed.name: all_failed})
    )


def test_the_verdict_goes_above_the_report_and_escapes_its_text():
    checks = [Check("p95 <b>", ok=False, measured="9 ms", threshold="<= 1 ms")]
    report = '<html><body><div id="root"></div></body></html>'
    html = with_verdict(report, "smoke", checks, ok=False)
    assert html.index("depthid-verdict") < html.index('<div id="root">')
    assert "p95 &lt;b&gt;" in html and "&lt;= 1 ms" in html and "FAILED" in html
