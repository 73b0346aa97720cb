"""The release gate: run the Locust users (locustfile.py) headless against a DepthID server,
write the CSV and HTML reports, and pass only when the profile's thresholds hold.

    depthid loadtest                       # smoke, against a tiny instance it serves
    depthid loadtest --profile release --host https://depthid.example.com

A profile names a scenario (scenarios/<profile>.toml: users, duration, weights) and a section
of thresholds.toml. Exit status: 0 every threshold held, 1 one was breached, 2 the run itself
could not be made. `make loadtest` calls this; `python -m loadtests.run` is the same command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCUST = str(Path(sys.executable).parent / "locust")
LOCUSTFILE = HERE / "locustfile.py"
THRESHOLDS = HERE / "thresholds.toml"
REPORTS = HERE / "reports"
EXIT_PASSED, EXIT_BREACHED, EXIT_ERROR = 0, 1, 2


@dataclass(frozen=True)
class Thresholds:
    max_failure_ratio: float
    min_throughput_rps: float
    max_p95_ms: float
    max_p95_ms_by_model: dict[str, float] = field(default_factory=dict)

    def p95_limit_ms(self, model: str) -> float:
        return self.max_p95_ms_by_model.get(model, self.max_p95_ms)


def load_thresholds(path: Path, profile: str) -> Thresholds:
    profiles = tomllib.loads(path.read_text())
    if profile not in profiles:
        raise ValueError(f"{path} has no [{profile}] thresholds; it has {sorted(profiles)}")
    return Thresholds(**profiles[profile])


@dataclass(frozen=True)
class Entry:
    """The final statistics of one stats entry (locustfile.py's write_summary)."""

    type: str
    name: str
    requests: int
    failures: int
    requests_per_s: float
    failures_per_s: float
    p95_ms: float | None  # None: no request

    @property
    def completed_per_s(self) -> float:
        return self.requests_per_s - self.failures_per_s


def read_summary(path: Path) -> list[Entry]:
    """The entries of a summary: Locust's list, or, once judged, {"entries", "verdict"}."""
    data = json.loads(path.read_text())
    return [Entry(**entry) for entry in (data["entries"] if isinstance(data, dict) else data)]


def generation_entry(model: str, flow: str) -> str:
    """The stats name of one generation, as locustfile.py names it."""
    return f"v1 {model}" if flow == "v1" else f"v2 job {model}"


@dataclass(frozen=True)
class Check:
    what: str  # the whole line, as printed
    ok: bool
    measured: str = ""  # the value the run gave, with its unit
    threshold: str = ""  # what it had to be


def judged(name: str, measured: str, threshold: str, ok: bool, note: str = "") -> Check:
    return Check(f"{name} {measured} {threshold}{note}", ok, measured, threshold)


def evaluate(
    entries: list[Entry], thresholds: Thresholds, expected: list[tuple[str, str]]
) -> list[Check]:
    """The checks of one run: `expected` lists the (model, flow) pairs the scenario weights."""
    by_name = {entry.name: entry for entry in entries}
    total = by_name.get("Aggregated")
    checks = []
    if total is None or total.requests == 0:
        return [Check("no request was made", ok=False)]
    ratio = total.failures / total.requests
    checks.append(
        judged(
            "failure ratio",
            f"{ratio:.4f} ({total.failures}/{total.requests})",
            f"<= {thresholds.max_failure_ratio}",
            ok=ratio <= thresholds.max_failure_ratio,
        )
    )
    generations = [(pair, by_name.get(generation_entry(*pair))) for pair in expected]
    throughput = sum(entry.completed_per_s for _, entry in generations if entry)
    checks.append(
        judged(
            "throughput",
            f"{throughput:.3f} generations/s",
            f">= {thresholds.min_throughput_rps}",
            ok=throughput >= thresholds.min_throughput_rps,
        )
    )
    for (model, flow), entry in generations:
        name = generation_entry(model, flow)
        limit = thresholds.p95_limit_ms(model)
        if entry is None or entry.requests == entry.failures:
            checks.append(Check(f"{name}: never completed", False, "never completed", "completes"))
            continue
        checks.append(
            judged(
                f"{name}: p95",
                f"{entry.p95_ms:.0f} ms",
                f"<= {limit:.0f} ms",
                ok=entry.p95_ms <= limit,
                note=f" ({entry.requests - entry.failures} completed)",
            )
        )
    return checks


def weighted_pairs(scenario: dict) -> list[tuple[str, str]]:
    return [
        (model, flow)
        for flow, by_model in scenario["weights"].items()
        for model, weight in by_model.items()
        if weight > 0
    ]


@contextlib.contextmanager
def target(host: str | None) -> Iterator[str]:
    """`host`, or a tiny instance served for the run (as `make serve` serves it) on a free port,
    ready (/readyz) before the run and stopped after it."""
    if host:
        yield host.rstrip("/")
        return
    from tests.support.served import (
        serve,  # the same start, readiness wait and stop as the e2e tests
    )

    print("serving the tiny profile for the run ...", flush=True)
    with serve() as url:
        yield url


def summary_path(out: Path, profile: str) -> Path:
    return out / f"{profile}_summary.json"


def run_locust(host: str, profile: str, scenario_path: Path, scenario: dict, out: Path) -> int:
    """Locust, headless; its exit status (non-zero only when it could not run: failed
    requests are judged by the thresholds, not by Locust)."""
    command = [
        LOCUST,
        "--locustfile", str(LOCUSTFILE),
        "--headless",
        "--host", host,
        "--users", str(scenario["users"]),
        "--spawn-rate", str(scenario["spawn_rate"]),
        "--run-time", str(scenario["run_time"]),
        "--stop-timeout", str(scenario["stop_timeout_s"]),
        "--summary-file", str(summary_path(out, profile)),
        "--csv", str(out / profile),
        "--html", str(out / f"{profile}.html"),
        "--only-summary",
        "--exit-code-on-error", "0",
        "--scenario", str(scenario_path),
    ]  # fmt: skip
    return subprocess.run(command, check=False).returncode


def main(argv: list[str] | None = None, prog: str = "python -m loadtests.run") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="smoke", help="scenario and thresholds (smoke)")
    parser.add_argument("--host", help="server to load, e.g. http://127.0.0.1:3000 (default: "
                        "serve the tiny profile locally for the run)")  # fmt: skip
    parser.add_argument("--scenario", type=Path, help="default: scenarios/<profile>.toml")
    parser.add_argument("--thresholds", type=Path, default=THRESHOLDS)
    parser.add_argument("--run-time", help="override the scenario's run_time (e.g. 10s)")
    parser.add_argument("--users", type=int, help="override the scenario's users")
    parser.add_argument("--out", type=Path, default=REPORTS, help="reports folder")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("LOADTEST_API_KEY", ""),
        help="x-api-key to send (default: $LOADTEST_API_KEY)",
    )
    args = parser.parse_args(argv)

    scenario_path = args.scenario or HERE / "scenarios" / f"{args.profile}.toml"
    try:
        scenario = tomllib.loads(scenario_path.read_text())
        thresholds = load_thresholds(args.thresholds, args.profile)
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    scenario["run_time"] = args.run_time or scenario["run_time"]
    scenario["users"] = args.users or scenario["users"]
    args.out.mkdir(parents=True, exist_ok=True)
    summary = summary_path(args.out, args.profile)
    summary.unlink(missing_ok=True)  # never judge an earlier run's numbers
    if args.api_key:  # to Locust through its environment, not its command line
        os.environ["LOADTEST_API_KEY"] = args.api_key

    try:
        with target(args.host) as host:
            print(f"load test {args.profile!r} against {host}: {scenario['users']} users, "
                  f"{scenario['run_time']}", flush=True)  # fmt: skip
            code = run_locust(host, args.profile, scenario_path, scenario, args.out)
    except RuntimeError as exc:  # the local server did not start
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if code != 0 or not summary.is_file():
        print(f"error: locust exited with {code}", file=sys.stderr)
        return EXIT_ERROR

    checks = evaluate(read_summary(summary), thresholds, weighted_pairs(scenario))
    print(f"\nrelease gate, profile {args.profile!r} ({args.thresholds}):")
    for check in checks:
        print(f"  {'ok    ' if check.ok else 'BREACH'} {check.what}")
    passed = all(check.ok for check in checks)
    html = args.out / f"{args.profile}.html"
    write_verdict(summary, html, args.profile, checks, passed)
    print(f"reports: {args.out / args.profile}_stats.csv, {html} and {summary}")
    print("PASSED" if passed else "FAILED")
    return EXIT_PASSED if passed else EXIT_BREACHED


def write_verdict(summary: Path, html: Path, profile: str, checks: list[Check], ok: bool) -> None:
    """The verdict, each check with its measured value, threshold and result, into the summary
    (beside its entries) and at the top of Locust's HTML report."""
    verdict = {
        "profile": profile,
        "passed": ok,
        "checks": [
            {"check": c.what, "measured": c.measured, "threshold": c.threshold, "ok": c.ok}
            for c in checks
        ],
    }
    entries = json.loads(summary.read_text())
    entries = entries["entries"] if isinstance(entries, dict) else entries
    summary.write_text(json.dumps({"entries": entries, "verdict": verdict}, indent=1))
    if html.is_file():
        html.write_text(with_verdict(html.read_text(), profile, checks, ok))


def with_verdict(report: str, profile: str, checks: list[Check], ok: bool) -> str:
    """Locust's HTML report with a verdict table above its own content."""
    rows = "".join(
        f"<tr><td>{escape(c.what)}</td><td>{escape(c.measured)}</td>"
        f"<td>{escape(c.threshold)}</td>"
        f"<td style='color:{'green' if c.ok else 'red'}'>{'pass' if c.ok else 'BREACH'}</td></tr>"
        for c in checks
    )
    section = (
        "<section id='depthid-verdict' style='font-family:sans-serif;margin:2em'>"
        f"<h1>Release gate, profile {escape(profile)}: {'PASSED' if ok else 'FAILED'}</h1>"
        "<table border='1' cellpadding='4' style='border-collapse:collapse'>"
        "<tr><th>check</th><th>measured</th><th>threshold</th><th>result</th></tr>"
        f"{rows}</table></section>"
    )
    anchor = '<div id="root">'
    if anchor in report:
        return report.replace(anchor, section + anchor, 1)
    return report + section


if __name__ == "__main__":
    sys.exit(main())
