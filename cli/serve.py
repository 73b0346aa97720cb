"""`depthid serve`: the Gateway and every runner on this machine, as `make serve` serves them.

    depthid serve                                  # tiny profile, CPU, 127.0.0.1:3000
    depthid serve --port 3001
    DEPTHID_PROFILE=full depthid serve --host 0.0.0.0

The tiny profile builds its missing models first (seconds; cached after) and runs on the CPU
unless DEPTHID_DEVICE says otherwise; `full` serves the store `depthid pull` filled, and a missing
model ends the server at once, naming it. Every other setting is the environment's (DEPTHID_*,
docs/configuration.md). Logs are text, for a person at a terminal, unless DEPTHID_LOG_FORMAT says
otherwise. The server gets a BentoML home of its own (a temporary folder): `bentoml serve` empties
its home's prometheus_multiproc_dir when it starts, which would wipe the /metrics of another
server running beside it. This process then becomes `bentoml serve` (exec), so Ctrl-C and other
signals reach BentoML as if it had been started by hand.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from settings import PROJECT_ROOT, get_settings

BENTOML = str(Path(sys.executable).parent / "bentoml")


def main(argv: list[str] | None = None, prog: str = "depthid serve") -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument(
        "--host", default=settings.host, help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=settings.port, help="port to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--profile",
        choices=["tiny", "full"],
        default=settings.profile,
        help="the models to serve (default: DEPTHID_PROFILE, %(default)s)",
    )
    args = parser.parse_args(argv)

    if args.profile == "tiny":
        from models.build import build_tiny  # imports torch only when a model must be built

        tiny = settings.model_copy(update={"profile": "tiny"})
        print(f"tiny models in {tiny.profile_store()}:")
        build_tiny(tiny)
    command = serve_command(args.host, args.port)
    env = serve_env(os.environ, args.profile)
    print(" ".join(command), flush=True)  # flushed: exec drops what Python still buffers
    os.execve(BENTOML, command, env)
    return 0  # not reached: the process is bentoml now


def serve_command(host: str, port: int) -> list[str]:
    return [
        BENTOML, "serve", "service:Gateway",
        "--host", host,
        "--port", str(port),
        "--working-dir", str(PROJECT_ROOT),
    ]  # fmt: skip


def serve_env(environ: Mapping[str, str], profile: str) -> dict[str, str]:
    """The server's environment: `environ`, the profile, and the defaults of a local server."""
    env = {**environ, "DEPTHID_PROFILE": profile}
    env["BENTOML_HOME"] = tempfile.mkdtemp(prefix="depthid-bentoml-")
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    env.setdefault("DEPTHID_LOG_FORMAT", "text")
    if profile == "tiny":
        env.setdefault("DEPTHID_DEVICE", "cpu")
    return env
